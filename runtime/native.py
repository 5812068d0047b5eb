"""The native ``ai.onnxcomp`` library (runtime/csrc/, built by the package's own build).

One shared library serves two callers:

- any onnxruntime host, as a custom-op library: ``EntropyDecode`` and ``BytePlaneDecode`` decoded
  once per session (when the session is created) and served to every Run from the kernel's copy::

      so = onnxruntime.SessionOptions()
      so.register_custom_ops_library(onnxcomp.runtime.native_library_path())
      sess = onnxruntime.InferenceSession("model.onnxcomp.onnx", so)

  (``onnxcomp.runtime.CustomOpSession(path, op="native")`` does this after checking the file's
  seal and graph: a kernel sees its node's inputs only, never the file, so the seal is the
  loader's to check);
- onnxcomp's own decode at load, through ctypes (:func:`entropy_decode_batch`,
  :func:`entropy_decode_into`, :func:`byte_plane_decode_into`): a foreign call releases the GIL,
  so streams decode on every core in threads, with no fork;
- the compressor's per-tensor arithmetic (:func:`quantize_nearest`, :func:`histogram_int32`),
  bit for bit numpy's, in threads the same way.

Where the library is missing (no compiler when the package was built) or disabled
(``ONNXCOMP_NATIVE=0``), the Python decoders (constriction) serve decode at load and
:func:`native_library_path` raises :class:`NativeLibraryMissing` naming what to do.
``ONNXCOMP_NATIVE_LIBRARY=/path/libonnxcomp_ops.so`` points at a library built elsewhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from pathlib import Path

import numpy as np

from onnxcomp.errors import FormatError, OnnxcompError

from .integrity import MAX_DECODED_BYTES_ENV

LIBRARY_ENV = "ONNXCOMP_NATIVE_LIBRARY"
BUDGET_ENV = MAX_DECODED_BYTES_ENV  # the decode budget's variable, which the kernels read too
DISABLE_ENV = "ONNXCOMP_NATIVE"  # "0": decode at load uses the Python decoders
ABI_VERSION = 3  # of the C entry points (runtime/csrc/exports.cc: onnxcomp_native_abi_version)
_NAME = {"win32": "libonnxcomp_ops.dll", "darwin": "libonnxcomp_ops.dylib"}.get(sys.platform, "libonnxcomp_ops.so")
_ERROR_SIZE = 1024
ERROR_PREFIX = "onnxcomp: "  # how the library's kernels start a refusal (runtime/csrc/ops.cc)
# TensorProto data types the C decoder writes.
OUT_TYPES = {np.dtype(np.float32): 1, np.dtype(np.int8): 3, np.dtype(np.int16): 5, np.dtype(np.int32): 6}
INTEGER_TYPES = (np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int32))


class NativeLibraryMissing(OnnxcompError):
    """The native op library was not built or cannot be loaded."""


def native_library_path() -> str:
    """Path of the native op library, for ``SessionOptions.register_custom_ops_library``."""
    env = os.environ.get(LIBRARY_ENV, "").strip()
    path = Path(env) if env else Path(__file__).with_name(_NAME)
    if not path.is_file():
        where = f"{LIBRARY_ENV}={env}" if env else str(path)
        raise NativeLibraryMissing(
            f"the native ai.onnxcomp library is not built ({where} does not exist): reinstall onnxcomp "
            f"where a C++ compiler is present (pip install -e . builds it), or use the Python paths "
            f"(onnxcomp.runtime.InferenceSession, CustomOpSession)")
    return str(path)


_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def library() -> ctypes.CDLL | None:
    """The loaded library, or None when it is missing or disabled (then Python decodes)."""
    global _lib, _tried
    if os.environ.get(DISABLE_ENV, "").strip() == "0":
        return None
    with _lock:
        if not _tried:
            _tried = True
            try:
                _lib = _load(native_library_path())
            except NativeLibraryMissing:
                _lib = None
        return _lib


def _load(path: str) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(path)
    except OSError as exc:
        raise NativeLibraryMissing(f"{path}: cannot be loaded ({exc})") from None
    if lib.onnxcomp_native_abi_version() != ABI_VERSION:
        raise NativeLibraryMissing(f"{path}: C interface version {lib.onnxcomp_native_abi_version()}, this "
                                   f"onnxcomp needs {ABI_VERSION}: rebuild it (pip install -e .)")
    p, u64, i32, u32 = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int32, ctypes.c_uint32
    lib.onnxcomp_byte_plane_decode.argtypes = [p, u64, p, p, i32, u64, u32, p, ctypes.c_char_p, u64]
    lib.onnxcomp_byte_plane_decode.restype = ctypes.c_int
    lib.onnxcomp_native_kernel_decodes.restype = ctypes.c_uint64
    lib.onnxcomp_entropy_decode_batch.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
    lib.onnxcomp_entropy_decode_batch.restype = ctypes.c_uint64
    lib.onnxcomp_quantize_nearest.argtypes = [p, u64, p, u64, u64, p, p, p]
    lib.onnxcomp_quantize_nearest.restype = None
    lib.onnxcomp_histogram_int32.argtypes = [p, u64, i32, u64, p]
    lib.onnxcomp_histogram_int32.restype = None
    return lib


class _DecodeJob(ctypes.Structure):
    """runtime/csrc/exports.cc: DecodeJob."""

    _fields_ = [("bitstream", ctypes.c_void_p), ("num_bytes", ctypes.c_uint64), ("frequencies", ctypes.c_void_p),
                ("num_symbols", ctypes.c_uint64), ("offset", ctypes.c_int32), ("crc32", ctypes.c_uint32),
                ("count", ctypes.c_uint64), ("out", ctypes.c_void_p), ("out_type", ctypes.c_int32),
                ("step", ctypes.c_void_p), ("step_count", ctypes.c_uint64), ("step_stride", ctypes.c_uint64),
                ("status", ctypes.c_int32), ("error", ctypes.c_char * 256)]


def entropy_decode_batch(jobs: list[tuple]) -> list[FormatError | None]:
    """Decode ``(plan, flat, step, step_stride)`` jobs (as :func:`entropy_decode_into` takes them,
    step None for integers) in one call that interleaves four streams at a time. Returns, per
    job, None or the FormatError that refused it (the other jobs still ran)."""
    lib = library()
    assert lib is not None
    keep, table = [], (_DecodeJob * len(jobs))()
    for c, (plan, flat, step, stride) in zip(table, jobs):
        assert flat.flags.c_contiguous and flat.size == plan.count
        words = np.ascontiguousarray(plan.words, dtype="<u4")
        freqs = np.ascontiguousarray(plan.frequencies, dtype=np.int32)
        steps = None if step is None else np.ascontiguousarray(step, dtype=np.float32).reshape(-1)
        keep += [words, freqs, steps]
        c.bitstream, c.num_bytes, c.frequencies, c.num_symbols = words.ctypes.data, words.nbytes, freqs.ctypes.data, freqs.size
        c.offset, c.crc32, c.count = plan.offset, plan.crc32 if plan.crc32 is not None else 0, plan.count
        c.out, c.out_type = flat.ctypes.data, OUT_TYPES[flat.dtype]
        c.step, c.step_count, c.step_stride = (None, 0, 0) if steps is None else (steps.ctypes.data, steps.size, stride)
    lib.onnxcomp_entropy_decode_batch(ctypes.addressof(table), len(jobs))
    return [FormatError(f"{j[0].where}: {c.error.decode(errors='replace')}") if c.status else None
            for j, c in zip(jobs, table)]


def kernel_decodes() -> int:
    """How many nodes the library's onnxruntime kernels have decoded in this process."""
    lib = library()
    return 0 if lib is None else int(lib.onnxcomp_native_kernel_decodes())


