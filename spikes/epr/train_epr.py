"""SPIKE: EPR fine-tuning of a trained Gemm model through ONNX Runtime training, then pack + eval.

    python spikes/epr/train_epr.py --lam 2 --epochs 8 --tag lam2

Prints one line per epoch (train CE, graph rate, empirical entropy of round(x), val error) and a
final JSON line (payload of the packed model, val/test error of the packed model, timings). The
JSON is also written to spikes/epr/out/<tag>.json and the packed model to spikes/epr/out/<tag>.onnx.
Test error is measured once at the end and never used to choose anything in the run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from epr_graph import EprSpec, build_epr_training_graph, latents, scales  # noqa: E402
from export import pack, quantized_model, size_report  # noqa: E402

import onnxcomp.runtime as rt  # noqa: E402
from onnxcomp.coding import entropy_bits  # noqa: E402
from onnxcomp.data import batches, load_data, model_input_shapes  # noqa: E402
from onnxcomp.metrics import classification_error, evaluate_session  # noqa: E402
from onnxcomp.model_io import save_model  # noqa: E402
from onnxcomp.training.session import TrainingSession, generate_artifacts  # noqa: E402


def lam_at(step: int, steps_per_epoch: int, args) -> float:
    """Linear ramp 0 -> lam over lam_warmup epochs, then constant."""
    ramp = args.lam_warmup * steps_per_epoch
    return args.lam if ramp <= 0 else args.lam * min(1.0, (step + 1) / ramp)


def lr_at(step: int, total: int, args) -> float:
    """Warm-up, constant, then cosine decay over the last ``decay_frac`` of the run."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    start = int(total * (1.0 - args.decay_frac))
    if step < start:
        return args.lr
    progress = (step - start) / max(1, total - start)
    return args.lr * (args.lr_floor + (1 - args.lr_floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def empirical(params: dict, graph) -> tuple[float, dict]:
    """Sum over tensors of n * H(round(x)) in bits, and the latents by weight name."""
    ks = {name: latents(params, info) for name, info in graph.tensors.items()}
    return sum(k.size * entropy_bits(k) for k in ks.values()), ks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(HERE.parents[1] / "models" / "lenet-300-100.onnx"))
    ap.add_argument("--prior", default="logistic", choices=["logistic", "factorized"])
    ap.add_argument("--lam", type=float, default=1.0, help="weight of rate_bits / num_params in the loss")
    ap.add_argument("--lam-warmup", type=float, default=1.0, help="epochs of linear lambda ramp")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lr-floor", type=float, default=0.0)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--decay-frac", type=float, default=0.5)
    ap.add_argument("--bits", type=float, default=2.0)
    ap.add_argument("--bias-bits", type=float, default=4.0)
    ap.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor (default per output channel)")
    ap.add_argument("--c-phi", type=float, default=50.0)
    ap.add_argument("--c-scale", type=float, default=1.0)
    ap.add_argument("--c-prior", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="run")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    model = onnx.load(args.model)
    data = load_data("mnist", model_input_shapes(model))
    spec = EprSpec(prior=args.prior, bits=args.bits, bias_bits=args.bias_bits, per_channel=not args.per_tensor,
                   c_phi=args.c_phi, c_scale=args.c_scale, c_prior=args.c_prior)
    graph = build_epr_training_graph(model, spec, seed=args.seed)
    steps_per_epoch = math.ceil(len(data.train) / args.batch)
    total = steps_per_epoch * args.epochs
    out_dir = HERE / "out"
    out_dir.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="epr-spike-") as tmp:
        t = time.perf_counter()
        artifacts = generate_artifacts(graph.model, graph.trainable, [], tmp, weight_decay=0.0)
        t_artifacts = time.perf_counter() - t
        session = TrainingSession(artifacts, lr=lr_at(0, total, args), seed=args.seed, threads=args.threads)
        n = graph.num_params
        h0, _ = empirical(session.parameters(), graph)
        print(f"{args.tag}: {n} params, initial empirical entropy {h0 / n:.3f} bits/param, artifacts {t_artifacts:.2f}s", flush=True)
        step_times = []
        history = []
        for epoch in range(args.epochs):
            ces, rates = [], []
            for batch in batches(data.train, args.batch, shuffle_seed=args.seed * 1000 + epoch):
                session.set_lr(lr_at(session.steps, total, args))
                lam = lam_at(session.steps, steps_per_epoch, args)
                t = time.perf_counter()
                out = session.step({"input": batch.inputs["input"], "labels": batch.labels,
                                    "lam": np.float32(lam), "noise": np.float32(1.0)})
                step_times.append(time.perf_counter() - t)
                rates.append(float(np.asarray(out[2]).sum()))
                ces.append(float(np.asarray(out[3]).sum()))
            params = session.parameters()
            bits, _ = empirical(params, graph)

            def predict(inputs):
                zeros = np.zeros(len(inputs["input"]), np.int64)
                return session.eval({"input": inputs["input"], "labels": zeros, "lam": np.float32(0.0), "noise": np.float32(0.0)})[1]

            val = classification_error(predict, data.val)
            row = {"epoch": epoch + 1, "ce": float(np.mean(ces)), "graph_rate_bpp": float(np.mean(rates)) / n,
                   "entropy_bpp": bits / n, "ideal_kb": bits / 8 / 1000, "val_error": val,
                   "lam": lam, "lr": session.lr, "elapsed_s": time.perf_counter() - t_start}
            history.append(row)
            print(f"  ep {epoch + 1:2d} ce {row['ce']:.4f} rate(graph) {row['graph_rate_bpp']:.3f} b/p  "
                  f"H(k) {row['entropy_bpp']:.3f} b/p = {row['ideal_kb']:.2f} KB  val {100 * val:.2f}%  "
                  f"lam {lam:.3g}  {row['elapsed_s']:.0f}s", flush=True)
        params = session.parameters()
        t_train = time.perf_counter() - t_start
        # Code length of k = round(x) under the LEARNED prior (what coding tables built from p,
        # as in the paper, would cost): put phi exactly on the integers, noise off, read rate_bits.
        on_grid = {info["phi"]: (latents(params, info) / info["c_phi"]).astype(np.float32) for info in graph.tensors.values()}
        session.set_parameters(on_grid)
        first = data.val.take(slice(0, 2))
        prior_bits = float(np.asarray(session.eval({"input": first.inputs["input"], "labels": first.labels,
                                                    "lam": np.float32(0.0), "noise": np.float32(0.0)})[2]).sum())
        np.savez_compressed(out_dir / f"{args.tag}.params.npz", **params)

    ks = {name: latents(params, info).astype(np.int32) for name, info in graph.tensors.items()}
    steps = {name: scales(params, info) for name, info in graph.tensors.items()}
    qmodel = quantized_model(model, ks, steps)
    packed, notes = pack(qmodel)
    report = size_report(ks, steps, packed, notes)
    path = out_dir / f"{args.tag}.onnx"
    file_bytes = save_model(packed, path)
    sess = rt.InferenceSession(path.read_bytes())
    val_err = evaluate_session(sess, data.val)
    test_err = evaluate_session(sess, data.test)
    result = {
        "tag": args.tag, "args": vars(args), "params": n,
        "payload_bytes": report["payload_bytes"], "file_bytes": file_bytes,
        "bits_per_param": 8 * report["payload_bytes"] / n,
        "ideal_bytes": report["ideal_bytes_total"], "step_bytes": report["step_bytes_total"],
        "prior_code_bytes": prior_bits / 8.0,
        "val_error": val_err, "test_error": test_err,
        "median_step_ms": 1000 * float(np.median(step_times)), "train_wall_s": t_train,
        "total_wall_s": time.perf_counter() - t_start, "tensors": report["tensors"], "history": history,
    }
    (out_dir / f"{args.tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"RESULT {args.tag}: payload {result['payload_bytes']} B ({result['bits_per_param']:.3f} b/p; ideal "
          f"{result['ideal_bytes']:.0f} B (under learned prior {result['prior_code_bytes']:.0f} B) + steps {result['step_bytes']} B)  val {100 * val_err:.2f}%  test "
          f"{100 * test_err:.2f}%  step {result['median_step_ms']:.2f} ms  wall {result['total_wall_s']:.0f}s", flush=True)
    for name, r in report["tensors"].items():
        print(f"    {name:11s} H {r['entropy_bits']:.3f} nz {100 * r['nonzero']:.1f}% range {r['range']} "
              f"codec {r['codec']} coded {r['coded_bytes']} steps {r['step_bytes']} dead_rows {r['dead_rows']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
