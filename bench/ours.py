"""onnxcomp's own rows for one float model (runs in the MAIN venv, where onnxcomp lives).

For each pipeline (default: ptq) the model is compressed through the CLI, exactly as a user
would (`onnxcomp compress IN -o OUT -p PIPELINE --report R`), then measured with the same
accounting as the peers (bench/model_stats.py) and evaluated after decode at load
(`onnxcomp.runtime.InferenceSession`). Rows carry the compiler's own report figures too, so a
disagreement between its payload count and ours shows up, and the compile wall time
(`compile_seconds`: the whole CLI subprocess, data loading and val evaluation included). Rows
of training pipelines (epr) also carry, from the report's `training` section, `lambda`,
`median_step_ms` (median wall time of one ORT training step), `val_error` (fraction, of the
rounded model on the val split, last epoch), `training_steps` and the per-epoch `training_history`.

A variant is a pipeline, optionally followed by compress flags; the flags start at the first
` --`, so pipeline options with spaces need no quoting beyond the variant's own:

    python bench/ours.py --model models/lenet-300-100.onnx --task mnist \
        -p ptq -p "ptq --data mnist --max-error-increase 0.001" \
        -p "normalize,epr-reparam{prior=logistic},finetune{lambda=0.5 epochs=10},pack --data mnist"
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import sys
import time
import traceback

from model_stats import bits_per_param, model_stats
from onnxcomp_cli import CompilerUnavailable, compress
from sessions import write_results

HERE = os.path.dirname(os.path.abspath(__file__))
REPORT_KEYS = ("original_bytes", "compressed_bytes", "payload_bytes", "params", "bits_per_param",
               "pipeline", "metrics", "timings_s")
TASKS = ("mnist", "fashion-mnist", "ocr")


def split_variant(variant: str) -> tuple[str, list[str]]:
    """'PIPELINE [--flag value ...]' -> (pipeline, flags). Pipelines may hold spaces inside {...}."""
    m = re.search(r"(^|\s)--", variant)
    if m is None:
        return variant.strip(), []
    return variant[:m.start()].strip(), shlex.split(variant[m.start():])


def variant_slug(variant: str) -> str:
    """A file-name-safe, stable name for one variant (long ones end in a short hash)."""
    slug = "".join(c if c.isalnum() or c in "-." else "_" for c in variant.replace("--", "")).strip("_")
    slug = re.sub(r"_+", "_", slug)
    if len(slug) > 80:
        slug = slug[:70].rstrip("_") + "_" + hashlib.sha1(variant.encode()).hexdigest()[:8]
    return slug


def training_fields(report: dict) -> dict:
    """The report's `training` section (finetune), flattened into the row; {} for other pipelines."""
    t = report.get("training")
    if not t:
        return {}
    return {"lambda": t.get("lambda"), "median_step_ms": t.get("median_step_ms"), "val_error": t.get("val_error"),
            "training_steps": t.get("steps"), "training_loss": t.get("loss"), "training_runs": t.get("runs"),
            "training_history": t.get("history")}


def wfn_fields(report: dict) -> dict:
    """The report's `weight_fixing` section (weight-fix), flattened into the row; {} otherwise."""
    w = report.get("weight_fixing")
    if not w:
        return {}
    keys = ("unique", "zeros", "power_of_two", "sum_of_two", "entropy_bits", "entropy_nonzero_bits", "gamma0",
            "val_error", "wall_s", "runs", "codebook", "history")
    return {"wfn": {k: w.get(k) for k in keys}}


def metric(task: str, path: str, reference: str, ctx: dict) -> dict:
    if task in ("mnist", "fashion-mnist"):
        import mnist_task
        from sessions import open_session

        r = mnist_task.test_error(open_session(path)[0], task=task)
        return {"metric_name": mnist_task.metric_name(task), "metric": r["test_error_pct"], "detail": r}
    import ocr

    r = ocr.evaluate(path, reference=reference, reference_rows=ctx.get("reference_rows"))
    detail = {k: r.get(k) for k in ("identical_to_truth", "identical_to_reference", "frame_agreement",
                                    "mean_confidence", "dictionary", "loader", "mismatches_vs_reference")}
    return {"metric_name": "OCR identical lines % (vs float)",
            "metric": 100.0 * r["identical_to_reference"], "detail": detail}


def run(model: str, task: str, name: str, pipelines: list[str], workdir: str) -> list[dict]:
    params = model_stats(model)["float_params"]
    ctx: dict = {}
    if task == "ocr":  # the float model's text, read by this venv's onnxruntime
        import ocr

        ctx["reference_rows"] = ocr.evaluate(model)["rows"]
    rows = []
    for variant in pipelines:
        # A variant is a pipeline plus optional CLI flags: "ptq --data mnist --max-error-increase 0.001".
        p, extra = split_variant(variant)
        out = os.path.join(workdir, f"{name}.{variant_slug(variant)}.onnx")
        method = f"onnxcomp -p {variant}"
        row = {"model": name, "method": method, "params": params}
        try:
            comp = compress(model, out, p, extra)
        except CompilerUnavailable as e:
            row.update({"metric": None, "error": str(e)})
            rows.append(row)
            continue
        st = model_stats(out)
        row.update({
            "path": os.path.relpath(out), "file_bytes": st["file_bytes"], "payload_bytes": st["payload_bytes"],
            "bits_per_param": bits_per_param(st["payload_bytes"], params), "ops": st["ops"],
            "compile_seconds": comp["compile_seconds"], "compile_command": comp["command"],
            "compiler_report": {k: comp["report"].get(k) for k in REPORT_KEYS},
            "notes": f"decode at load; pipeline {comp['report'].get('pipeline', p)}",
            **training_fields(comp["report"]),
            **wfn_fields(comp["report"]),
        })
        try:
            t0 = time.perf_counter()
            row.update(metric(task, out, model, ctx))
            row["eval_seconds"] = round(time.perf_counter() - t0, 2)
        except Exception as e:  # noqa: BLE001 - recorded as the row's error
            row.update({"metric": None, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"})
            traceback.print_exc()
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", required=True, choices=TASKS)
    ap.add_argument("--name")
    ap.add_argument("-p", "--pipeline", action="append",
                    help="pipeline text, optionally followed by compress flags, e.g. 'ptq --data mnist "
                         "--max-error-increase 0.001' or 'epr --data mnist' (repeatable; default ptq)")
    ap.add_argument("--workdir")
    ap.add_argument("--out", help="JSON rows file (default bench/out/results/ours-NAME.json)")
    args = ap.parse_args(argv)
    name = args.name or os.path.splitext(os.path.basename(args.model))[0]
    workdir = args.workdir or os.path.join(HERE, "out", "ours", name)
    out = args.out or os.path.join(HERE, "out", "results", f"ours-{name}.json")
    if not os.path.exists(args.model):
        raise SystemExit(f"{args.model}: no such model")
    os.makedirs(workdir, exist_ok=True)
    rows = run(args.model, args.task, name, args.pipeline or ["ptq"], workdir)
    write_results(rows, out)
    failed = 0
    for r in rows:
        failed += r.get("metric") is None
        train = (f" lambda {r['lambda']} val {r['val_error']} step {r['median_step_ms']} ms"
                 if "median_step_ms" in r else "")
        print(f"{r['method']:<24} file {r.get('file_bytes', '-'):>10} payload {r.get('payload_bytes', '-'):>10} "
              f"bits/param {r.get('bits_per_param', float('nan')):6.3f} metric {r.get('metric')} "
              f"compile {r.get('compile_seconds', '-')} s{train} {r.get('error', '')}")
    print(out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