def available() -> bool:
    return library() is not None


@contextlib.contextmanager
def decode_budget(max_decoded_bytes: int | None):
    """The library's kernels read the decode budget from the environment (a kernel sees no Python
    argument): set it while a session is created, when the caller raised it."""
    if max_decoded_bytes is None:
        yield
        return
    with _lock:
        before = os.environ.get(BUDGET_ENV)
        os.environ[BUDGET_ENV] = str(int(max_decoded_bytes))
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(BUDGET_ENV, None)
            else:
                os.environ[BUDGET_ENV] = before


def entropy_decode_into(plan, flat: np.ndarray, step: np.ndarray | None = None, step_stride: int = 0) -> None:
    """Decode a checked :class:`~.entropy_decode.DecodePlan` into the C-contiguous 1-D ``flat``
    (int8/int16/int32; or float32 times ``step``: one float32 step, or ``step.size`` steps along
    one axis, element i taking step[(i // step_stride) % step.size], see :func:`step_layout`).
    Raises FormatError naming the plan's node on a bad stream."""
    (error,) = entropy_decode_batch([(plan, flat, step, step_stride)])
    if error is not None:
        raise error


def step_layout(step: np.ndarray, shape: tuple[int, ...]) -> int | None:
    """The stride for :func:`entropy_decode_into` of a step broadcasting against ``shape``: 1 for a
    scalar step; for a step that varies along exactly one axis k (its full length), the elements
    per step, prod(shape[k+1:]); None for any other layout (the caller multiplies in numpy)."""
    if step.size == 1:
        return 1
    if step.ndim > len(shape):
        return None
    dims = (1,) * (len(shape) - step.ndim) + tuple(step.shape)
    varying = [k for k, d in enumerate(dims) if d != 1]
    if len(varying) != 1 or dims[varying[0]] != shape[varying[0]]:
        return None
    k = varying[0]
    return int(np.prod(shape[k + 1:], dtype=np.int64)) if k + 1 < len(shape) else 1


