"""Encoder side of ``ai.onnxcomp::EntropyDecode``: integer coding tables and ANS encoding.

Tables are built once here, with integer arithmetic only, and stored in the file; decoders read
them and never rebuild them (the tensorflow_compression / CompressAI discipline). The decoder is
``onnxcomp.runtime.entropy_decode``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxcomp.runtime import format as fmt
from onnxcomp.runtime import native
from onnxcomp.runtime.entropy_decode import crc32_of


def quantize_counts(counts: np.ndarray, precision: int = fmt.PRECISION) -> np.ndarray:
    """Integer frequencies f >= 1 summing to 2**precision, close to ``counts`` in code length.

    Deterministic integer arithmetic (largest-remainder rounding, ties to the lower index), so the
    same counts give the same table on every machine. Needs len(counts) >= 2.
    """
    c = np.asarray(counts, dtype=np.int64)
    k = c.size
    total = 1 << precision
    if k < 2 or k > total // 2:
        raise ValueError(f"alphabet of {k} symbols does not fit a {precision}-bit table")
    n = int(c.sum())
    if n == 0:
        c = np.ones(k, np.int64)
        n = k
    spare = total - k  # every symbol gets 1 for free, the rest is shared in proportion
    scaled = c * spare  # < 2**63: counts are tensor sizes (< 2**39) times spare (< 2**24)
    f = 1 + scaled // n
    remainder = scaled % n
    left = total - int(f.sum())
    if left:
        order = np.lexsort((np.arange(k), -remainder))  # largest remainder first, then index
        f[order[:left]] += 1
    return f


@dataclass(frozen=True)
class EncodedTensor:
    """What one EntropyDecode node stores, plus the figures the report needs."""

    bitstream: np.ndarray  # uint8
    frequencies: np.ndarray  # int32
    offset: int
    shape: tuple[int, ...]
    crc32: int
    ideal_bits: float  # sum of -log2(f[s] / 2**precision) over the symbols: the table's code length
    empirical_entropy_bits: float  # n * H(histogram): the best any static table could do

    @property
    def payload_bytes(self) -> int:
        return self.bitstream.nbytes + self.frequencies.nbytes + 4 + 8 * len(self.shape)


def encode_tensor(values: np.ndarray) -> EncodedTensor:
    """ANS-code an integer tensor under a table built from its own histogram (exact, lossless)."""
    v = np.asarray(values)
    if v.dtype.kind not in "iu":
        raise TypeError(f"entropy coding needs integers, got {v.dtype}")
    lo = int(v.min()) if v.size else 0
    hi = int(v.max()) if v.size else 0
    if hi - lo + 1 > fmt.MAX_SYMBOLS:
        raise ValueError(f"value range {lo}..{hi} exceeds {fmt.MAX_SYMBOLS} symbols")
    if lo < -(2**31) or hi >= 2**31:
        raise ValueError(f"value range {lo}..{hi} does not fit EntropyDecode's int32 output")
    flat = v.reshape(-1).astype(np.int32, copy=False)
    counts = np.zeros(2, np.int64) if not flat.size else integer_histogram(flat)[1]
    if counts.size < 2:
        counts = np.concatenate([counts, np.zeros(2 - counts.size, np.int64)])
    freqs = quantize_counts(counts)
    bitstream = ans_encode((flat - np.int32(lo)).astype(np.int32, copy=False), freqs)
    nz = counts[counts > 0]
    ideal = ideal_bits(counts, freqs)
    entropy = float(-(nz * np.log2(nz / max(1, flat.size))).sum()) if flat.size else 0.0
    return EncodedTensor(
        bitstream=bitstream,
        frequencies=freqs.astype(np.int32),
        offset=lo,
        shape=tuple(int(d) for d in v.shape),
        crc32=crc32_of(flat),
        ideal_bits=ideal,
        empirical_entropy_bits=entropy,
    )


def ans_encode(symbols: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """The ANS stream (FORMAT.md section 3) of ``symbols`` (0-based int32) under table ``freqs``,
    as uint8 bytes of little-endian uint32 words."""
    import constriction

    model = constriction.stream.model.Categorical((freqs - 1).astype(np.float64), perfect=False)
    coder = constriction.stream.stack.AnsCoder()
    if symbols.size:
        coder.encode_reverse(symbols, model)
    words = coder.get_compressed().astype("<u4")
    return np.frombuffer(words.tobytes(), dtype=np.uint8).copy()


def ideal_bits(counts: np.ndarray, freqs: np.ndarray) -> float:
    """Code length of a histogram under an integer table: sum of -log2(f[s] / 2**precision)."""
    return float(-(counts * np.log2(freqs / float(1 << fmt.PRECISION))).sum())


# ONNX TensorProto data types of the floats BytePlaneDecode codes exactly.
FLOAT_CODES = {np.dtype(np.float32): 1, np.dtype(np.float16): 10}


@dataclass(frozen=True)
class EncodedFloats:
    """What one BytePlaneDecode node stores (FORMAT.md section 7), plus the report's figures."""

    bitstream: np.ndarray     # uint8: the planes' streams, plane 0 first
    stream_bytes: np.ndarray  # int64[P]
    frequencies: np.ndarray   # int32[P, 256]
    shape: tuple[int, ...]
    to: int                   # TensorProto data type of the output
    crc32: int
    ideal_bits: float

    @property
    def payload_bytes(self) -> int:
        return self.bitstream.nbytes + self.stream_bytes.nbytes + self.frequencies.nbytes + 8 * len(self.shape)


