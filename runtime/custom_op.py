"""Run compressed files as they are: ``ai.onnxcomp`` ops inside onnxruntime.

    sess = onnxcomp.runtime.CustomOpSession("model.onnxcomp.onnx")   # checked, then run as is

Two implementations of the ops: the native library (:mod:`.native`, the default where it was
built, and what non-Python hosts load) and, below, a Python op for onnxruntime-extensions, the
fallback. For the Python op on files you trust, on your own session options:

    so = onnxruntime.SessionOptions()
    onnxcomp.runtime.register(so)
    sess = onnxruntime.InferenceSession("model.onnxcomp.onnx", so)

onnxruntime never constant-folds a custom op, so without help every Run would decode again. The
op keeps an LRU cache of decoded tensors keyed by the node's content (CRC of its bitstream and
table plus its attributes), so only the first Run decodes; later Runs copy the cached tensor out.
For no per-Run cost at all, decode at load (``onnxcomp.runtime.InferenceSession``).

A Python op cannot fail gracefully: whatever it raises, onnxruntime-extensions 0.15 under
onnxruntime 1.19 ends the process (``terminate called after throwing ... error_already_set``,
exit 134; measured, and the same for a returned value of the wrong shape). So
:func:`CustomOpSession` checks and decodes every node *before* the session exists (seal, sizes,
streams, CRCs; errors are the typed ones of decode at load) and leaves the results in the cache
the op serves from: its Runs cannot meet a bad stream. ``register`` alone gives no such
guarantee: a corrupt file reaches the op at the first Run and aborts the host.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections import OrderedDict
from typing import Any

import numpy as np

from onnxcomp.errors import FormatError, ModelLoadError, OnnxcompError

from . import format as fmt
from .byteplane_decode import BytePlanePlan
from .integrity import check_budget
from .ops import planner_for

CACHE_MAX_BYTES = 1 << 31
# The attributes each op declares to onnxruntime-extensions: what the op sees, so what the cache
# key is made of.
OP_ATTRIBUTES = {fmt.ENTROPY_DECODE: ("format_version", "crc32"), fmt.BYTE_PLANE_DECODE: ("format_version", "crc32", "to")}

_lock = threading.Lock()
_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
_cache_bytes = 0
_registered = False


def _cache_key(inputs: list[np.ndarray], attrs: dict[str, int]) -> tuple:
    parts = [tuple(sorted(attrs.items()))]
    for a in inputs:
        b = np.ascontiguousarray(a)
        parts.append((b.dtype.str, b.shape, zlib.crc32(b.view(np.uint8).reshape(-1))))
    return tuple(parts)


def _decode_cached(inputs: list[np.ndarray], attrs: dict[str, int], op_type: str = fmt.ENTROPY_DECODE,
                   max_decoded_bytes: int | None = None) -> np.ndarray:
    global _cache_bytes
    key = (op_type, *_cache_key(inputs, attrs))
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    where = f"{fmt.DOMAIN}::{op_type} (crc32 {attrs.get('crc32', 0):#010x})"
    plan = planner_for(fmt.DOMAIN, op_type, attrs.get("format_version", -1), where)(inputs, attrs, where)
    itemsize = plan.dtype.itemsize if isinstance(plan, BytePlanePlan) else 4
    check_budget(plan.count * itemsize, sum(np.asarray(a).nbytes for a in inputs), max_decoded_bytes, where)
    out = plan.decode()
    out.setflags(write=False)
    with _lock:
        _cache[key] = out
        _cache_bytes += out.nbytes
        while _cache_bytes > CACHE_MAX_BYTES and len(_cache) > 1:
            _, old = _cache.popitem(last=False)
            _cache_bytes -= old.nbytes
    return out


def clear_cache() -> None:
    global _cache_bytes
    with _lock:
        _cache.clear()
        _cache_bytes = 0


def _define_ops() -> None:
    global _registered
    if _registered:
        return
    from onnxruntime_extensions import PyCustomOpDef, onnx_op

    @onnx_op(
        op_type=f"{fmt.DOMAIN}::{fmt.ENTROPY_DECODE}",
        inputs=[PyCustomOpDef.dt_uint8, PyCustomOpDef.dt_int32, PyCustomOpDef.dt_int32, PyCustomOpDef.dt_int64],
        outputs=[PyCustomOpDef.dt_int32],
        attrs={a: PyCustomOpDef.dt_int64 for a in OP_ATTRIBUTES[fmt.ENTROPY_DECODE]},
    )
    def entropy_decode(bitstream, frequencies, offset, shape, **attrs):
        attrs = {k: int(v) for k, v in attrs.items()}
        try:
            return _decode_cached([bitstream, frequencies, offset, shape], attrs)
        except OnnxcompError as exc:
            # onnxruntime-extensions ends the process on it (module doc): the message at least says why.
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from None

    # onnxruntime-extensions fixes a Python op's output type: this op serves float32 outputs;
    # float16 ones decode at load (InferenceSession, decode_model, decompress).
    @onnx_op(
        op_type=f"{fmt.DOMAIN}::{fmt.BYTE_PLANE_DECODE}",
        inputs=[PyCustomOpDef.dt_uint8, PyCustomOpDef.dt_int64, PyCustomOpDef.dt_int32, PyCustomOpDef.dt_int64],
        outputs=[PyCustomOpDef.dt_float],
        attrs={a: PyCustomOpDef.dt_int64 for a in OP_ATTRIBUTES[fmt.BYTE_PLANE_DECODE]},
    )
    def byte_plane_decode(bitstream, stream_bytes, frequencies, shape, **attrs):
        attrs = {k: int(v) for k, v in attrs.items()}
        try:
            if attrs.get("to") != 1:
                raise OnnxcompError("the custom op serves float32 BytePlaneDecode only; decode float16 at load "
                                    "(onnxcomp.runtime.InferenceSession)")
            return _decode_cached([bitstream, stream_bytes, frequencies, shape], attrs, fmt.BYTE_PLANE_DECODE)
        except OnnxcompError as exc:
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from None

    _registered = True


def register(session_options) -> None:
    """Register the ``ai.onnxcomp`` domain on an ``onnxruntime.SessionOptions``."""
    try:
        from onnxruntime_extensions import get_library_path
    except ImportError:
        raise OnnxcompError(
            "the custom-op path needs onnxruntime-extensions (pip install 'onnxcomp[deploy]'); "
            "or decode at load with onnxcomp.runtime.InferenceSession, which needs only onnxruntime"
        ) from None
    _define_ops()
    session_options.register_custom_ops_library(get_library_path())


OPS = ("auto", "native", "python")


def CustomOpSession(path_or_model: Any, sess_options: Any = None, providers: Any = None, *,
                    max_decoded_bytes: int | None = None, verify: bool = True, op: str = "auto", **kwargs: Any):
    """An ``onnxruntime.InferenceSession`` that runs the compressed file as it is (ai.onnxcomp
    nodes and all) with a custom op, after checking the file here.

    ``op="native"``: the native library (:mod:`.native`): this checks the seal and the graph (every
    size and table, nothing decoded), the library's kernels then decode each node once while the
    session is created (a bad stream fails creation with a FormatError naming the node) and serve
    every Run from their copy. ``op="python"``: onnxruntime-extensions' Python op: every node is
    checked and decoded here (a Python op that raises aborts the host, so no bad stream may reach
    it) and Runs are served from the cache this fills; a model whose decoded tensors outgrow the
    cache (CACHE_MAX_BYTES) re-decodes in Runs. ``op="auto"`` (default): native where built.

    Raises FormatError / ModelLoadError, as decode at load does, for any file that is not exactly
    what onnxcomp wrote. Takes what onnxruntime's session takes.
    """
    import onnxruntime as ort

    from . import native
    from .load import check_graph, read_model_bytes

    if op not in OPS:
        raise OnnxcompError(f"op={op!r}: choose one of {', '.join(OPS)}")
    use_native = op == "native" or (op == "auto" and native.available())
    library = native.native_library_path() if use_native else None  # raises NativeLibraryMissing
    data = read_model_bytes(path_or_model)
    checked = check_graph(data, verify=verify, max_decoded_bytes=max_decoded_bytes)
    if checked is not None and not use_native:
        for t in checked.tensors:
            for node in t.parts:
                attrs = {k: v for k, v in node.int_attrs.items() if k in OP_ATTRIBUTES[node.op_type]}
                _decode_cached(checked.node_inputs[id(node)], attrs, node.op_type, max_decoded_bytes)
    del checked
    if sess_options is None:
        sess_options = ort.SessionOptions()
    if use_native:
        sess_options.register_custom_ops_library(library)
    else:
        register(sess_options)
    model = os.fspath(path_or_model) if isinstance(path_or_model, (str, os.PathLike)) else data
    del data
    try:
        with native.decode_budget(max_decoded_bytes):
            return ort.InferenceSession(model, sess_options, providers=providers or ["CPUExecutionProvider"], **kwargs)
    except Exception as exc:  # onnxruntime's own Fail/InvalidGraph types
        text = str(exc)
        if native.ERROR_PREFIX in text:  # a kernel of the library refused its node
            raise FormatError(text[text.index(native.ERROR_PREFIX) + len(native.ERROR_PREFIX):].strip()) from None
        raise ModelLoadError(f"onnxruntime rejected the model: {text}") from None
