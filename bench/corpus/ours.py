"""onnxcomp on the corpus: compress every corpus model with each pipeline, score the result with
task.py beside the peers (original, zstd -19, onnxruntime int8/int4) measured by peers.py and
measure.py, and write bench/out/corpus/ours.{json,md}.

Runs in the MAIN venv. Pipelines (``--pipelines``; default all three, data-free):
- ``ptq``: the default, the per-tensor step rule (bits 4);
- ``int8``: ``normalize,quantize{target=int8},pack``, steps searched against onnxruntime int8's
  output change on probe inputs;
- ``lossless``: preset lossless (outputs must be bit-identical: ``perfect`` must be true).
Each compress runs as a subprocess of the CLI (wall time measured); a failure is a row with the
error line, never a stop.

    .venv/bin/python bench/corpus/ours.py [--only NAME ...] [--pipelines ptq int8 lossless]
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

PIPELINES = {"ptq": "ptq", "int8": "normalize,quantize{target=int8},pack", "lossless": "lossless"}
KEEP = ("metric_name", "metric", "higher_is_better", "perfect")


def compress(name: str, kind: str) -> dict:
    src = os.path.join(M.out_dir(name), "model.onnx")
    out = os.path.join(M.out_dir(name), f"ours-{kind}.onnx")
    report = os.path.join(M.out_dir(name), f"ours-{kind}.report.json")
    start = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "onnxcomp", "compress", src, "-o", out, "-p", PIPELINES[kind],
                        "--report", report, "--quiet"], capture_output=True, text=True)
    row = {"name": name, "candidate": f"ours-{kind}", "pipeline": PIPELINES[kind],
           "compile_seconds": round(time.perf_counter() - start, 1), "exit": p.returncode}
    if p.returncode:
        row["error"] = (p.stderr.strip().splitlines() or ["?"])[-1][:300]
        return row
    rep = json.load(open(report))
    row.update(file_bytes=os.path.getsize(out) + sum(os.path.getsize(os.path.join(M.out_dir(name), f))
                                                      for f in os.listdir(M.out_dir(name)) if f.startswith(f"ours-{kind}.onnx.data")),
               bits_per_param=round(rep["bits_per_param"], 3), search=rep.get("search"))
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
    ap.add_argument("--pipelines", nargs="*", default=list(PIPELINES), choices=list(PIPELINES))
    args = ap.parse_args(argv)
    names = args.only or list(M.CORPUS)
    path = os.path.join(M.OUT, "ours.json")
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