def byte_plane_decode_into(plan, flat: np.ndarray) -> None:
    """Decode a checked :class:`~.byteplane_decode.BytePlanePlan` into ``flat`` (its dtype)."""
    lib = library()
    assert lib is not None and flat.flags.c_contiguous and flat.size == plan.count
    stream = np.ascontiguousarray(np.concatenate([p.words for p in plan.planes]), dtype="<u4") if plan.planes else \
        np.zeros(0, "<u4")
    sizes = np.array([p.words.nbytes for p in plan.planes], np.int64)
    tables = np.ascontiguousarray(np.stack([p.frequencies for p in plan.planes]), dtype=np.int32)
    err = ctypes.create_string_buffer(_ERROR_SIZE)
    rc = lib.onnxcomp_byte_plane_decode(stream.ctypes.data, stream.nbytes, sizes.ctypes.data, tables.ctypes.data,
                                        len(plan.planes), plan.count, plan.crc32, flat.ctypes.data, err, _ERROR_SIZE)
    if rc:
        raise FormatError(f"{plan.where}: {err.value.decode(errors='replace')}")


# ---- compress-side kernels (runtime/csrc/quantize.cc): the compressor's per-tensor arithmetic ----

def quantize_nearest(w: np.ndarray, step: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int] | None:
    """(k int32, k * step float32, k.min(), k.max()) of float32 ``w`` on ``step``'s grid (plain
    rounding), bit for bit what ``passes.quantize.step_rule.quantize_array`` computes; None when
    the library is missing or the step's layout is not one the kernel tiles (the caller uses numpy)."""
    lib = library()
    if lib is None or w.dtype != np.float32 or step.dtype != np.float32:
        return None
    stride = step_layout(step, w.shape)
    if stride is None:
        return None
    flat = np.ascontiguousarray(w).reshape(-1)
    steps = np.ascontiguousarray(step).reshape(-1)
    k = np.empty(w.shape, np.int32)
    deq = np.empty(w.shape, np.float32)
    lo_hi = np.zeros(2, np.int32)
    lib.onnxcomp_quantize_nearest(flat.ctypes.data, flat.size, steps.ctypes.data, steps.size, stride,
                                  k.ctypes.data, deq.ctypes.data, lo_hi.ctypes.data)
    return k, deq, int(lo_hi[0]), int(lo_hi[1])


def histogram_int32(values: np.ndarray, lo: int, bins: int) -> np.ndarray | None:
    """counts[b] = how many ``values`` (int32) equal lo + b, b < bins; None without the library."""
    lib = library()
    if lib is None or values.dtype != np.int32:
        return None
    flat = np.ascontiguousarray(values).reshape(-1)
    counts = np.empty(bins, np.uint64)
    lib.onnxcomp_histogram_int32(flat.ctypes.data, flat.size, lo, bins, counts.ctypes.data)
    return counts.astype(np.int64)
