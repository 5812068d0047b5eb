"""A fixed-seed slice of the decoder fuzzer (bench/fuzz.py; the long run's table is in
BENCHMARKS.md): mutated compressed files of every codec and form, every decode path in a child
process with memory and time limits. No crash, hang, raw exception, memory blow-up, leftover
file or silent wrong output; and the seal refuses every mutation of a sealed file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_fuzz_slice_finds_nothing_bad(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "fuzz.py"), "--cases", "400", "--seed", "11",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    summary = json.loads((tmp_path / "fuzz.json").read_text())
    assert r.returncode == 0 and summary["bad"] == [], r.stderr[-2000:]
    counts = summary["counts"]
    for path in ("decode_model", "InferenceSession", "CustomOpSession", "NativeOpSession", "decompress", "inspect"):
        sealed = counts[f"sealed/{path}"]
        assert set(sealed) == {"refused"} and sealed["refused"] > 50, (path, sealed)
        assert counts[f"resealed/{path}"].get("refused", 0) > 30  # the checks behind the seal hold
