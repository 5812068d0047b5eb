"""onnxcomp on the corpus: compress every corpus model with each pipeline, score the result with
task.py beside the peers (original, zstd -19, onnxruntime int8/int4) measured by peers.py and
measure.py, and write bench/out/corpus/ours.{json,md}.

Runs in the MAIN venv. Pipelines (``--pipelines``; default ptq calib lossless):
- ``ptq``: the default, data-free: the coarsest steps whose output change on probe inputs stays
  within int8's weights';
- ``calib``: ``ptq --data calib.npz`` (the model's calibration inputs, no labels): the same search
  against onnxruntime int8's output change on those inputs, GPTQ rounding;
- ``lossless``: preset lossless (outputs must be bit-identical: ``perfect`` must be true);
- ``epr``, ``wfn``: the learned methods trained on calib.npz (``TRAINED``: distillation);
- the ladder: ``ptq-small``, ``ptq-tiny`` (presets) and ``peak8``/``peak6``/``peak5`` (fixed steps
  on int8's grid), for the size-against-task plot (plot.py).
Each compress runs as a subprocess of the CLI (wall time measured); a failure is a row with the
error line, never a stop.

    .venv/bin/python bench/corpus/ours.py [--only NAME ...] [--pipelines ptq calib lossless] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import models as M  # noqa: E402
import task  # noqa: E402

PIPELINES = {"ptq": "ptq", "ptq-small": "ptq-small", "ptq-tiny": "ptq-tiny", "lossless": "lossless"}
# The rest of the size/accuracy ladder (beside ptq-small = peak 7 and ptq-tiny = rms 4): every
# tensor on int8's own grid (peak/127 per channel: bits 8 = int8's weights, entropy coded) and
# two and four times coarser.
LEVELS = {f"peak{b:g}": f"normalize,quantize{{bits={b:g}}},pack" for b in (8, 6, 5)}
PIPELINES.update(LEVELS)
# Calibrated: the same search against int8's output change, on the model's calib.npz (real inputs,
# no labels) instead of probe inputs.
CALIBRATED = {"calib": "ptq"}
# The learned methods on the same unlabeled calib.npz (distillation from the original under the
# inferred output kinds; onnxcomp/training/outputs.py): ~100 training samples, batch 8.
TRAINED = {
    "epr": "normalize,epr-reparam,finetune{epochs=40 batch=8},pack",
    "wfn": "normalize,weight-fix{epochs=4 batch=8},pack",
}
CALIBRATED.update(TRAINED)
PIPELINES.update(CALIBRATED)
KEEP = ("metric_name", "metric", "higher_is_better", "perfect")


def compress(name: str, kind: str) -> dict:
    src = os.path.join(M.out_dir(name), "model.onnx")
    out = os.path.join(M.out_dir(name), f"ours-{kind}.onnx")
    report = os.path.join(M.out_dir(name), f"ours-{kind}.report.json")
    start = time.perf_counter()
    data = ["--data", os.path.join(M.out_dir(name), "calib.npz")] if kind in CALIBRATED else []
    p = subprocess.run([sys.executable, "-m", "onnxcomp", "compress", src, "-o", out, "-p", PIPELINES[kind],
                        "--report", report, "--quiet", *data], capture_output=True, text=True)
    row = {"name": name, "candidate": f"ours-{kind}", "pipeline": PIPELINES[kind] + (" --data calib.npz" if data else ""),
           "compile_seconds": round(time.perf_counter() - start, 1), "exit": p.returncode}
    if p.returncode:
        row["error"] = (p.stderr.strip().splitlines() or ["?"])[-1][:300]
        return row
    rep = json.load(open(report))
    row.update(file_bytes=os.path.getsize(out) + sum(os.path.getsize(os.path.join(M.out_dir(name), f))
                                                      for f in os.listdir(M.out_dir(name)) if f.startswith(f"ours-{kind}.onnx.data")),
               bits_per_param=round(rep["bits_per_param"], 3), search=rep.get("search"),
               val_task_change=(rep.get("metrics") or {}).get("val_task_change"))
    train = rep.get("training") or rep.get("weight_fixing")
    if train:  # the learned methods: how training went (step time, the last validation)
        row["training"] = {k: train.get(k) for k in ("loss", "steps", "median_step_ms", "val_error") if k in train}
    try:
        r = task.evaluate(name, out)
        row.update({k: r.get(k) for k in KEEP})
    except Exception as e:  # noqa: BLE001 - a row says what failed
        row["error"] = f"task: {type(e).__name__}: {str(e).splitlines()[0][:240]}"
    return row


def peers(name: str) -> dict:
    rows = {}
    p = os.path.join(M.out_dir(name), "peers.json")
    if os.path.exists(p):
        for pr in json.load(open(p)):
            rows[pr["method"].split()[0]] = pr
    s = os.path.join(M.OUT, "summary.json")
    scores = {}
    if os.path.exists(s):
        for r in json.load(open(s)):
            if r["name"] == name:
                scores[r["candidate"]] = r
    return {"sizes": rows, "scores": scores}


def fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))


def markdown(rows: list[dict]) -> str:
    lines = ["| model | metric | original B | zstd -19 B | int8 B | int8 metric | " + " | ".join(
        f"{k} B | {k} metric" for k in PIPELINES) + " |",
        "|---|---|---:|---:|---:|---:|" + "---:|---:|" * len(PIPELINES)]
    for name in dict.fromkeys(r["name"] for r in rows):
        ref = peers(name)
        sizes, scores = ref["sizes"], ref["scores"]
        ours = {r["candidate"]: r for r in rows if r["name"] == name}
        metric = next((r.get("metric_name") for r in ours.values() if r.get("metric_name")), "-")
        zstd = sizes.get("zstd", {}).get("file_bytes", "-")
        cells = [name, metric, fmt(sizes.get("original", {}).get("file_bytes")), fmt(zstd),
                 fmt(sizes.get("int8", {}).get("file_bytes")), fmt(scores.get("int8", {}).get("metric"))]
        for kind in PIPELINES:
            r = ours.get(f"ours-{kind}", {})
            cells += [fmt(r.get("file_bytes")), fmt(r.get("metric")) if "error" not in r else "error: " + r["error"][:80]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--pipelines", nargs="*", default=["ptq", "calib", "lossless"], choices=list(PIPELINES))
    ap.add_argument("--json", default=os.path.join(M.OUT, "ours.json"), help="rows are merged into this file")
    args = ap.parse_args(argv)
    names = args.only or list(M.CORPUS)
    path = args.json
    rows = json.load(open(path)) if os.path.exists(path) else []
    for name in names:
        for kind in args.pipelines:
            row = compress(name, kind)
            print(json.dumps({k: v for k, v in row.items() if k != "search"}), flush=True)
            rows = [r for r in rows if not (r["name"] == name and r["candidate"] == row["candidate"])] + [row]
            with open(path, "w") as f:
                json.dump(rows, f, indent=1, default=str)
    with open(path.replace(".json", ".md"), "w") as f:
        f.write(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
