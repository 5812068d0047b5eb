"""SPIKE (issue 4, not product code): weight fixing (WFN) on a shipped LeNet, retrained through ORT.

    python spikes/wfn/wfn_spike.py --model models/lenet-300-100.onnx --epochs-per-round 1

Rounds fix a growing share of ALL weights to zero or signed powers of two (sums of two powers
when no single power fits: "order" 1) by greedy clustering on relative distance with the
shrinking threshold a_t = max(delta, delta * (T - t)); between rounds the free weights are
retrained with ORT training while fixed ones are held exactly by an in-graph mask
(W = free + mask * (fixed - free): zero gradient where mask = 1). No softmin regularizer here.
At the end every weight is a codebook entry: W.idx (int32) -> Gather(codebook), coded by the
real `pack`. Prints per round: share fixed, unique values, pooled entropy, val error; then the
packed payload and test error. Writes spikes/wfn/out/<tag>.json.
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
from onnx import helper, numpy_helper

import onnxcomp.runtime as rt
from onnxcomp.coding import entropy_bits
from onnxcomp.data import batches, load_data, model_input_shapes
from onnxcomp.metrics import evaluate_session
from onnxcomp.model_io import load_model, save_model, to_proto
from onnxcomp.models.lenet import with_training_loss
from onnxcomp.training.session import TrainingSession, generate_artifacts
from onnxcomp.graph.weights import find_weights

HERE = Path(__file__).resolve().parent
SCHEDULE = (0.30, 0.60, 0.80, 0.90, 0.95, 0.975, 0.99, 0.9975, 0.999, 1.0)


def candidates(gamma0: float, max_abs: float, order: int) -> np.ndarray:
    """Zero and signed powers of two 2^n, n >= log2(gamma0) - order - 1; with order 1 also every
    sum of two such powers."""
    lo = int(math.floor(math.log2(gamma0))) - order - 1
    hi = int(math.ceil(math.log2(max(max_abs, gamma0))))
    powers = [2.0**n for n in range(lo, hi + 1)]
    values = set(powers)
    if order >= 1:
        values |= {a + b for a in powers for b in powers if a != b}
    positive = np.array(sorted(values))
    return np.concatenate([-positive[::-1], [0.0], positive])


def fix_round(w: np.ndarray, fixed: np.ndarray, target: int, threshold: float, gamma0: float, order: int) -> None:
    """Greedy WFN clustering: fix free weights (in place: w takes the centre, fixed = True) until
    ``target`` are fixed or no candidate can take more within ``threshold``."""
    free = np.flatnonzero(~fixed)
    tiny = free[np.abs(w[free]) < gamma0]
    take = tiny[: max(0, target - int(fixed.sum()))]
    w[take] = 0.0
    fixed[take] = True
    for current_order in range(order + 1):
        centres = candidates(gamma0, float(np.abs(w).max()), current_order)
        blocked: set[int] = set()
        while fixed.sum() < target:
            free = np.flatnonzero(~fixed)
            if free.size == 0:
                return
            nearest = np.abs(w[free][:, None] - centres[None, :]).argmin(axis=1)
            counts = np.bincount(nearest, minlength=centres.size)
            counts[list(blocked)] = 0
            if counts.max() == 0:
                break
            c = int(counts.argmax())
            members = free[nearest == c]
            rel = np.abs(w[members] - centres[c]) / np.maximum(np.abs(w[members]), 1e-12)
            order_idx = np.argsort(rel, kind="stable")
            running = np.cumsum(rel[order_idx]) / np.arange(1, order_idx.size + 1)
            n_ok = int(np.searchsorted(running > threshold, True))  # longest prefix within threshold
            n_ok = min(n_ok, target - int(fixed.sum()))
            if n_ok == 0:
                blocked.add(c)
                continue
            chosen = members[order_idx[:n_ok]]
            w[chosen] = centres[c]
            fixed[chosen] = True


def masked_training_graph(model: onnx.ModelProto, names: list[str], values: dict, masks: dict) -> onnx.ModelProto:
    """W = free + mask * (fixed - free) per weight: fixed entries cannot move."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    g = out.graph
    keep = [t for t in g.initializer if t.name not in names]
    del g.initializer[:]
    g.initializer.extend(keep)
    nodes = []
    for n in names:
        g.initializer.extend([numpy_helper.from_array(values[n].astype(np.float32), f"{n}.free"),
                              numpy_helper.from_array(values[n].astype(np.float32), f"{n}.fixed"),
                              numpy_helper.from_array(masks[n].astype(np.float32), f"{n}.mask")])
        nodes += [helper.make_node("Sub", [f"{n}.fixed", f"{n}.free"], [f"{n}.gap"]),
                  helper.make_node("Mul", [f"{n}.mask", f"{n}.gap"], [f"{n}.held"]),
                  helper.make_node("Add", [f"{n}.free", f"{n}.held"], [n])]
    existing = list(g.node)
    del g.node[:]
    g.node.extend(nodes + existing)
    return with_training_loss(out)


