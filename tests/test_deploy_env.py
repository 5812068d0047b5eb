"""The runtime in a deploy-only environment: `pip install onnxcomp[deploy]` gives the newest
plain onnxruntime, onnxruntime-extensions, numpy and constriction, and no onnx. A compressed
file made here must decode to the same bytes there and run through both runtime paths."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import onnxcomp.runtime as rt
from onnxcomp.compile import compress

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-deploy"


def deploy_python() -> Path:
    py = VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", f"{ROOT}[deploy]"],
                       check=True, timeout=900)
    return py


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["ptq", "lossless"])  # EntropyDecode (domain v1); BytePlaneDecode (v2)
def test_runtime_in_a_deploy_only_environment(tmp_path, preset):
    py = deploy_python()
    out = tmp_path / "model.onnx"
    compress(ROOT / "models" / "lenet5-caffe.onnx", out, preset, progress=False)
    x = np.random.default_rng(0).random((32, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy", rt.InferenceSession(out).run(None, {"input": x})[0])
    (tmp_path / "decoded.sha256").write_text(hashlib.sha256(rt.decode_model(out)).hexdigest())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([str(py), str(ROOT / "tests" / "deploy" / "check_runtime.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert not result["has_onnx"]
    assert tuple(int(v) for v in result["onnxruntime"].split(".")[:2]) >= (1, 19)
    assert result["decoded_bytes_identical"]
    assert result["max_abs_diff_load"] < 1e-4 and result["max_abs_diff_custom"] < 1e-4
    assert result["argmax_equal"]
    assert result["native_built"] and result["native_equals_python_op"]  # the library under the newest onnxruntime
    assert result["inspect_exit"] == 0 and result["inspect_coded"] > 0
    assert result["decompress_exit"] == 0 and result["decompressed_equal"], result["decompress_stderr"]
