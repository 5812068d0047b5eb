"""Run inside a deploy-only environment (onnxcomp[deploy]: newest plain onnxruntime, no onnx).

    python check_runtime.py DIR

DIR holds model.onnx (compressed), x.npy, want.npy (decode-at-load output in the compile
environment) and decoded.sha256 (of decode_model's bytes there). Prints one JSON line.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

import onnxcomp.runtime as rt

d = Path(sys.argv[1])
assert "onnx" not in sys.modules and "onnx_ir" not in sys.modules
try:
    import onnx  # noqa: F401

    has_onnx = True
except ImportError:
    has_onnx = False
x = np.load(d / "x.npy")
want = np.load(d / "want.npy")
decoded = rt.decode_model(d / "model.onnx")
same_bytes = hashlib.sha256(decoded).hexdigest() == (d / "decoded.sha256").read_text().strip()
got = rt.InferenceSession(d / "model.onnx").run(None, {"input": x})[0]
custom = rt.CustomOpSession(d / "model.onnx", op="python").run(None, {"input": x})[0]
# The native library under this onnxruntime (the compile environment's is 1.19): same outputs as the Python op.
from onnxcomp.runtime import native  # noqa: E402

native_out = rt.CustomOpSession(d / "model.onnx", op="native").run(None, {"input": x})[0] if native.available() else None
# The CLI of this install: inspect and decompress work without onnx (exit 0; decompress keeps the
# decode graphs, and its output gives decode at load's numbers).
cli = str(Path(sys.executable).with_name("onnxcomp"))
inspected = subprocess.run([cli, "inspect", str(d / "model.onnx"), "--json"], capture_output=True, text=True)
plain = d / "plain.onnx"
decompressed = subprocess.run([cli, "decompress", str(d / "model.onnx"), "-o", str(plain)], capture_output=True, text=True)
from_plain = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0] \
    if decompressed.returncode == 0 else None
print(json.dumps({
    "inspect_exit": inspected.returncode, "inspect_coded": len(json.loads(inspected.stdout)["coded_tensors"]) if inspected.returncode == 0 else None,
    "decompress_exit": decompressed.returncode, "decompress_stderr": decompressed.stderr[-300:],
    "decompressed_equal": bool(from_plain is not None and np.array_equal(from_plain, got)),
    "onnxruntime": ort.__version__, "has_onnx": has_onnx, "decoded_bytes_identical": same_bytes,
    "max_abs_diff_load": float(np.abs(got - want).max()), "max_abs_diff_custom": float(np.abs(custom - want).max()),
    "argmax_equal": bool(np.array_equal(got.argmax(1), want.argmax(1))),
    "native_built": native.available(),
    "native_equals_python_op": bool(native_out is not None and native_out.tobytes() == custom.tobytes()),
}))
