"""Open any benchmarked model as an onnxruntime session, in either venv.

A plain or ORT-quantized model opens with `onnxruntime.InferenceSession`. A model that uses the
`ai.onnxcomp` domain opens with `onnxcomp.runtime.InferenceSession` (decode at load), which is
installed in the main venv only; asking for it elsewhere is an error that says so.
"""

from __future__ import annotations

import os

import onnx

ONNXCOMP_DOMAIN = "ai.onnxcomp"


def uses_onnxcomp(path: str) -> bool:
    model = onnx.load(path, load_external_data=False)
    return any(o.domain == ONNXCOMP_DOMAIN for o in model.opset_import)


def session_options(threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    # Thread pools busy-wait by default; on 2 cores that skews the other process's timings.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def open_session(path: str, threads: int | None = None):
    """Return (session, loader name)."""
    import onnxruntime as ort

    if uses_onnxcomp(path):
        try:
            import onnxcomp.runtime as rt
        except ImportError as e:
            raise SystemExit(
                f"{path} uses the {ONNXCOMP_DOMAIN} domain: run this in the main venv "
                f"(the project's .venv) where onnxcomp.runtime is installed ({e})") from e
        return rt.InferenceSession(path, sess_options=session_options(threads),
                                   providers=["CPUExecutionProvider"]), "onnxcomp.runtime"
    return ort.InferenceSession(path, sess_options=session_options(threads),
                                providers=["CPUExecutionProvider"]), "onnxruntime"


def versions() -> dict:
    import numpy
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
            "numpy": numpy.__version__, "python": os.sys.version.split()[0]}


def write_results(rows: list[dict], out: str) -> None:
    """Stamp each row with this venv's versions and the exact command, then write the JSON
    atomically (results are read by report.py; a half-written file must never be)."""
    import json
    import shlex
    import sys

    env = versions()
    command = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable), *sys.argv])
    for r in rows:
        r.update({"venv": env, "command": command})
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".tmp", "w") as f:
        json.dump(rows, f, indent=1, ensure_ascii=False, default=str)
    os.replace(out + ".tmp", out)
