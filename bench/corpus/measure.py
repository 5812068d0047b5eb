"""Score the original (against itself) and the peer files (int8.onnx, int4.onnx) of every corpus
model with task.py, and write bench/out/corpus/summary.{json,md}.

Runs in the MAIN venv (onnxruntime-training-cpu 1.19.2). A candidate that 1.19.2 cannot open or
run (e.g. quantize_dynamic's ConvInteger with int8 weights) is scored again in the peers venv
(current plain onnxruntime), and the row says so.

    .venv/bin/python bench/corpus/measure.py [--only NAME ...] [--candidates original int8 int4]
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

PEERS_PY = os.path.join(M.BENCH, ".venv-peers", "bin", "python")
FILES = {"original": "model.onnx", "int8": "int8.onnx", "int4": "int4.onnx"}
KEEP = ("metric_name", "metric", "higher_is_better", "perfect", "candidate_loader", "n_eval",
        "candidate_seconds", "original_seconds", "venv")


def score(name: str, kind: str) -> dict:
    path = os.path.join(M.out_dir(name), FILES[kind])
    if not os.path.exists(path):
        return {"name": name, "candidate": kind, "skipped": "no file (see peers.json)"}
    out = os.path.join(M.out_dir(name), f"task-{kind}.json")
    try:
        r = task.evaluate(name, path)
        r["scored_in"] = "main venv"
        with open(out, "w") as f:
            json.dump(r, f, indent=1, ensure_ascii=False, default=str)
    except Exception as e:  # noqa: BLE001 - try the peers venv's onnxruntime
        main_err = f"{type(e).__name__}: {str(e).splitlines()[0][:240]}"
        if not os.path.exists(PEERS_PY):
            return {"name": name, "candidate": kind, "error_main_venv": main_err}
        p = subprocess.run([PEERS_PY, os.path.join(HERE, "task.py"), "--name", name, "--candidate", path,
                            "--out", out], capture_output=True, text=True)
        if p.returncode:
            return {"name": name, "candidate": kind, "error_main_venv": main_err,
                    "error_peers_venv": (p.stderr.strip().splitlines() or ["?"])[-1][:300]}
        r = json.load(open(out))
        r["scored_in"] = "peers venv (main venv failed)"
        r["error_main_venv"] = main_err
    row = {"name": name, "candidate": kind, **{k: r.get(k) for k in KEEP}, "scored_in": r["scored_in"]}
    if "error_main_venv" in r:
        row["error_main_venv"] = r["error_main_venv"]
    row["detail"] = {k: v for k, v in r.items() if k not in KEEP and k not in (
        "name", "candidate", "original", "mismatches", "original_errors_vs_truth", "flipped")}
    return row


def markdown(rows: list[dict]) -> str:
    sizes = {}
    for name in {r["name"] for r in rows}:
        p = os.path.join(M.out_dir(name), "peers.json")
        if os.path.exists(p):
            for pr in json.load(open(p)):
                sizes[(name, pr["method"].split()[0])] = pr
    lines = ["| model | candidate | file bytes | metric | value | perfect | scored in |", "|---|---|---:|---|---:|---|---|"]
    for r in rows:
        pr = sizes.get((r["name"], {"original": "original", "int8": "int8", "int4": "int4"}[r["candidate"]]), {})
        val = r.get("metric")
        val = f"{val:.4f}" if isinstance(val, float) else (str(val) if val is not None else "-")
        note = r.get("skipped") or r.get("error_peers_venv") or ""
        lines.append(f"| {r['name']} | {r['candidate']} | {pr.get('file_bytes', '-')} | {r.get('metric_name') or note} | "
                     f"{val} | {r.get('perfect', '-')} | {r.get('scored_in', '-')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--candidates", nargs="*", default=["original", "int8", "int4"], choices=list(FILES))
    args = ap.parse_args(argv)
    rows = []
    for name in args.only or list(M.CORPUS):
        for kind in args.candidates:
            t0 = time.time()
            r = score(name, kind)
            rows.append(r)
            print(f"{name:<20} {kind:<8} {r.get('metric_name') or r.get('skipped') or r.get('error_peers_venv') or r.get('error_main_venv')}"
                  f" = {r.get('metric')} perfect={r.get('perfect')} [{r.get('scored_in', '-')}] ({time.time() - t0:.1f} s)", flush=True)
    out = os.path.join(M.OUT, "summary")
    if args.only and os.path.exists(out + ".json"):  # merge: replace the rows just measured
        done = {(r["name"], r["candidate"]) for r in rows}
        old = [r for r in json.load(open(out + ".json")) if (r["name"], r["candidate"]) not in done]
        rows = sorted(old + rows, key=lambda r: (list(M.CORPUS).index(r["name"]) if r["name"] in M.CORPUS else 99,
                                                 list(FILES).index(r["candidate"])))
    if True:
        with open(out + ".json", "w") as f:
            json.dump(rows, f, indent=1, default=str)
        with open(out + ".md", "w") as f:
            f.write(markdown(rows))
        print(out + ".md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
