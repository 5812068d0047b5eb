"""An independent, pure-Python decoder of ``ai.onnxcomp::EntropyDecode`` written from FORMAT.md.

It shares no code with onnxcomp or constriction: if the spec and the implementation drift apart,
the tests comparing the two fail. Slow (a Python loop per symbol); for tests only.
"""

from __future__ import annotations

import struct
import zlib

PRECISION = 24
MASK = (1 << PRECISION) - 1


def reference_decode(bitstream: bytes, frequencies: list[int], offset: int, shape: list[int], crc32: int) -> list[int]:
    if len(bitstream) % 4:
        raise ValueError("bitstream length not a multiple of 4")
    if len(frequencies) < 2 or min(frequencies) < 1 or sum(frequencies) != 1 << PRECISION:
        raise ValueError("bad frequency table")
    words = list(struct.unpack(f"<{len(bitstream) // 4}I", bitstream))
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
    if zlib.crc32(packed) & 0xFFFFFFFF != crc32:
        raise ValueError("CRC mismatch")
    return out
