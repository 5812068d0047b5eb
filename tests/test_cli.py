"""The CLI end to end, in a subprocess as users run it: exit codes, one-line errors, no partial
outputs, deterministic files, and the report's contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxcomp.model_io import serialize

from .conftest import CODED, make_model, tiny_cnn, tiny_mlp


def onnxcomp(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "onnxcomp", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


@pytest.fixture
def mlp_file(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(tiny_mlp(), path)
    return path


def test_compress_writes_model_and_report(mlp_file, tmp_path):
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    r = onnxcomp("compress", mlp_file, "-o", out, "--report", report)
    assert r.returncode == 0, r.stderr
    assert "bits/param" in r.stdout and "W1" in r.stdout and "pipeline:" in r.stderr
    quiet = onnxcomp("compress", mlp_file, "-o", tmp_path / "q.onnx", "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    rep = json.loads(report.read_text())
    for key in ("original_bytes", "compressed_bytes", "payload_bytes", "params", "bits_per_param", "tensors"):
        assert key in rep
    assert rep["compressed_bytes"] == out.stat().st_size
    assert rep["params"] == 64 * 48 + 48 + 10 * 48 + 10
    assert rep["payload_bytes"] < rep["original_payload_bytes"] / 3
    row = next(t for t in rep["tensors"] if t["name"] == "W1")
    assert row["shape"] == [64, 48] and row["codec"] in ("ans", "raw-int8") and row["unique_values"] > 1
    assert set(row) >= {"name", "shape", "codec", "bytes", "bits_per_param", "unique_values", "entropy_bits"}


def test_compress_is_deterministic(mlp_file, tmp_path):
    for name in ("a.onnx", "b.onnx"):
        assert onnxcomp("compress", mlp_file, "-o", tmp_path / name, "--quiet", "--seed", "3").returncode == 0
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_inspect_decompress_and_passes(mlp_file, tmp_path):
    out = tmp_path / "o.onnx"
    assert onnxcomp("compress", mlp_file, "-o", out, "-p", CODED, "--quiet").returncode == 0
    r = onnxcomp("inspect", out, "--json")
    info = json.loads(r.stdout)
    assert info["opsets"]["ai.onnxcomp"] == 3 and info["coded_tensors"]
    r = onnxcomp("decompress", out, "-o", tmp_path / "plain.onnx")
    assert r.returncode == 0, r.stderr
    assert "ai.onnxcomp" not in {o.domain for o in onnx.load(tmp_path / "plain.onnx").opset_import}
    r = onnxcomp("passes")
    assert r.returncode == 0 and "quantize" in r.stdout and "ptq = normalize,quantize,pack" in r.stdout


def bad(path, content: bytes):
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("make_input, code, message", [
    (lambda d: d / "missing.onnx", 3, "no such file"),
    (lambda d: bad(d / "text.onnx", b"hello, I am not a model\n" * 10), 3, "not a valid ONNX"),
    (lambda d: bad(d / "trunc.onnx", tiny_mlp().SerializeToString()[:700]), 3, "not a valid ONNX"),
    (lambda d: d, 3, "not a file"),
])
def test_bad_model_files(tmp_path, make_input, code, message):
    out = tmp_path / "out.onnx"
    r = onnxcomp("compress", make_input(tmp_path), "-o", out)
    assert r.returncode == code
    assert message in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.onnx*"))


@pytest.mark.parametrize("pipeline, message", [
    ("normalize,nope", "unknown pass 'nope'"),
    ("quantize{bits=-1}", "bits=-1.0 must be in"),
])
def test_bad_pipelines_exit_2_before_work(mlp_file, tmp_path, pipeline, message):
    r = onnxcomp("compress", mlp_file, "-o", tmp_path / "o.onnx", "-p", pipeline)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_nothing_to_compress(tmp_path):
    proto = make_model([helper.make_node("Relu", ["x"], ["y"])], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], {})
    onnx.save(proto, tmp_path / "relu.onnx")
    r = onnxcomp("compress", tmp_path / "relu.onnx", "-o", tmp_path / "o.onnx")
    assert r.returncode == 4 and "no float weight" in r.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_tampered_compressed_file_fails_cleanly(tmp_path):
    onnx.save(tiny_cnn(), tmp_path / "cnn.onnx")
    assert onnxcomp("compress", tmp_path / "cnn.onnx", "-o", tmp_path / "c.onnx", "-p", CODED, "--quiet").returncode == 0
    model = onnx.load(tmp_path / "c.onnx")
    table = next(t for t in model.graph.initializer if t.name.endswith(".frequencies"))
    f = onnx.numpy_helper.to_array(table).copy()
    f[0] += 5
    table.CopyFrom(onnx.numpy_helper.from_array(f, table.name))
    onnx.save(model, tmp_path / "t.onnx")
    r = onnxcomp("decompress", tmp_path / "t.onnx", "-o", tmp_path / "d.onnx")
    assert r.returncode == 6 and "integrity check failed" in r.stderr  # the seal catches it first
    assert not (tmp_path / "d.onnx").exists()
    # A writer that re-seals its edit gets past the seal, not past the table check.
    (tmp_path / "t.onnx").write_bytes(serialize(model))
    r = onnxcomp("decompress", tmp_path / "t.onnx", "-o", tmp_path / "d.onnx")
    assert r.returncode == 6 and "sums to" in r.stderr and "fc.W" in r.stderr
    assert not (tmp_path / "d.onnx").exists()


def test_data_options_are_checked(mlp_file, tmp_path):
    r = onnxcomp("compress", mlp_file, "-o", tmp_path / "o.onnx", "--max-error-increase", "0.01")
    assert r.returncode == 5 and "needs --data" in r.stderr
    r = onnxcomp("compress", mlp_file, "-o", tmp_path / "o.onnx", "--data", "mnist:test")
    assert r.returncode == 5 and "never reads a test split" in r.stderr
    r = onnxcomp("compress", mlp_file, "-o", tmp_path / "o.onnx", "--data", "nosuch:thing")
    assert r.returncode == 5


def test_unlabeled_npz_data_drives_the_search(mlp_file, tmp_path):
    """No labels: the budget is on how many predictions change; GPTQ calibrates on the data."""
    x = np.random.default_rng(0).random((400, 64)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    r = onnxcomp("compress", mlp_file, "-o", out, "--data", tmp_path / "calib.npz", "--max-error-increase", "0.02",
                 "--report", report, "--quiet")
    assert r.returncode == 0, r.stderr
    rep = json.loads(report.read_text())
    assert rep["metrics"]["val_disagreement"] <= 0.02
    assert {t["name"]: t for t in rep["tensors"]}["W1"]["rounding"] == "gptq"


def test_a_run_that_fails_after_the_passes_leaves_no_output(mlp_file, tmp_path, monkeypatch):
    """The output is staged and checked first: a failure in the report or the validation metrics
    (here: an evaluation that raises) leaves neither the file nor the staging folder."""
    import onnxcomp.compile as compile_module
    from onnxcomp.errors import DataError

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.random((40, 64)).astype(np.float32), labels=rng.integers(0, 10, 40))

    def failing(*args, **kwargs):
        raise DataError("evaluation failed on purpose")

    monkeypatch.setattr(compile_module, "validation_metrics", failing)
    with pytest.raises(DataError, match="on purpose"):
        compile_module.compress(mlp_file, tmp_path / "out" / "o.onnx", data=str(tmp_path / "calib.npz"), progress=False,
                                report_path=tmp_path / "out" / "r.json")
    assert list((tmp_path / "out").iterdir()) == []
    monkeypatch.undo()
    compile_module.compress(mlp_file, tmp_path / "out" / "o.onnx", progress=False)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["o.onnx"]


def test_the_cli_never_surprises(mlp_file, tmp_path):
    # -o naming a folder: refused before any work
    r = onnxcomp("compress", mlp_file, "-o", tmp_path)
    assert r.returncode == 2 and "is a directory" in r.stderr
    # names in the wrong case, options separated by commas: the fix is in the message
    r = onnxcomp("compress", mlp_file, "-o", tmp_path / "o.onnx", "-p", "EPR")
    assert r.returncode == 2 and "did you mean the preset 'epr'" in r.stderr
    r = onnxcomp("compress", mlp_file, "-o", tmp_path / "o.onnx", "-p", "normalize,quantize{bits=3, per_channel=false},pack")
    assert r.returncode == 2 and "write quantize{bits=3 per_channel=false}" in r.stderr
    # an npz without the model's input: the keys it has are listed
    np.savez(tmp_path / "wrong.npz", foo=np.zeros((4, 64), np.float32))
    r = onnxcomp("compress", mlp_file, "-o", tmp_path / "o.onnx", "--data", tmp_path / "wrong.npz")
    assert r.returncode == 5 and "the file has ['foo']" in r.stderr
    # a pipeline without pack says so
    r = onnxcomp("compress", mlp_file, "-o", tmp_path / "o.onnx", "-p", "normalize,quantize")
    assert r.returncode == 0 and "no 'pack' pass" in r.stderr
    # every exit code is documented
    r = onnxcomp("--help")
    assert all(f"  {code:>3}  " in r.stdout for code in (0, 1, 2, 3, 4, 5, 6, 7, 70, 130))
    # integer-valued options print as integers
    assert "epochs=25 " in onnxcomp("passes").stdout


def test_a_closed_pipe_and_the_umask(mlp_file, tmp_path):
    r = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m onnxcomp passes | head -1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    for umask, mode in ((0o022, 0o644), (0o077, 0o600)):
        out = tmp_path / f"u{umask:o}.onnx"
        r = subprocess.run(["bash", "-c", f"umask {umask:03o}; {sys.executable} -m onnxcomp compress {mlp_file} -o {out} "
                           f"--report {out}.json --quiet"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert out.stat().st_mode & 0o777 == mode and Path(f"{out}.json").stat().st_mode & 0o777 == mode


def test_a_flat_npz_trains(mlp_file, tmp_path):
    """Unlabeled inputs under flat keys: training passes split them (every 5th validates)."""
    np.savez(tmp_path / "flat.npz", x=np.random.default_rng(0).random((60, 64)).astype(np.float32))
    out = tmp_path / "w.onnx"
    # a loose budget: without one, weight-fix on unlabeled data holds itself to 8-bit rounding's change
    r = onnxcomp("compress", mlp_file, "-o", out, "-p", "normalize,weight-fix{epochs=0.5},pack", "--data", tmp_path / "flat.npz",
                 "--max-error-increase", "0.9")
    assert r.returncode == 0, r.stderr
    assert "training on 48 samples, validating on 12" in r.stderr and out.exists()
