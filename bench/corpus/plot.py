"""Size against task loss on every corpus model: ours at each level, onnxruntime int8 and int4.

Reads what ours.py, peers.py and measure.py wrote (bench/out/corpus/ours*.json, */peers.json,
summary.json) and draws one panel per model into bench/figures/corpus-size-vs-task.png:
x = file bytes as a fraction of the original's, y = task loss against the original (100 - % for
"% identical/matched" metrics, 1 - cosine, flips as they are; 0 = the original's own result).
Needs only matplotlib and json (the main venv has matplotlib).

    .venv/bin/python bench/corpus/plot.py [--out PNG]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import models as M  # noqa: E402

# Our candidates in ladder order (finest first), with the labels the legend shows.
OURS = {"ours-lossless": "lossless", "ours-peak8": "int8 grid (peak 8)", "ours-ptq": "ptq (default)",
        "ours-calib": "ptq --data (calibrated)", "ours-ptq-small": "ptq-small (peak 7)", "ours-peak6": "peak 6",
        "ours-peak5": "peak 5", "ours-ptq-tiny": "ptq-tiny (rms 4)"}


def task_loss(metric_name: str, value: float) -> float:
    """Distance from the original's own result on the metric (0 = identical)."""
    if "cosine" in metric_name:
        return 1.0 - value
    if "%" in metric_name and "flips" not in metric_name:
        return 100.0 - value
    return value  # flips (counts or %): lower is better, 0 for the original


def load_rows() -> dict[str, dict[str, dict]]:
    """model -> candidate -> {bytes, loss}."""
    rows: dict[str, dict[str, dict]] = {}
    for path in sorted(glob.glob(os.path.join(M.OUT, "ours*.json"))):
        for r in json.load(open(path)):
            if r.get("metric") is None or r.get("file_bytes") is None:
                continue
            rows.setdefault(r["name"], {})[r["candidate"]] = {
                "bytes": r["file_bytes"], "loss": task_loss(r["metric_name"], r["metric"]), "metric_name": r["metric_name"]}
    summary = os.path.join(M.OUT, "summary.json")
    scores = {(r["name"], r["candidate"]): r for r in json.load(open(summary))} if os.path.exists(summary) else {}
    for name in list(rows):
        peers_path = os.path.join(M.out_dir(name), "peers.json")
        sizes = {p["method"].split()[0]: p.get("file_bytes") for p in json.load(open(peers_path))} if os.path.exists(peers_path) else {}
        for peer in ("original", "int8", "int4"):
            s = scores.get((name, peer))
            if s and s.get("metric") is not None and sizes.get(peer):
                rows[name][peer] = {"bytes": sizes[peer], "loss": task_loss(s["metric_name"], s["metric"]),
                                    "metric_name": s["metric_name"]}
    return rows


def plot(rows: dict[str, dict[str, dict]], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in M.CORPUS if n in rows and "original" in rows[n]]
    cols = 4
    fig, axes = plt.subplots((len(names) + cols - 1) // cols, cols, figsize=(4.2 * cols, 3.3 * ((len(names) + cols - 1) // cols)))
    axes = axes.ravel()
    for ax, name in zip(axes, names):
        cands, original = rows[name], rows[name]["original"]["bytes"]
        ladder = [(c, cands[c]) for c in OURS if c in cands]
        line = sorted(v["bytes"] for _, v in ladder)
        by_size = sorted(ladder, key=lambda cv: cv[1]["bytes"])
        ax.plot([b / original for b in line], [v["loss"] for _, v in by_size], "-", color="0.85", zorder=1)
        for c, v in ladder:
            ax.scatter(v["bytes"] / original, v["loss"], s=28, zorder=2, label=OURS[c],
                       marker="*" if c in ("ours-ptq", "ours-calib") else "o")
        for peer, style in (("int8", "s"), ("int4", "^")):
            if peer in cands:
                ax.scatter(cands[peer]["bytes"] / original, cands[peer]["loss"], marker=style, s=46, color="black",
                           facecolors="none", zorder=3, label=f"onnxruntime {peer}")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("file / original", fontsize=8)
        ax.set_ylabel("task loss: " + rows[name]["original"]["metric_name"][:38], fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.axis("off")
    handles, labels = {}, []
    for ax in axes[: len(names)]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", fontsize=8, ncol=5)
    fig.suptitle("onnxcomp on the corpus: size against task loss vs the original (lower left is better)", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fig.savefig(out + ".tmp.png", dpi=90)
    os.replace(out + ".tmp.png", out)
    print(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(M.REPO, "bench", "figures", "corpus-size-vs-task.png"))
    args = ap.parse_args(argv)
    plot(load_rows(), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
