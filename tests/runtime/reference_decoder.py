"""An independent, pure-Python decoder of ``ai.onnxcomp::EntropyDecode`` and ``BytePlaneDecode``
written from FORMAT.md.

It shares no code with onnxcomp or constriction: if the spec and the implementation drift apart,
the tests comparing the two fail. Slow (a Python loop per symbol); for tests only.
"""

from __future__ import annotations

import struct
import zlib

PRECISION = 24
MASK = (1 << PRECISION) - 1


def reference_decode(bitstream: bytes, frequencies: list[int], offset: int, shape: list[int], crc32: int | None) -> list[int]:
    """EntropyDecode's values; ``crc32`` None skips the CRC (a BytePlaneDecode plane has none)."""
    if len(bitstream) % 4:
        raise ValueError("bitstream length not a multiple of 4")
    if len(frequencies) < 2 or min(frequencies) < 1 or sum(frequencies) != 1 << PRECISION:
        raise ValueError("bad frequency table")
    words = list(struct.unpack(f"<{len(bitstream) // 4}I", bitstream))
    if words and words[-1] == 0:
        raise ValueError("stream ends in a zero word")
    if crc32 is not None and not 0 <= crc32 < 1 << 32:
        raise ValueError("crc32 is not a 32-bit value")
    cdf = [0]
    for f in frequencies:
        cdf.append(cdf[-1] + f)
    count = 1
    for d in shape:
        count *= d
    # Initial state: the last word is the high half, the one before it the low half (§3 FORMAT.md).
    state = 0
    for _ in range(2):
        if words:
            state = (state << 32) | words.pop()
    out = []
    for _ in range(count):
        quantile = state & MASK
        # Largest s with cdf[s] <= quantile (binary search).
        lo, hi = 0, len(frequencies) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if cdf[mid] <= quantile:
                lo = mid
            else:
                hi = mid - 1
        s = lo
        state = frequencies[s] * (state >> PRECISION) + quantile - cdf[s]
        if state < (1 << 32) and words:
            state = (state << 32) | words.pop()
        out.append(s + offset)
    if words or state != 0:
        raise ValueError("stream did not end where it began")
    packed = struct.pack(f"<{len(out)}i", *out)
    if crc32 is not None and zlib.crc32(packed) & 0xFFFFFFFF != crc32:
        raise ValueError("CRC mismatch")
    return out


def reference_byte_plane_decode(bitstream: bytes, stream_bytes: list[int], frequencies: list[list[int]],
                                shape: list[int], to: int, crc32: int) -> bytes:
    """BytePlaneDecode (FORMAT.md section 7) from the spec alone: returns the output's bytes
    (little-endian elements, C order)."""
    width = {1: 4, 10: 2}[to]
    if len(stream_bytes) != width or len(frequencies) != width or sum(stream_bytes) != len(bitstream):
        raise ValueError("bad plane layout")
    count = 1
    for d in shape:
        count *= d
    planes, start = [], 0
    for j in range(width):
        stream = bitstream[start:start + stream_bytes[j]]
        start += stream_bytes[j]
        # each plane is an EntropyDecode stream of byte symbols (offset 0) without its own CRC
        planes.append(_decode_symbols(stream, frequencies[j], count))
    bits = 8 * width
    out = bytearray()
    for i in range(count):
        rotated = 0
        for j in range(width):
            rotated = (rotated << 8) | planes[j][i]
        u = ((rotated >> 1) | (rotated << (bits - 1))) & ((1 << bits) - 1)
        out += u.to_bytes(width, "little")
    if zlib.crc32(bytes(out)) & 0xFFFFFFFF != crc32:
        raise ValueError("CRC mismatch")
    return bytes(out)


def _decode_symbols(bitstream: bytes, frequencies: list[int], count: int) -> list[int]:
    """A plane: reference_decode without offset and CRC."""
    return reference_decode(bitstream, frequencies, 0, [count], crc32=None)
