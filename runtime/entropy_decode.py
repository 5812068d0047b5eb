"""Decoder of ``ai.onnxcomp::EntropyDecode`` (FORMAT.md), shared by load-time decoding and the
onnxruntime custom op.

A decoder never trusts sizes in a file: before allocating it checks the table, the declared
shape against the ceilings in :mod:`.format` and against how many symbols the bitstream can
possibly hold; after decoding it checks that the ANS stream ended exactly where it began (all
words consumed, state back to zero) and that the CRC-32 of the values matches the node's.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from onnxcomp.errors import FormatError

from . import format as fmt


def validate_table(frequencies: np.ndarray, where: str) -> np.ndarray:
    """Return the table as int64 after checking it against FORMAT.md, or raise FormatError."""
    f = np.asarray(frequencies)
    if f.ndim != 1 or f.dtype != np.int32:
        raise FormatError(f"{where}: frequencies must be a 1-D int32 tensor, got {f.dtype}{list(f.shape)}")
    if not 2 <= f.size <= fmt.MAX_SYMBOLS:
        raise FormatError(f"{where}: frequency table has {f.size} entries, need 2..{fmt.MAX_SYMBOLS}")
    f = f.astype(np.int64)
    if f.min() < 1:
        raise FormatError(f"{where}: frequency table has an entry < 1 (at index {int(f.argmin())})")
    total = int(f.sum())
    if total != 1 << fmt.PRECISION:
        raise FormatError(f"{where}: frequency table sums to {total}, must be exactly 2**{fmt.PRECISION}")
    return f


def validate_shape(shape: np.ndarray, where: str) -> tuple[int, ...]:
    s = np.asarray(shape)
    if s.ndim != 1 or s.dtype != np.int64 or s.size > fmt.MAX_RANK:
        raise FormatError(f"{where}: shape must be a 1-D int64 tensor of rank <= {fmt.MAX_RANK}")
    dims = tuple(int(d) for d in s)
    if any(d < 0 for d in dims):
        raise FormatError(f"{where}: negative dimension in declared shape {list(dims)}")
    if math.prod(dims) > fmt.MAX_ELEMENTS:
        raise FormatError(f"{where}: declared shape {list(dims)} exceeds {fmt.MAX_ELEMENTS} elements")
    return dims


def max_symbols_in(num_bits: int, frequencies: np.ndarray) -> float:
    """Upper bound on how many symbols ``num_bits`` of ANS stream can encode under a table.

    Every symbol costs at least -log2(max f / 2**PRECISION) bits; the 64-bit final state adds
    at most 64 bits of slack. A degenerate table (one symbol with all mass but the minimum for
    the others) makes the bound large, which is right: such a tensor really is almost free.
    """
    min_bits = fmt.PRECISION - math.log2(int(frequencies.max()))
    if min_bits <= 0:
        return math.inf
    return (num_bits + fmt.STATE_BITS) / min_bits


def decode_symbols(words: np.ndarray, frequencies: np.ndarray, count: int, where: str) -> np.ndarray:
    """Decode ``count`` symbols (int32, 0..K-1) with constriction's ANS; check the stream ends."""
    import constriction  # imported here so a failing import names the missing package late

    model = constriction.stream.model.Categorical((frequencies - 1).astype(np.float64), perfect=False)
    # The quantized CDF constriction derives from (f - 1) with perfect=False is exactly cumsum(f);
    # the tests check this against the pure-Python reference decoder on random tables.
    coder = constriction.stream.stack.AnsCoder(words)
    try:
        symbols = coder.decode(model, count) if count else np.zeros(0, np.int32)
    except Exception as exc:  # constriction raises ValueError/AssertionError on corrupt streams
        raise FormatError(f"{where}: corrupt bitstream ({exc})") from None
    if not coder.is_empty():
        raise FormatError(f"{where}: bitstream has data left after {count} symbols (truncated table, shape or stream)")
    return symbols


def entropy_decode(
    bitstream: np.ndarray,
    frequencies: np.ndarray,
    offset: np.ndarray | int,
    shape: np.ndarray,
    *,
    crc32: int,
    format_version: int = fmt.ENTROPY_DECODE_VERSION,
    where: str = "EntropyDecode",
) -> np.ndarray:
    """Decode one EntropyDecode node's inputs into its int32 output tensor (FORMAT.md)."""
    if format_version != fmt.ENTROPY_DECODE_VERSION:
        raise FormatError(
            f"{where}: format_version {format_version} is not supported (this decoder reads "
            f"version {fmt.ENTROPY_DECODE_VERSION}); upgrade onnxcomp"
        )
    b = np.asarray(bitstream)
    if b.ndim != 1 or b.dtype != np.uint8 or b.size % 4:
        raise FormatError(f"{where}: bitstream must be 1-D uint8 with a length divisible by 4, got {b.dtype}{list(b.shape)}")
    f = validate_table(frequencies, where)
    dims = validate_shape(shape, where)
    off = np.asarray(offset)
    if off.dtype != np.int32 or off.size != 1:
        raise FormatError(f"{where}: offset must be an int32 scalar, got {off.dtype}{list(off.shape)}")
    count = math.prod(dims)
    if count > max_symbols_in(8 * b.size, f):
        raise FormatError(
            f"{where}: declared shape {list(dims)} ({count} values) is larger than a "
            f"{b.size}-byte bitstream can hold under its table"
        )
    # A copy, not a view: the file's buffer may be unaligned, and it is small.
    words = np.frombuffer(b.tobytes(), dtype="<u4").astype(np.uint32)
    symbols = decode_symbols(words, f, count, where)
    values = symbols.astype(np.int64) + int(off.reshape(()))
    if values.size and (values.min() < -(2**31) or values.max() >= 2**31):
        raise FormatError(f"{where}: offset {int(off)} puts decoded values outside int32")
    values = values.astype(np.int32).reshape(dims)
    actual = crc32_of(values)
    if actual != int(crc32):
        raise FormatError(f"{where}: CRC mismatch (stored {int(crc32):#010x}, decoded {actual:#010x}): tampered or corrupt")
    return values


def crc32_of(values: np.ndarray) -> int:
    """CRC-32 (zlib polynomial) of the values as little-endian int32, in C order."""
    return zlib.crc32(np.ascontiguousarray(values, dtype="<i4").tobytes()) & 0xFFFFFFFF
