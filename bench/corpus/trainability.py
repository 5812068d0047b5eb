"""Gradient coverage over the corpus: does each model train with EPR and with weight fixing, what
did the trainable form rewrite, and which op blocks it where it does not.

One real training step per method and model, through the CLI (a subprocess per run: a crash in
onnxruntime is a row, not the end of the table), on the model's unlabeled calib.npz (distillation):

    EPR: normalize,epr-reparam{start=ptq},finetune{epochs=E batch=4},pack   (start=ptq: the default
         for unlabeled data, explicit so already-quantized models train too)
    WFN: normalize,weight-fix{schedule=0.5:1 epochs=E batch=4},pack --max-error-increase 0.99
         (a loose budget: without one weight-fix refuses what it cannot fix within 8-bit rounding)

E is chosen so that about one step runs (a corpus calib split has ~100 training samples). The
row keeps the CLI's "training form:" line (rewrites, pins, the check's worst change) and, on
failure, its last error line. Writes bench/out/corpus/trainability.{json,md}.

    .venv/bin/python bench/corpus/trainability.py [--only NAME ...] [--methods epr wfn]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import models as M  # noqa: E402

ONE_STEP_EPOCHS = 0.02  # ~100 training samples / batch 4 = 25 steps per epoch -> 1 step
PIPELINES = {
    "epr": f"normalize,epr-reparam{{start=ptq}},finetune{{epochs={ONE_STEP_EPOCHS} batch=4}},pack",
    "wfn": f"normalize,weight-fix{{schedule=0.5:1 epochs={ONE_STEP_EPOCHS} batch=4}},pack",
}
# A probe of gradients, not of fidelity: weight-fix without a budget refuses a model it cannot fix
# within 8-bit rounding's change (one step never can), after training.
FLAGS = {"epr": [], "wfn": ["--max-error-increase", "0.99"]}
TIMEOUT_S = 1800


def probe(name: str, method: str) -> dict:
    src = os.path.join(M.out_dir(name), "model.onnx")
    out = os.path.join(M.out_dir(name), f"trainability-{method}.onnx")
    cmd = [sys.executable, "-m", "onnxcomp", "compress", src, "-o", out, "-p", PIPELINES[method],
           "--data", os.path.join(M.out_dir(name), "calib.npz"), *FLAGS[method]]
    start = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
        code, log, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        code, log, err = "timeout", (e.stdout or b"").decode(errors="replace"), f"no result in {TIMEOUT_S} s"
    row = {"name": name, "method": method, "exit": code, "seconds": round(time.perf_counter() - start, 1)}
    form = re.search(r"training form: (.*)", log + err)
    row["form"] = form.group(1).strip() if form else None
    row["trains"] = code == 0 and row["form"] is not None  # exit 0 with no training form: nothing trained
    if code == 0 and row["form"] is None:
        skipped = re.search(r"(\w+ weight left as is \([^)]*\))", log + err)
        row["error"] = "exit 0 but nothing trained" + (f": {skipped.group(1)}" if skipped else "")
    if code != 0:
        lines = [line.strip() for line in (err or log).strip().splitlines() if line.strip()]
        row["error"] = lines[-1][:400] if lines else f"exit {code}, no message"
    for suffix in ("", ".data"):
        if os.path.exists(out + suffix):
            os.remove(out + suffix)
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| model | method | trains | training form / what blocks it | s |", "|---|---|---|---|---|"]
    for r in rows:
        what = r.get("form") or ""
        if not r["trains"]:
            what = (what + "; " if what else "") + f"**{r.get('error', '?')}**"
        lines.append(f"| {r['name']} | {r['method'].upper()} | {'yes' if r['trains'] else 'no'} | {what} | {r['seconds']:g} |")
    trained = {m: sum(r["trains"] for r in rows if r["method"] == m) for m in sorted({r["method"] for r in rows})}
    total = {m: sum(1 for r in rows if r["method"] == m) for m in trained}
    lines.append("")
    lines.append("Trains: " + ", ".join(f"{m.upper()} {trained[m]}/{total[m]}" for m in trained))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--methods", nargs="*", default=list(PIPELINES), choices=list(PIPELINES))
    ap.add_argument("--json", default=os.path.join(M.OUT, "trainability.json"))
    args = ap.parse_args()
    names = [n for n in M.CORPUS if args.only is None or n in args.only]
    rows = []
    for name in names:
        for method in args.methods:
            row = probe(name, method)
            rows.append(row)
            print(f"[trainability] {name:22s} {method}: {'trains' if row['trains'] else 'blocked'} ({row['seconds']} s)"
                  + ("" if row["trains"] else f": {row.get('error')}"), flush=True)
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)
    md = args.json.rsplit(".", 1)[0] + ".md"
    with open(md, "w") as f:
        f.write(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
