"""Reading, writing and verifying models: the edges where files become IR and back.

Loading turns every way a file can be bad into a ModelLoadError that names the file. Saving is
atomic (temporary file in the destination folder, then rename), so an interrupted or failed run
never leaves a partial output (:class:`StagedModel` goes further: the file can be checked before
it is moved into place); models whose tensors exceed protobuf's 2 GB limit are written
with external data beside the file.
"""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from onnxcomp.errors import ModelError, ModelLoadError
from onnxcomp.graph.schemas import register_schemas
from onnxcomp.runtime import format as fmt
from onnxcomp.runtime.integrity import SEAL_KEY, seal
from onnxcomp.runtime.load import write_atomic as write_bytes_atomic  # noqa: F401 - shared

PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # leave room for the graph itself under the 2 GB limit


def load_proto(path: str | os.PathLike, external_data: bool = True) -> onnx.ModelProto:
    """The file as a ModelProto, its external data read in (``external_data``) or left referenced."""
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"{p}: no such file")
    if not p.is_file():
        raise ModelLoadError(f"{p}: not a file")
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends carry no useful type
        raise ModelLoadError(f"{p}: not a valid ONNX file (truncated or not ONNX: {type(exc).__name__})") from None
    if not proto.HasField("graph") or proto.ir_version == 0:
        raise ModelLoadError(f"{p}: not a valid ONNX model (no graph or IR version)")
    if external_data:
        _load_external_data(proto, p)
    return proto


def _load_external_data(proto: onnx.ModelProto, path: Path) -> None:
    try:
        onnx.load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot read its external data ({exc})") from None


def load_model(path: str | os.PathLike) -> ir.Model:
    """Load a model as onnx-ir: inline tensors copied out of protobuf once, external data mapped."""
    proto = load_proto(path, external_data=False)
    weights = _read_external_weights(proto, Path(path))
    _load_external_data(proto, Path(path))  # what is left: subgraph tensors, types numpy lacks
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:
        raise ModelLoadError(f"{path}: ONNX file could not be read into the IR ({exc})") from None
    for name, array in weights.items():
        if (value := model.graph.initializers.get(name)) is not None:
            value.const_value = ir.Tensor(array, dtype=value.const_value.dtype, name=name)
    _own_weight_bytes(proto, model)
    return model


def _read_external_weights(proto: onnx.ModelProto, path: Path) -> dict[str, np.ndarray]:
    """The main graph's external-data initializers of plain numpy types, as read-only views of
    their files mapped into memory (nothing is read until used, and what was used can be handed
    back: ``release_pages``); their protos are left empty. The extents are checked here, so a
    short or misplaced file is a ModelLoadError naming the tensor, never a fault on first use
    (a file truncated by another process *while* it is mapped is beyond what a reader can check)."""
    from onnx.external_data_helper import ExternalDataInfo, c_checker

    arrays: dict[str, np.ndarray] = {}
    files: dict[str, mmap.mmap] = {}
    for t in proto.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL or t.data_type not in DIRECT_TYPES:
            continue
        info = ExternalDataInfo(t)
        try:
            location = c_checker._resolve_external_data_location(str(path.parent), info.location, t.name)
            size = os.path.getsize(location)
        except Exception as exc:  # a path outside the model's folder, a missing file
            raise ModelLoadError(f"{path}: cannot read the external data of tensor {t.name!r} ({exc})") from None
        dtype = np.dtype(DIRECT_TYPES[t.data_type]).newbyteorder("<")
        count = int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1
        nbytes, offset = count * dtype.itemsize, int(info.offset or 0)
        if (info.length and info.length != nbytes) or offset + nbytes > size:
            raise ModelLoadError(f"{path}: tensor {t.name!r} needs {nbytes} bytes of external data at offset "
                                 f"{offset} of {info.location} ({size} bytes; length {info.length or 'unset'})")
        if count == 0:
            arrays[t.name] = np.zeros(tuple(t.dims), dtype)
        else:
            if location not in files:
                with open(location, "rb") as f:
                    files[location] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            arrays[t.name] = np.frombuffer(files[location], dtype=dtype, count=count, offset=offset).reshape(tuple(t.dims))
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT
    return arrays