def encode_floats(values: np.ndarray) -> EncodedFloats:
    """Code a float32/float16 tensor exactly: one ANS stream per byte plane of its rotated bits."""
    from onnxcomp.runtime.byteplane_decode import byte_planes, crc32_of_bytes

    v = np.asarray(values)
    if v.dtype not in FLOAT_CODES:
        raise TypeError(f"exact float coding takes float32 or float16, got {v.dtype}")
    streams, sizes, tables, ideal = [], [], [], 0.0
    for plane in byte_planes(v):
        counts = np.bincount(plane, minlength=fmt.PLANE_SYMBOLS)
        freqs = quantize_counts(counts)
        stream = ans_encode(plane.astype(np.int32), freqs)
        streams.append(stream)
        sizes.append(stream.size)
        tables.append(freqs.astype(np.int32))
        ideal += ideal_bits(counts, freqs)
    return EncodedFloats(np.concatenate(streams), np.array(sizes, np.int64), np.stack(tables),
                         tuple(int(d) for d in v.shape), FLOAT_CODES[v.dtype], crc32_of_bytes(v), ideal)


def narrowest_int_dtype(lo: int, hi: int) -> np.dtype:
    """The smallest signed integer dtype that holds lo..hi (for tensors stored raw, not coded)."""
    for dt in (np.int8, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    return np.dtype(np.int64)


HISTOGRAM_MAX_BINS = 1 << 24  # integer ranges up to this are counted by bins, wider ones by sorting


def integer_histogram(values: np.ndarray) -> tuple[int, np.ndarray] | None:
    """(lo, counts) with counts[b] = how many ``values`` equal lo + b, in one pass (the native
    library for int32, numpy's bincount otherwise); None for floats, empty arrays and ranges over
    HISTOGRAM_MAX_BINS (callers sort instead)."""
    v = np.asarray(values).reshape(-1)
    if v.size == 0 or v.dtype.kind not in "iu":
        return None
    lo, hi = int(v.min()), int(v.max())
    if hi - lo + 1 > HISTOGRAM_MAX_BINS:
        return None
    counts = native.histogram_int32(v, lo, hi - lo + 1) if v.dtype == np.int32 else None
    if counts is None:
        counts = np.bincount((v.astype(np.int64) - lo), minlength=hi - lo + 1)
    return lo, counts


def entropy_bits(values: np.ndarray) -> float:
    """Shannon entropy of the value histogram, in bits per element."""
    v = np.asarray(values).reshape(-1)
    if v.size == 0:
        return 0.0
    hist = integer_histogram(v)
    counts = hist[1][hist[1] > 0] if hist is not None else np.unique(v, return_counts=True)[1]
    p = counts / v.size
    return float(-(p * np.log2(p)).sum())


def value_stats(values: np.ndarray) -> tuple[int, float]:
    """(distinct values, entropy in bits per value) of a tensor: by histogram for integers."""
    hist = integer_histogram(values)
    unique = int(np.count_nonzero(hist[1])) if hist is not None else int(np.unique(values).size)
    return unique, entropy_bits(values)


def coded_bits_estimate(values: np.ndarray) -> float:
    """What ``pack`` will spend on an integer tensor, in bits, without coding it: the histogram's
    entropy plus the int32 table over the value range, or the narrowest raw type where that is
    smaller (tiny tensors, fine steps). Searches compare steps by it: entropy alone makes a
    small tensor at 10 bits look nearly free, and its 1,000-entry table is not."""
    v = np.asarray(values).reshape(-1)
    if v.size == 0:
        return 0.0
    lo, hi = int(v.min()), int(v.max())
    coded = v.size * entropy_bits(v) + 32.0 * (hi - lo + 1)
    return min(coded, 8.0 * v.size * narrowest_int_dtype(lo, hi).itemsize)

