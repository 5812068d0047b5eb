"""Reading, writing and verifying models: the edges where files become IR and back.

Loading turns every way a file can be bad into a ModelLoadError that names the file. Saving is
atomic (temporary file in the destination folder, then rename), so an interrupted or failed run
never leaves a partial output (:class:`StagedModel` goes further: the file can be checked before
it is moved into place); models whose tensors exceed protobuf's 2 GB limit are written
with external data beside the file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir

from onnxcomp.errors import ModelError, ModelLoadError
from onnxcomp.graph.schemas import register_schemas
from onnxcomp.runtime import format as fmt
from onnxcomp.runtime.integrity import SEAL_KEY, seal
from onnxcomp.runtime.load import write_atomic as write_bytes_atomic  # noqa: F401 - shared

PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # leave room for the graph itself under the 2 GB limit


def load_proto(path: str | os.PathLike) -> onnx.ModelProto:
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
    try:
        onnx.load_external_data_for_model(proto, str(p.parent))
    except Exception as exc:
        raise ModelLoadError(f"{p}: cannot read its external data ({exc})") from None
    return proto


def load_model(path: str | os.PathLike) -> ir.Model:
    """Load a model (and its external data, into memory) as onnx-ir."""
    proto = load_proto(path)
    try:
        return ir.serde.deserialize_model(proto)
    except Exception as exc:
        raise ModelLoadError(f"{path}: ONNX file could not be read into the IR ({exc})") from None


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
