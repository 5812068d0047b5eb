"""The corpus table of BENCHMARKS.md, from what peers.py, measure.py and ours.py wrote.

One row per corpus model: original / zstd -19 / onnxruntime int8 / int4 bytes and task metric,
then ours: the default (``ptq``, data-free), calibrated (``ptq --data calib.npz``) and
``lossless``, each with bytes, size against int8's file (lossless: against zstd's) and the task
metric; the ladder (ptq-small, ptq-tiny, peak 8/6/5) goes in a second table. Reads every
bench/out/corpus/ours*.json; writes bench/out/corpus/table.md and prints it.

    .venv/bin/python bench/corpus/table.py
"""

from __future__ import annotations

import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import models as M  # noqa: E402

MAIN = ("ours-ptq", "ours-calib", "ours-lossless")
LADDER = ("ours-peak8", "ours-ptq-small", "ours-peak6", "ours-peak5", "ours-ptq-tiny")


def metric(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.5g}"
    return str(v)


def kb(v) -> str:
    return "-" if v is None else f"{v:,}"


def main() -> int:
    ours: dict[tuple[str, str], dict] = {}
    for path in sorted(glob.glob(os.path.join(M.OUT, "ours*.json"))):
        for r in json.load(open(path)):
            ours[(r["name"], r["candidate"])] = r
    summary = {(r["name"], r["candidate"]): r for r in json.load(open(os.path.join(M.OUT, "summary.json")))}
    lines = ["| model | metric | original B | zstd -19 B | int8 B | int8 | int4 B | int4 | **ptq** B (x int8) | ptq "
             "| **ptq --data** B (x int8) | ptq --data | calib. s | **lossless** B (x zstd) | lossless exact |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    ladder = ["| model | int8 B | int8 | " + " | ".join(f"{c[5:]} B (x int8) | {c[5:]}" for c in LADDER) + " |",
              "|---|---:|---:|" + "---:|---:|" * len(LADDER)]
    for name in M.CORPUS:
        peers_path = os.path.join(M.out_dir(name), "peers.json")
        if not os.path.exists(peers_path):
            continue
        sizes = {p["method"].split()[0]: p.get("file_bytes") for p in json.load(open(peers_path))}
        score = {c: summary.get((name, c), {}).get("metric") for c in ("int8", "int4")}
        label = next((r.get("metric_name") for (n, _), r in ours.items() if n == name and r.get("metric_name")), "-")
        int8 = sizes.get("int8")

        def cell(cand: str, against: int | None) -> tuple[str, str]:
            r = ours.get((name, cand))
            if r is None:
                return "-", "-"
            if r.get("error"):
                return "error", r["error"][:60]
            ratio = f" ({r['file_bytes'] / against:.2f})" if against else ""
            return kb(r["file_bytes"]) + ratio, metric(r.get("metric"))

        p, c, ll = cell("ours-ptq", int8), cell("ours-calib", int8), cell("ours-lossless", sizes.get("zstd"))
        calib = ours.get((name, "ours-calib"), {})
        exact = ours.get((name, "ours-lossless"), {}).get("perfect")
        lines.append("| " + " | ".join([
            name, label, kb(sizes.get("original")), kb(sizes.get("zstd")), kb(int8), metric(score["int8"]),
            kb(sizes.get("int4")), metric(score["int4"]), p[0], p[1], c[0], c[1],
            metric(calib.get("compile_seconds")) if not calib.get("error") else "-", ll[0],
            "yes" if exact else ("no" if exact is False else "-")]) + " |")
        ladder.append("| " + " | ".join([name, kb(int8), metric(score["int8"])] +
                                        [x for cand in LADDER for x in cell(cand, int8)]) + " |")
    text = "\n".join(lines) + "\n\nThe ladder (fixed steps; data-free):\n\n" + "\n".join(ladder) + "\n"
    with open(os.path.join(M.OUT, "table.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
