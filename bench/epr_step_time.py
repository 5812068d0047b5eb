"""Cost of one EPR training step in ONNX Runtime, against plain training of the same model (MAIN venv).

For each model (default: the three shipped LeNets) and each variant, the median wall time of one
`TrainingSession.step` (forward + backward + AdamW update; batch 128 of random MNIST-shaped
inputs in [0, 1), random labels; 1 ORT thread; 30 warm-up steps, then 200 timed), the median
time of one eval-graph forward on the same batch, and the graph sizes:

- plain: the model as given plus a mean softmax cross-entropy (`onnxcomp.models.lenet
  .with_training_loss`, the helper models/train.py trains the shipped models with); every float
  initializer trainable.
- epr logistic / epr factorized: built exactly as `onnxcomp compress -p epr` builds them:
  `parse_pipeline("normalize,epr-reparam{prior=...}")` on the model (onnx-ir), then
  `onnxcomp.training.losses.loss_graph(...)` (loss "ce"), `generate_artifacts(graph, spec.trainable, [])`
  and `TrainingSession(lr=1e-3, threads=1)`, fed `onnxcomp.noise` (fresh U(-1/2, 1/2) of
  `noise_at(seed, step)` each step), `onnxcomp.lambda` and `onnxcomp.labels` as
  passes/epr/trainer.py does. Like the trainer, the timed region is `session.step(feed)` alone:
  making the noise (`noise_ms`) and setting the learning rate happen before it.

Nodes: `nodes` = nodes of the graph handed to generate_artifacts (model + loss); `training_nodes`
= nodes of the generated training model (forward + gradient graph). Machine: CPU model, cores,
and the load average (1/5/15 min) at start, before each row and at the end: the numbers are only
comparable on a quiet machine (on 2 cores a second busy process roughly doubles them).

    python bench/epr_step_time.py [--model models/lenet-300-100.onnx ...] [--steps 200 --warmup 30]

Output: bench/out/results/epr-step-time.json (rendered by bench/report.py as its own table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from machine_info import cpu_model

HERE = Path(os.path.dirname(os.path.abspath(__file__)))
REPO = HERE.parent
DEFAULT_MODELS = ["models/lenet-300-100.onnx", "models/lenet5-caffe.onnx", "models/lenet-300-100-fashion.onnx"]
PRIORS = ("logistic", "factorized")
KIND = "epr-step-time"


def machine() -> dict:
    cpu = cpu_model()
    return {"cpu": cpu, "cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "system": f"{platform.system()} {platform.release()}", "python": platform.python_version()}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def versions() -> dict:
    import importlib.metadata as md

    import onnxruntime

    out = {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "numpy": np.__version__}
    for dist in ("onnxruntime-training-cpu", "onnx-ir", "onnxcomp"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def data_input(model: onnx.ModelProto) -> tuple[str, list[int]]:
    """(name, per-sample shape) of the model's one data input; symbolic dims must be the batch only."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise SystemExit(f"{model.graph.name}: want one data input, found {[i.name for i in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim[1:]
    if not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
        raise SystemExit(f"input {inputs[0].name}: per-sample dims must be fixed, got {dims}")
    return inputs[0].name, [d.dim_value for d in dims]


def time_session(session, make_feed, warmup: int, steps: int, eval_runs: int, before_step=None) -> dict:
    """Median (and spread) of step() over `steps` timed steps after `warmup`; eval() forward times."""
    step_times, prep_times = [], []
    for i in range(warmup + steps):
        t = time.perf_counter()
        feed = make_feed(i)
        if before_step is not None:
            before_step(i)
        prep = time.perf_counter() - t
        t = time.perf_counter()
        session.step(feed)
        dt = time.perf_counter() - t
        if i >= warmup:
            step_times.append(dt)
            prep_times.append(prep)
    eval_feed = make_feed(-1)
    eval_times = []
    for i in range(eval_runs + 5):
        t = time.perf_counter()
        session.eval(eval_feed)
        if i >= 5:
            eval_times.append(time.perf_counter() - t)
    ms = lambda xs, q: round(1000 * float(np.percentile(xs, q)), 3)  # noqa: E731
    return {"step_median_ms": ms(step_times, 50), "step_p10_ms": ms(step_times, 10), "step_p90_ms": ms(step_times, 90),
            "step_min_ms": round(1000 * min(step_times), 3), "eval_median_ms": ms(eval_times, 50),
            "feed_median_ms": ms(prep_times, 50)}


