"""Decoder of ``ai.onnxcomp::EntropyDecode`` (FORMAT.md), shared by load-time decoding and the
onnxruntime custom op.

A decoder never trusts sizes in a file: before allocating it checks the table, the declared
shape against the ceilings in :mod:`.format` and against how many symbols the bitstream can
possibly hold; after decoding it checks that the ANS stream ended exactly where it began (all
words consumed, state back to zero) and that the CRC-32 of the values matches the node's.
"""

from __future__ import annotations

import math
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from onnxcomp.errors import FormatError

from . import format as fmt
from . import native


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


_LITTLE_ENDIAN = sys.byteorder == "little"

# Symbols decoded per constriction call: large enough to amortize the call, small enough that the
# int32 scratch stays a few MB however large the tensor.
CHUNK_SYMBOLS = 1 << 20


@dataclass(frozen=True)
class DecodePlan:
    """A node's inputs after every check that can be made before decoding."""

    words: np.ndarray  # uint32 ANS words
    frequencies: np.ndarray  # int64 table
    offset: int
    shape: tuple[int, ...]
    crc32: int | None  # None: the caller checks a CRC over more than these values (a byte plane)
    where: str

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    @property
    def value_range(self) -> tuple[int, int]:
        return self.offset, self.offset + self.frequencies.size - 1

    # The interface every plan offers (BytePlanePlan too): decoders call these, not the type.
    def decode(self) -> np.ndarray:
        return decode_plan(self)

    def decode_into(self, flat: np.ndarray) -> None:
        decode_into(self, flat)


def plan_decode(bitstream, frequencies, offset, shape, *, crc32: int,
                format_version: int = fmt.ENTROPY_DECODE_VERSION, where: str = "EntropyDecode") -> DecodePlan:
    """Check one EntropyDecode node's inputs against FORMAT.md section 4; allocate nothing big."""
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
    lo = int(off.reshape(()))
    if lo + f.size - 1 > np.iinfo(np.int32).max:
        raise FormatError(f"{where}: offset {lo} with {f.size} symbols puts decoded values outside int32")
    count = math.prod(dims)
    if count > max_symbols_in(8 * b.size, f):
        raise FormatError(
            f"{where}: declared shape {list(dims)} ({count} values) is larger than a "
            f"{b.size}-byte bitstream can hold under its table"
        )
    return DecodePlan(stream_words(b, where), f, lo, dims, check_crc_attribute(crc32, where), where)


def stream_words(stream: np.ndarray, where: str) -> np.ndarray:
    """The uint32 ANS words of a stream's bytes (length already checked divisible by 4); a
    non-empty stream whose last word is 0 is refused: that word is the high half of a state
    >= 2**32, never 0 (FORMAT.md section 3)."""
    # A view of the file's bytes where they are 4-byte aligned (the coded weights are most of a
    # file: copying them cost a third of a load), else one copy.
    if stream.flags.c_contiguous and stream.ctypes.data % 4 == 0:
        words = stream.reshape(-1).view("<u4")
    else:
        words = np.frombuffer(stream.tobytes(), dtype="<u4")
    if words.size and words[-1] == 0:
        raise FormatError(f"{where}: bitstream ends in a zero word (never written by an ANS coder)")
    return words


def check_crc_attribute(crc32: int, where: str) -> int:
    """A ``crc32`` attribute is a CRC-32: an integer in [0, 2**32)."""
    value = int(crc32)
    if not 0 <= value < 1 << 32:
        raise FormatError(f"{where}: crc32 attribute {value} is not a 32-bit CRC (0 .. 2**32 - 1)")
    return value


def iter_values(plan: DecodePlan, granularity: int = 1) -> Iterator[np.ndarray]:
    """Decoded int32 values in C order, in chunks of a multiple of ``granularity`` values.

    The stream-end and CRC checks run after the last chunk: a consumer must treat what it built
    as valid only once the iterator is exhausted without error.
    """
    import constriction  # imported here so a failing import names the missing package late

    try:
        model = constriction.stream.model.Categorical((plan.frequencies - 1).astype(np.float64), perfect=False)
        # The quantized CDF constriction derives from (f - 1) with perfect=False is exactly
        # cumsum(f); the tests check this against the pure-Python reference decoder on random tables.
        coder = constriction.stream.stack.AnsCoder(plan.words)
    except Exception as exc:  # checked in plan_decode already; constriction's own refusal, typed
        raise FormatError(f"{plan.where}: corrupt bitstream or table ({exc})") from None
    step = max(1, CHUNK_SYMBOLS // max(1, granularity)) * max(1, granularity)
    crc = 0
    done = 0
    while done < plan.count:
        n = min(step, plan.count - done)
        try:
            chunk = coder.decode(model, n)
        except Exception as exc:  # constriction raises ValueError/AssertionError on corrupt streams
            raise FormatError(f"{plan.where}: corrupt bitstream ({exc})") from None
        chunk += np.int32(plan.offset)  # cannot overflow: checked against the table in plan_decode
        crc = zlib.crc32(memoryview(chunk if _LITTLE_ENDIAN else chunk.astype("<i4")).cast("B"), crc)
        done += n
        yield chunk
    if not coder.is_empty():
        raise FormatError(f"{plan.where}: bitstream has data left after {plan.count} symbols (truncated table, shape or stream)")
    if plan.crc32 is not None and crc != plan.crc32:
        raise FormatError(f"{plan.where}: CRC mismatch (stored {plan.crc32:#010x}, decoded {crc:#010x}): tampered or corrupt")


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
    plan = plan_decode(bitstream, frequencies, offset, shape, crc32=crc32, format_version=format_version, where=where)
    return decode_plan(plan)


def decode_plan(plan: DecodePlan) -> np.ndarray:
    """All of a plan's values in one int32 array, shaped as declared."""
    out = np.empty(plan.count, dtype=np.int32)
    decode_into(plan, out)
    return out.reshape(plan.shape)


def decode_into(plan: DecodePlan, flat: np.ndarray) -> None:
    """Write a plan's values into the 1-D ``flat`` (any integer type holding the table's range).
    The native decoder does it where present (int8/int16/int32), constriction otherwise."""
    if native.available() and flat.flags.c_contiguous and flat.dtype in native.INTEGER_TYPES:
        native.entropy_decode_into(plan, flat)
        return
    pos = 0
    for chunk in iter_values(plan):
        flat[pos : pos + chunk.size] = chunk
        pos += chunk.size


def crc32_of(values: np.ndarray) -> int:
    """CRC-32 (zlib polynomial) of the values as little-endian int32, in C order."""
    flat = np.ascontiguousarray(values, dtype="<i4").reshape(-1)
    return zlib.crc32(memoryview(flat).cast("B") if flat.size else b"") & 0xFFFFFFFF
