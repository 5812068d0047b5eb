"""Call the onnxcomp compiler the way a user does: through its CLI, in a subprocess.

Contract (owned by the compiler, not by bench/):
    onnxcomp compress IN.onnx -o OUT.onnx -p PIPELINE [--report r.json]   (or python -m onnxcomp)
Report keys: original_bytes, compressed_bytes, payload_bytes, params, bits_per_param, tensors,
metrics, and `training` for pipelines with finetune. A missing CLI, a non-zero exit or a missing
output is a CompilerUnavailable with one clear line, so benchmark scripts fail loudly instead of
measuring nothing. The CLI's progress lines (stderr) are echoed as they come, indented, so a
long training run shows its epochs; its summary table (stdout) is kept out of the log.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time


class CompilerUnavailable(SystemExit):
    """The onnxcomp CLI is missing or failed; the message says which and how."""


def cli_command() -> list[str]:
    """The command prefix that runs the CLI in this interpreter's environment."""
    try:
        has_main = importlib.util.find_spec("onnxcomp.__main__") is not None
        has_cli = importlib.util.find_spec("onnxcomp.cli") is not None
    except ImportError:
        has_main = has_cli = False
    if has_main:
        return [sys.executable, "-m", "onnxcomp"]
    if has_cli:
        return [sys.executable, "-c", "import sys; from onnxcomp.cli import main; sys.exit(main())"]
    raise CompilerUnavailable(
        f"onnxcomp CLI not importable from {sys.executable}: neither onnxcomp.__main__ nor "
        "onnxcomp.cli exists yet (run in the project's .venv after `make setup`)")


def _run_echoing(cmd: list[str], echo: bool) -> tuple[int, str]:
    """Run cmd; echo its stderr lines (indented) while it runs; return (exit code, last output lines)."""
    tail: list[str] = []
    with tempfile.TemporaryFile("w+") as out:  # stdout to a file: a full pipe would block the child
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True, bufsize=1)
        for line in proc.stderr:
            tail = (tail + [line.rstrip()])[-5:]
            if echo:
                print("    | " + line.rstrip(), file=sys.stderr, flush=True)
        code = proc.wait()
        out.seek(0)
        if code != 0 and not tail:
            tail = out.read().strip().splitlines()[-5:]
    return code, "\n  ".join(tail)


def compress(src: str, dst: str, pipeline: str = "ptq", extra: list[str] | None = None, echo: bool = True) -> dict:
    """Run `onnxcomp compress`; return its report plus wall time and the exact command."""
    report_path = dst + ".report.json"
    prefix = cli_command()
    args = ["compress", src, "-o", dst, "-p", pipeline, "--report", report_path] + (extra or [])
    cmd = prefix + args
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    for stale in (dst, report_path):
        if os.path.exists(stale):
            os.remove(stale)
    t0 = time.perf_counter()
    code, tail = _run_echoing(cmd, echo)
    seconds = time.perf_counter() - t0
    if code != 0:
        raise CompilerUnavailable(f"onnxcomp compress failed (exit {code}): {' '.join(cmd)}\n  {tail}")
    if not os.path.exists(dst):
        raise CompilerUnavailable(f"onnxcomp compress exited 0 but wrote no {dst}")
    report = {}
    if os.path.exists(report_path):
        with open(report_path) as f:
            report = json.load(f)
    return {"report": report, "compile_seconds": round(seconds, 2),
            "command": " ".join(["onnxcomp"] + [shlex.quote(os.path.relpath(a) if os.path.exists(a) else a)
                                                 for a in args])}