def count_nodes(path: Path) -> int:
    return len(onnx.load(str(path), load_external_data=False).graph.node)


def plain_row(path: str, args, x: np.ndarray, y: np.ndarray, tmp: Path) -> dict:
    from onnxcomp.models.lenet import LABELS, with_training_loss
    from onnxcomp.training.session import TrainingSession, generate_artifacts

    model = onnx.load(path)
    name, _ = data_input(model)
    graph = with_training_loss(model, logits=model.graph.output[0].name)
    trainable = [t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    t = time.perf_counter()
    art = generate_artifacts(graph, trainable, [], tmp / "plain")
    art_s = time.perf_counter() - t
    session = TrainingSession(art, lr=args.lr, seed=0, threads=args.threads)
    feed = {name: x, LABELS: y}
    timing = time_session(session, lambda i: feed, args.warmup, args.steps, args.eval_runs,
                          before_step=lambda i: session.set_lr(args.lr))
    n_params = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.name in trainable)
    return {"variant": "plain", "nodes": len(graph.graph.node), "training_nodes": count_nodes(art.training_model),
            "trainable_tensors": len(trainable), "trainable_elements": n_params,
            "artifacts_seconds": round(art_s, 3), **timing}


def epr_row(path: str, prior: str, args, x: np.ndarray, y: np.ndarray, tmp: Path) -> dict:
    from onnxcomp.model_io import load_model, to_proto
    from onnxcomp.pass_base import CompileContext
    from onnxcomp.passes.epr.form import EprSpec
    from onnxcomp.passes.epr.trainer import noise_at
    from onnxcomp.pipeline import parse_pipeline
    from onnxcomp.training.losses import LABELS_INPUT, LAMBDA_INPUT, TaskLoss, loss_graph
    from onnxcomp.training.session import TrainingSession, generate_artifacts

    pipeline = f"normalize,epr-reparam{{prior={prior}{(' ' + args.epr_options) if args.epr_options else ''}}}"
    model = load_model(path)
    original = onnx.load(path)
    ctx = CompileContext(seed=args.seed, progress=False, say=lambda s: None,
                         original_source=original)
    t = time.perf_counter()
    parse_pipeline(pipeline).run(model, ctx)
    reparam_s = time.perf_counter() - t
    spec = EprSpec.from_model(model)
    proto = to_proto(model)
    name, _ = data_input(original)
    # EprTrainer probes the output shape from the logits; the LeNets' is [N, 10]
    dims = original.graph.output[0].type.tensor_type.shape.dim
    graph = loss_graph(proto, spec.rate_output, spec.num_params, TaskLoss("ce", tuple(d.dim_value for d in dims[1:]), 1))
    t = time.perf_counter()
    art = generate_artifacts(graph, spec.trainable, [], tmp / f"epr-{prior}")
    art_s = time.perf_counter() - t
    session = TrainingSession(art, lr=args.lr, seed=args.seed, threads=args.threads)
    zeros = np.zeros(spec.num_params, np.float32)

    def feed(i: int) -> dict:
        # i = -1: the eval feed of EprTrainer.evaluate (lambda 0, noise off)
        noise = zeros if i < 0 else noise_at(args.seed, i, spec.num_params)
        return {name: x, LABELS_INPUT: y, LAMBDA_INPUT: np.float32(0.0 if i < 0 else args.lam), spec.noise_input: noise}

    timing = time_session(session, feed, args.warmup, args.steps, args.eval_runs,
                          before_step=lambda i: session.set_lr(args.lr))
    trainable_elements = sum(int(np.prod(t.dims)) for t in graph.graph.initializer if t.name in set(spec.trainable))
    return {"variant": f"epr {prior}", "pipeline": pipeline, "nodes": len(graph.graph.node),
            "training_nodes": count_nodes(art.training_model), "trainable_tensors": len(spec.trainable),
            "trainable_elements": trainable_elements, "weights": spec.num_params, "tensors": len(spec.tensors),
            "reparam_seconds": round(reparam_s, 3), "artifacts_seconds": round(art_s, 3), **timing}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", help=f"float .onnx (repeatable; default {' '.join(DEFAULT_MODELS)})")
    ap.add_argument("--variants", default="plain,logistic,factorized",
                    help="comma list of plain, logistic, factorized (default all three)")
    ap.add_argument("--steps", type=int, default=200, help="timed steps per variant (default 200)")
    ap.add_argument("--warmup", type=int, default=30, help="untimed steps first (default 30)")
    ap.add_argument("--eval-runs", type=int, default=50, help="timed eval forwards (default 50)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (default 1, finetune's default)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lam", type=float, default=0.3, help="lambda fed to the EPR graphs (default 0.3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epr-options", default="", help="extra epr-reparam options, e.g. 'per_channel=true'")
    ap.add_argument("--out", default=str(HERE / "out" / "results" / f"{KIND}.json"))
    args = ap.parse_args(argv)
    models = args.model or [str(REPO / m) for m in DEFAULT_MODELS]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in ("plain", *PRIORS)]
    if bad:
        raise SystemExit(f"unknown variants {bad}: use plain, logistic, factorized")
    missing = [m for m in models if not os.path.exists(m)]
    if missing:
        raise SystemExit(f"no such model: {missing}")

    result = {"kind": KIND, "machine": machine(), "versions": versions(), "loadavg_start": loadavg(),
              "settings": {"batch": args.batch, "threads": args.threads, "warmup": args.warmup, "steps": args.steps,
                           "eval_runs": args.eval_runs, "lr": args.lr, "lambda": args.lam, "seed": args.seed,
                           "inputs": "uniform [0, 1), labels uniform 0..9 (default_rng(seed))"},
              "command": " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable), *sys.argv]),
              "rows": []}
    print(f"load average at start {result['loadavg_start']}; {args.warmup} + {args.steps} steps, batch {args.batch}, "
          f"{args.threads} thread(s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="epr-step-time-") as tmp:
        for path in models:
            name = os.path.splitext(os.path.basename(path))[0]
            _, per_sample = data_input(onnx.load(path, load_external_data=False))
            rng = np.random.default_rng(args.seed)
            x = rng.random((args.batch, *per_sample), dtype=np.float32)
            y = rng.integers(0, 10, args.batch).astype(np.int64)
            for v in variants:
                before = loadavg()
                t = time.perf_counter()
                work = Path(tmp) / name
                row = plain_row(path, args, x, y, work) if v == "plain" else epr_row(path, v, args, x, y, work)
                row = {"model": name, **row, "loadavg_before": before, "wall_seconds": round(time.perf_counter() - t, 1)}
                result["rows"].append(row)
                print(f"{name:<24} {row['variant']:<15} step {row['step_median_ms']:8.2f} ms "
                      f"(p10 {row['step_p10_ms']:.2f}, p90 {row['step_p90_ms']:.2f})  eval {row['eval_median_ms']:7.2f} ms  "
                      f"nodes {row['nodes']:4d} (training {row['training_nodes']:5d})  load {before[0]:.2f}", flush=True)
    result["loadavg_end"] = loadavg()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(args.out + ".tmp", args.out)
    print(f"load average at end {result['loadavg_end']}\n{args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