def release_pages(array: np.ndarray) -> None:
    """Hand the resident pages of a weight mapped from its external-data file back to the OS
    (MADV_DONTNEED): they stop counting in this process's memory and are read again from the
    page cache when next touched. A no-op for arrays held in memory.

    A compress touches each weight a few times (its scale, the candidate steps, the final
    latents), never all at once, so with this its peak holds the weights' candidates but not
    the weights themselves as well (issue 13: compress within 1.5x of the float weights)."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    mapped = base.obj if isinstance(base, memoryview) else None
    if not isinstance(mapped, mmap.mmap) or mapped.closed or array.nbytes == 0:
        return
    start_of_map = np.frombuffer(mapped, np.uint8, count=1).ctypes.data
    start = array.ctypes.data - start_of_map
    first = start - start % mmap.PAGESIZE
    end = min(start + array.nbytes, len(mapped))
    # whole pages only: a page shared with a neighbour is dropped too, which costs it a re-read
    mapped.madvise(mmap.MADV_DONTNEED, first, end - first)


# TensorProto data types read from external data straight into numpy.
DIRECT_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
                onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.INT8: np.int8, onnx.TensorProto.UINT8: np.uint8,
                onnx.TensorProto.INT16: np.int16, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT64: np.int64}


def _own_weight_bytes(proto: onnx.ModelProto, model: ir.Model) -> None:
    """Give every main-graph initializer held as raw bytes its own array, tensor by tensor,
    dropping the proto's copy as it goes: the IR's proto-backed tensors copy their bytes out of
    protobuf on *every* ``numpy()`` (six times per weight in a compress, seconds at 250M
    parameters), and holding both would double the model in memory."""
    for t in proto.graph.initializer:
        value = model.graph.initializers.get(t.name)
        if value is None or not t.HasField("raw_data") or t.data_location == onnx.TensorProto.EXTERNAL:
            continue
        tensor = value.const_value
        if not isinstance(tensor, ir.serde.TensorProtoTensor) or tensor.dtype.bitwidth < 8:
            continue
        array = tensor.numpy()  # one copy of the bytes, owned by the array
        value.const_value = ir.Tensor(array, dtype=tensor.dtype, name=t.name, doc_string=tensor.doc_string or None)
        t.ClearField("raw_data")


def to_proto(model: ir.Model) -> onnx.ModelProto:
    return ir.serde.serialize_model(model)


def tensor_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def serialize(model: ir.Model | onnx.ModelProto) -> bytes:
    """The file's bytes; a model using the ai.onnxcomp domain ends with its seal (FORMAT.md
    section 8), the SHA-256 of every byte before it, which every decoder checks first."""
    proto = model if isinstance(model, onnx.ModelProto) else to_proto(model)
    if any(p.key == SEAL_KEY for p in proto.metadata_props):  # a compressed model read back: seal anew
        kept = [p for p in proto.metadata_props if p.key != SEAL_KEY]
        proto = onnx.ModelProto.FromString(proto.SerializeToString()) if proto is model else proto
        del proto.metadata_props[:]
        proto.metadata_props.extend(kept)
    data = proto.SerializeToString()
    return seal(data) if uses_custom_domain(proto) else data


def uses_custom_domain(proto: onnx.ModelProto) -> bool:
    return any(o.domain == fmt.DOMAIN for o in proto.opset_import)


def save_model(model: ir.Model, path: str | os.PathLike, external_data: bool = False) -> int:
    """Write atomically; returns the file size. External data (``<path>.data``) when asked or
    above the protobuf limit."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if external_data or tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD:
        return _save_with_external_data(model, dest)
    data = serialize(model)
    write_bytes_atomic(dest, data)
    return len(data)


class StagedModel:
    """A model written beside its destination under its final file name, inside a hidden
    temporary folder, so it can be opened and checked (external data included) before
    :meth:`commit` moves it into place; :meth:`discard` (or leaving the ``with`` block by an
    error) removes it, so a failed run leaves no output behind."""

    def __init__(self, model: ir.Model, path: str | os.PathLike) -> None:
        self.dest = Path(path)
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self._dir = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.", dir=self.dest.parent))
        self.path = self._dir / self.dest.name
        try:
            self.size = save_model(model, self.path)
        except BaseException:
            self.discard()
            raise

    def commit(self) -> None:
        for staged in sorted(self._dir.iterdir(), key=lambda f: f.name == self.dest.name):  # the model last
            os.replace(staged, self.dest.parent / staged.name)
        self._dir.rmdir()

    def discard(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> StagedModel:
        return self

    def __exit__(self, exc_type, *rest) -> None:
        if exc_type is not None:
            self.discard()


def _save_with_external_data(model: ir.Model, dest: Path) -> int:
    data_name = dest.name + ".data"
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent) as tmpdir:
        tmp_model = Path(tmpdir) / dest.name
        ir.save(model, tmp_model, external_data=data_name)
        if fmt.DOMAIN in model.opset_imports:  # the seal covers the .onnx file (not its external data)
            model.metadata_props.pop(SEAL_KEY, None)
            tmp_model.write_bytes(seal(tmp_model.read_bytes()))
        os.replace(Path(tmpdir) / data_name, dest.parent / data_name)
        os.replace(tmp_model, dest)
    return dest.stat().st_size


# Above this many bytes of tensors the checker sees the graph without its weights' bytes: the
# checked proto would otherwise be two more copies of the model (serialized, then the checker's
# own), 2 GiB more peak per GiB of weights; it checks the graph, not the bytes.
VERIFY_WITH_DATA_MAX_BYTES = 64 << 20
_UNCHECKED_DATA = "onnxcomp-weights-not-checked.bin"


def verify(model: ir.Model, after: str) -> None:
    """Structural check of the model (onnx.checker), naming the pass that produced it."""
    register_schemas()
    try:
        if tensor_bytes(model) <= VERIFY_WITH_DATA_MAX_BYTES:
            onnx.checker.check_model(to_proto(model))
        else:
            _check_without_weight_bytes(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"model is invalid after {after}: {first}") from None


def proto_without_bytes(model: ir.Model, names: set[str] | None = None, location: str = "") -> onnx.ModelProto:
    """The model's proto with the named initializers (every one: None) serialized as external-data
    references to ``location`` instead of their bytes: a graph to build or check without one more
    copy of the weights. The model itself is left as it was."""
    values = [v for v in model.graph.initializers.values()
              if v.const_value is not None and (names is None or v.name in names)]
    kept = [v.const_value for v in values]
    try:
        for v, t in zip(values, kept):
            v.const_value = ir.ExternalTensor(location, 0, t.nbytes, t.dtype, shape=t.shape, name=t.name)
        return to_proto(model)
    finally:
        for v, t in zip(values, kept):
            v.const_value = t


def _check_without_weight_bytes(model: ir.Model) -> None:
    """onnx.checker on the model with every initializer an external-data reference to an empty
    placeholder file (the checker wants the file to exist, not to hold the bytes)."""
    proto = proto_without_bytes(model, location=_UNCHECKED_DATA)
    with tempfile.TemporaryDirectory(prefix="onnxcomp-check-") as tmp:
        Path(tmp, _UNCHECKED_DATA).touch()
        path = Path(tmp, "model.onnx")
        path.write_bytes(proto.SerializeToString())
        onnx.checker.check_model(str(path))
