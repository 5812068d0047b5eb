"""A slice of the real-model corpus (bench/corpus): third-party files through every path.

Each model prepared by ``bench/corpus/setup.sh`` (CI prepares ``SLICE`` with ``CORPUS_ONLY``) is
compressed with the default (``ptq``) and ``lossless``; on its own evaluation inputs the
compressed file must run through decode at load, ``decompress`` must give valid standard ONNX
whose outputs equal decode at load bit for bit, and lossless must equal the original bit for bit.
Together the slice holds the graph forms the corpus found: If bodies with their weights in
Constant nodes and a 0-d int64 input (silero-vad), int32 byte inputs read through a one-hot
table (magika), an already-int8 QDQ graph with 0-d scales (smart-turn-v3).
A model that is not prepared is skipped, naming the command that prepares it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxcomp.runtime as rt
from onnxcomp.compile import compress
from onnxcomp.decompress import decompress

CORPUS = Path(__file__).resolve().parents[1] / "bench" / "out" / "corpus"
SLICE = ("silero-vad", "magika", "smart-turn-v3")
SAMPLES = 3


def prepared(name: str) -> Path:
    folder = CORPUS / name
    if not (folder / "model.onnx").is_file() or not (folder / "eval.npz").is_file():
        pytest.skip(f"corpus model {name} not prepared: CORPUS_ONLY={name} bash bench/corpus/setup.sh")
    return folder


def samples(folder: Path) -> list[dict[str, np.ndarray]]:
    """The first SAMPLES evaluation inputs as feeds, per meta.json's layout."""
    layout = json.loads((folder / "meta.json").read_text()).get("layout", "batch")
    with np.load(folder / "eval.npz") as z:
        arrays = {k: z[k] for k in z.files}
    if layout == "stacked":  # a sample axis in front of the model's own shapes
        return [{k: np.asarray(v[i]) for k, v in arrays.items()} for i in range(SAMPLES)]
    return [{k: v[i : i + 1] for k, v in arrays.items()} for i in range(SAMPLES)]


def run_all(session: ort.InferenceSession, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    return [session.run(None, f) for f in feeds]


def plain(path_or_bytes) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes), so,
                                providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", SLICE)
def test_corpus_model_through_default_and_lossless(name, tmp_path):
    folder = prepared(name)
    src = folder / "model.onnx"
    feeds = samples(folder)
    reference = run_all(plain(src), feeds)
    for preset in ("ptq", "lossless"):
        out = tmp_path / f"{preset}.onnx"
        report = compress(src, out, preset, progress=False)
        assert out.stat().st_size < src.stat().st_size, (preset, report["file_bytes"])
        loaded = run_all(rt.InferenceSession(str(out)), feeds)
        flat = tmp_path / f"{preset}.plain.onnx"
        decompress(out, flat)
        onnx.checker.check_model(onnx.load(flat))
        for got, want in zip(run_all(plain(flat), feeds), loaded):
            for g, w in zip(got, want):
                assert g.dtype == w.dtype and g.shape == w.shape
                np.testing.assert_array_equal(g, w)
        for got, want in zip(loaded, reference):
            for g, w in zip(got, want):
                assert g.shape == w.shape and g.dtype == w.dtype
                if preset == "lossless":
                    np.testing.assert_array_equal(g, w)
                elif np.issubdtype(w.dtype, np.floating):
                    assert np.all(np.isfinite(g))
