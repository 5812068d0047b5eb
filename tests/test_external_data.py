"""Models with external data: read on input, written above the protobuf limit, and run by the
runtime from their folder."""

from __future__ import annotations

import numpy as np
import onnx

import onnxcomp.model_io as model_io
import onnxcomp.runtime as rt
from onnxcomp.compile import compress

from .conftest import run, tiny_mlp


def test_input_with_external_data_is_read(tmp_path, mlp_input):
    src = tmp_path / "in" / "mlp.onnx"
    src.parent.mkdir()
    onnx.save(tiny_mlp(), src, save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    assert (src.parent / "w.bin").stat().st_size > 10_000
    out = tmp_path / "out.onnx"
    report = compress(src, out, progress=False)
    assert report["params"] == 64 * 48 + 48 + 10 * 48 + 10
    np.testing.assert_allclose(rt.InferenceSession(out).run(None, mlp_input)[0], run(tiny_mlp(), mlp_input)[0], atol=0.05)


def test_large_output_is_written_with_external_data(tmp_path, monkeypatch, mlp_input):
    # Pretend the protobuf limit is tiny so the external-data path runs on a small model.
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 100)
    src = tmp_path / "mlp.onnx"
    onnx.save(tiny_mlp(), src)
    out = tmp_path / "sub" / "big.onnx"
    compress(src, out, pipeline="normalize,quantize", progress=False)
    assert (out.parent / "big.onnx.data").exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers
    loaded = onnx.load(out)  # resolves the external data beside it
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.load(out, load_external_data=False).graph.initializer)
    np.testing.assert_array_equal(run(loaded, mlp_input)[0], rt.InferenceSession(out).run(None, mlp_input)[0])


def test_decompress_writes_large_outputs_as_external_data_onnxruntime_maps(tmp_path, monkeypatch, mlp_input):
    import onnxruntime as ort

    import onnxcomp.decompress as dec

    src, packed = tmp_path / "mlp.onnx", tmp_path / "mlp.ptq.onnx"
    onnx.save(tiny_mlp(), src)
    compress(src, packed, pipeline="ptq", progress=False)
    inline, external = tmp_path / "inline.onnx", tmp_path / "ext" / "external.onnx"
    dec.decompress(packed, inline)
    monkeypatch.setattr(dec, "EXTERNAL_OUTPUT_BYTES", 100)  # the documented size, made tiny
    dec.decompress(packed, external)
    assert not (tmp_path / "inline.onnx.data").exists() and (external.parent / "external.onnx.data").exists()
    assert external.stat().st_size < 2000  # the graph alone
    outputs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, mlp_input)[0]
               for p in (inline, external)]
    assert outputs[0].tobytes() == outputs[1].tobytes() == rt.InferenceSession(packed).run(None, mlp_input)[0].tobytes()


def test_decompress_refuses_an_initializer_whose_bytes_do_not_fill_its_dims(tmp_path):
    # Found by bench/fuzz.py: a float step declaring 2**57 elements over 4 bytes of data made the
    # output's external-data writer fail half-way (a raw OSError); now it is refused on reading.
    import pytest

    import onnxcomp.decompress as dec
    from onnxcomp.errors import ModelLoadError
    from onnxcomp.model_io import serialize

    src, packed = tmp_path / "mlp.onnx", tmp_path / "mlp.ptq.onnx"
    onnx.save(tiny_mlp(), src)
    compress(src, packed, pipeline="ptq", progress=False)
    model = onnx.load(packed)
    step = next(t for t in model.graph.initializer if t.name.endswith(".step"))
    step.dims[:] = [1 << 57]
    packed.write_bytes(serialize(model))  # sealed again: the checks behind the seal must hold
    out = tmp_path / "out" / "plain.onnx"
    with pytest.raises(ModelLoadError, match="cannot be read"):
        dec.decompress(packed, out)
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_external_weights_are_read_exactly_and_bad_extents_name_the_tensor(tmp_path):
    import pytest

    from onnxcomp.errors import ModelLoadError

    src = tmp_path / "mlp.onnx"
    onnx.save(tiny_mlp(), src, save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    model = model_io.load_model(src)
    for t in tiny_mlp().graph.initializer:
        np.testing.assert_array_equal(model.graph.initializers[t.name].const_value.numpy(), onnx.numpy_helper.to_array(t))
    # a length that is not the tensor's bytes, and an extent past the end of the file
    for key, value, what in (("length", "12", "needs"), ("offset", str(10**9), "needs")):
        proto = onnx.load(src, load_external_data=False)
        entry = next(e for e in proto.graph.initializer[0].external_data if e.key == key) if any(
            e.key == key for e in proto.graph.initializer[0].external_data) else proto.graph.initializer[0].external_data.add()
        entry.key, entry.value = key, value
        bad = tmp_path / f"bad-{key}.onnx"
        bad.write_bytes(proto.SerializeToString())
        with pytest.raises(ModelLoadError, match=f"{what}.*{proto.graph.initializer[0].name}|{proto.graph.initializer[0].name}.*{what}"):
            model_io.load_model(bad)
    # a location outside the model's folder
    proto = onnx.load(src, load_external_data=False)
    next(e for e in proto.graph.initializer[0].external_data if e.key == "location").value = "../w.bin"
    bad = tmp_path / "escape.onnx"
    bad.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelLoadError, match=proto.graph.initializer[0].name):
        model_io.load_model(bad)


def test_weights_mapped_from_their_file_read_the_same_after_their_pages_are_handed_back(tmp_path):
    from onnxcomp.model_io import release_pages

    src = tmp_path / "mlp.onnx"
    onnx.save(tiny_mlp(), src, save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    model = model_io.load_model(src)
    for t in tiny_mlp().graph.initializer:
        array = model.graph.initializers[t.name].const_value.numpy()
        want = onnx.numpy_helper.to_array(t)
        assert not array.flags.writeable  # a view of the file, never written through
        release_pages(array)
        np.testing.assert_array_equal(array, want)  # faulted back in from the file
    release_pages(np.ones(1000, np.float32))  # in memory: nothing to hand back, no error
