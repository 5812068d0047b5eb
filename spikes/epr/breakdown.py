"""SPIKE: where the bytes of a packed EPR model go, plus two cheap savings estimated (not built).

    python spikes/epr/breakdown.py spikes/epr/out/<tag>.onnx

Groups initializer bytes by kind (bitstream, frequencies, offset/shape, step, raw ints), then
estimates: (a) uint16 frequency tables instead of int32 (FORMAT.md stores int32), (b) dropping
dead hidden units (all-zero weight rows: their constant relu(bias) folds into the next bias).
"""

from __future__ import annotations

import sys
from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

import onnxcomp.runtime as rt


def main(path: str) -> int:
    model = onnx.load(path)
    groups: dict[str, int] = defaultdict(int)
    freq_entries = 0
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        kind = t.name.rsplit(".", 1)[-1]
        if kind not in ("bitstream", "frequencies", "offset", "shape", "step", "latent"):
            kind = "other"
        if kind == "latent":
            kind = f"raw {a.dtype}"
        if kind == "frequencies":
            freq_entries += a.size
        groups[kind] += a.nbytes
    total = sum(groups.values())
    print(f"{path}: payload {total} B")
    for k, v in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {k:12s} {v:6d} B  {100 * v / total:5.1f}%")
    print(f"  (a) uint16 tables instead of int32 would save ~{2 * freq_entries} B (needs precision <= 16 and a FORMAT change)")
    plain = onnx.load_from_string(rt.decode_model(path))
    w = {t.name: numpy_helper.to_array(t) for t in plain.graph.initializer}
    dead_units = 0
    for name, a in w.items():
        if name.endswith(".weight.latent") and a.ndim == 2 and not name.startswith("fc3"):
            dead = ~np.any(a != 0, axis=1)
            dead_units += int(dead.sum())
            print(f"  {name}: {int(dead.sum())}/{a.shape[0]} output units have all-zero weights")
    print(f"  (b) {dead_units} dead hidden units: removing them (bias entries, next-layer columns, relu(b) folded "
          f"into the next bias) shrinks tensors but the removed values are mostly zeros, which cost little")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