def apply(model: onnx.ModelProto, values: dict) -> onnx.ModelProto:
    out = onnx.ModelProto.FromString(model.SerializeToString())
    for t in out.graph.initializer:
        if t.name in values:
            t.CopyFrom(numpy_helper.from_array(values[t.name].astype(np.float32), t.name))
    return out


def codebook_model(model: onnx.ModelProto, values: dict) -> tuple[onnx.ModelProto, np.ndarray]:
    """W -> W.idx (int32) + Gather(onnxcomp.codebook): the representation issue 4 asks for."""
    book = np.unique(np.concatenate([v.ravel() for v in values.values()])).astype(np.float32)
    out = onnx.ModelProto.FromString(model.SerializeToString())
    g = out.graph
    keep = [t for t in g.initializer if t.name not in values]
    del g.initializer[:]
    g.initializer.extend(keep)
    g.initializer.append(numpy_helper.from_array(book, "onnxcomp.codebook"))
    nodes = []
    for n, v in values.items():
        idx = np.searchsorted(book, v.astype(np.float32)).astype(np.int32)
        assert np.array_equal(book[idx], v.astype(np.float32))
        g.initializer.append(numpy_helper.from_array(idx, f"{n}.idx"))
        nodes.append(helper.make_node("Gather", ["onnxcomp.codebook", f"{n}.idx"], [n], axis=0))
    existing = list(g.node)
    del g.node[:]
    g.node.extend(nodes + existing)
    return out, book


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/lenet-300-100.onnx")
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--delta", type=float, default=0.015)
    ap.add_argument("--gamma0", type=float, default=2.0**-7)
    ap.add_argument("--order", type=int, default=1)
    ap.add_argument("--epochs-per-round", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="run")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    proto = onnx.load(args.model)
    data = load_data(args.data, model_input_shapes(proto))
    weights, _ = find_weights(load_model(args.model))
    names = [w.name for w in weights]
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in proto.graph.initializer}
    shapes = {n: inits[n].shape for n in names}
    flat = np.concatenate([inits[n].ravel() for n in names])
    sizes = [inits[n].size for n in names]
    fixed = np.zeros(flat.size, bool)
    T = len(SCHEDULE)
    history = []
    for t, share in enumerate(SCHEDULE):
        threshold = math.inf if share >= 1.0 else max(args.delta, args.delta * (T - t))
        fix_round(flat, fixed, int(round(share * flat.size)), threshold, args.gamma0, args.order)
        if share < 1.0:
            parts = np.split(flat, np.cumsum(sizes)[:-1])
            masks = np.split(fixed.astype(np.float32), np.cumsum(sizes)[:-1])
            values = {n: p.reshape(shapes[n]) for n, p in zip(names, parts)}
            mask_map = {n: m.reshape(shapes[n]) for n, m in zip(names, masks)}
            graph = masked_training_graph(proto, names, values, mask_map)
            with tempfile.TemporaryDirectory() as tmp:
                art = generate_artifacts(graph, [f"{n}.free" for n in names], [], tmp)
                sess = TrainingSession(art, lr=args.lr, seed=args.seed, threads=1)
                steps = int(args.epochs_per_round * math.ceil(len(data.train) / 128))
                done = 0
                epoch = 0
                while done < steps:
                    for b in batches(data.train, 128, shuffle_seed=args.seed * 1000 + t * 100 + epoch):
                        if done >= steps:
                            break
                        sess.step({"input": b.inputs["input"], "labels": b.labels})
                        done += 1
                    epoch += 1
                trained = sess.parameters(trainable_only=True)
            new = np.concatenate([trained[f"{n}.free"].astype(np.float64).ravel() for n in names])
            flat = np.where(fixed, flat, new)
        parts = np.split(flat, np.cumsum(sizes)[:-1])
        values = {n: p.reshape(shapes[n]) for n, p in zip(names, parts)}
        val = evaluate_session(rt.InferenceSession(apply(proto, values).SerializeToString()), data.val)
        fixed_vals = flat[fixed]
        row = {"round": t + 1, "share_target": share, "share_fixed": float(fixed.mean()),
               "unique_fixed": int(np.unique(fixed_vals).size), "entropy_fixed": entropy_bits(fixed_vals),
               "val_error": val, "elapsed_s": time.perf_counter() - t0}
        history.append(row)
        print(f"round {t + 1:2d}: fixed {100 * row['share_fixed']:6.2f}%  unique {row['unique_fixed']:4d}  "
              f"H {row['entropy_fixed']:.3f} b/w  val {100 * val:.2f}%  {row['elapsed_s']:.0f}s", flush=True)
    values = {n: p.reshape(shapes[n]).astype(np.float32) for n, p in zip(names, np.split(flat, np.cumsum(sizes)[:-1]))}
    cb, book = codebook_model(proto, values)
    from onnxcomp.pass_base import CompileContext
    from onnxcomp.pipeline import parse_pipeline
    from onnxcomp.report import payload_bytes
    import onnx_ir as ir

    m = ir.serde.deserialize_model(cb)
    parse_pipeline("pack").run(m, CompileContext(progress=False))
    out_dir = HERE / "out"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"{args.tag}.onnx"
    file_bytes = save_model(m, path)
    sess = rt.InferenceSession(path.read_bytes())
    pooled = np.concatenate([v.ravel() for v in values.values()])
    nz = pooled[pooled != 0]
    powers = np.abs(nz)
    is_pow2 = np.isclose(np.log2(powers), np.round(np.log2(powers)))
    result = {"args": vars(args), "unique": int(book.size), "entropy": entropy_bits(pooled),
              "entropy_nonzero": entropy_bits(nz), "zeros": float(np.mean(pooled == 0)),
              "share_pow2_of_nonzero": float(is_pow2.mean()), "payload_bytes": payload_bytes(m), "file_bytes": file_bytes,
              "val_error": evaluate_session(sess, data.val), "test_error": evaluate_session(sess, data.test),
              "wall_s": time.perf_counter() - t0, "history": history, "codebook": book.tolist()}
    (out_dir / f"{args.tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"RESULT {args.tag}: unique {result['unique']}  H {result['entropy']:.3f} b/w (nonzero {result['entropy_nonzero']:.3f}, "
          f"zeros {100 * result['zeros']:.1f}%, pow2 {100 * result['share_pow2_of_nonzero']:.0f}% of nonzero)  payload "
          f"{result['payload_bytes']} B  val {100 * result['val_error']:.2f}%  test {100 * result['test_error']:.2f}%  "
          f"{result['wall_s']:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
