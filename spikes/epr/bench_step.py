"""SPIKE: median training-step time (forward + backward + AdamW, batch 128) of LeNet-300-100:
plain (all weights float, trainable) vs the EPR graph with the logistic and the factorized prior.

    python spikes/epr/bench_step.py --threads 1 --steps 300

Random inputs (timing only). Also reports generate_artifacts time and node counts.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from epr_graph import EprSpec, build_epr_training_graph  # noqa: E402

from onnxcomp.models.lenet import with_training_loss  # noqa: E402
from onnxcomp.training.session import TrainingSession, generate_artifacts  # noqa: E402


def bench(model, trainable, extra, args) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        art = generate_artifacts(model, trainable, [], tmp)
        t_art = time.perf_counter() - t
        s = TrainingSession(art, lr=1e-6, threads=args.threads)
        rng = np.random.default_rng(0)
        x = rng.random((args.batch, 784), np.float32)
        y = rng.integers(0, 10, args.batch).astype(np.int64)
        feed = {"input": x, "labels": y, **extra}
        times = []
        for i in range(args.steps + 20):
            t = time.perf_counter()
            s.step(feed)
            if i >= 20:
                times.append(time.perf_counter() - t)
        t_eval = []
        for i in range(50):
            t = time.perf_counter()
            s.eval(feed)
            t_eval.append(time.perf_counter() - t)
    return 1000 * float(np.median(times)), 1000 * float(np.median(t_eval)), t_art


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    model = onnx.load(str(HERE.parents[1] / "models" / "lenet-300-100.onnx"))
    print(f"threads {args.threads}, batch {args.batch}, median of {args.steps} steps; loadavg {os.getloadavg()[0]:.2f}")
    plain = with_training_loss(model)
    ms, ev, ta = bench(plain, [t.name for t in model.graph.initializer], {}, args)
    print(f"  plain       step {ms:6.2f} ms  eval-fwd {ev:5.2f} ms  artifacts {ta:.2f}s  nodes {len(plain.graph.node)}")
    for prior in ("none", "logistic", "factorized"):
        g = build_epr_training_graph(model, EprSpec(prior=prior, per_channel=False))
        extra = {"lam": np.float32(0.25), "noise": np.float32(1.0)}
        ms, ev, ta = bench(g.model, g.trainable, extra, args)
        print(f"  epr-{prior:10s} step {ms:6.2f} ms  eval-fwd {ev:5.2f} ms  artifacts {ta:.2f}s  nodes {len(g.model.graph.node)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
