"""Run compressed files as they are: ``ai.onnxcomp`` ops for onnxruntime via onnxruntime-extensions.

    so = onnxruntime.SessionOptions()
    onnxcomp.runtime.register(so)
    sess = onnxruntime.InferenceSession("model.onnxcomp.onnx", so)

onnxruntime never constant-folds a custom op, so without help every Run would decode again. The
op keeps an LRU cache of decoded tensors keyed by the node's content (CRC of its bitstream and
table plus its attributes), so only the first Run decodes; later Runs copy the cached tensor out.
For no per-Run cost at all, decode at load (``onnxcomp.runtime.InferenceSession``).
"""

from __future__ import annotations

import threading
import zlib
from collections import OrderedDict

import numpy as np

from onnxcomp.errors import OnnxcompError

from . import format as fmt
from .ops import decode_node

CACHE_MAX_BYTES = 1 << 31

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


def _decode_cached(inputs: list[np.ndarray], attrs: dict[str, int], op_type: str = fmt.ENTROPY_DECODE) -> np.ndarray:
    global _cache_bytes
    key = (op_type, *_cache_key(inputs, attrs))
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    where = f"{fmt.DOMAIN}::{op_type} (crc32 {attrs.get('crc32', 0):#010x})"
    out = decode_node(fmt.DOMAIN, op_type, inputs, attrs, where)
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
        attrs={"format_version": PyCustomOpDef.dt_int64, "crc32": PyCustomOpDef.dt_int64},
    )
    def entropy_decode(bitstream, frequencies, offset, shape, **attrs):
        attrs = {k: int(v) for k, v in attrs.items()}
        try:
            return _decode_cached([bitstream, frequencies, offset, shape], attrs)
        except OnnxcompError as exc:
            # onnxruntime reports the message of whatever the op raises; keep it one clear line.
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from None

    # onnxruntime-extensions fixes a Python op's output type: this op serves float32 outputs;
    # float16 ones decode at load (InferenceSession, decode_model, decompress).
    @onnx_op(
        op_type=f"{fmt.DOMAIN}::{fmt.BYTE_PLANE_DECODE}",
        inputs=[PyCustomOpDef.dt_uint8, PyCustomOpDef.dt_int64, PyCustomOpDef.dt_int32, PyCustomOpDef.dt_int64],
        outputs=[PyCustomOpDef.dt_float],
        attrs={"format_version": PyCustomOpDef.dt_int64, "crc32": PyCustomOpDef.dt_int64, "to": PyCustomOpDef.dt_int64},
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
