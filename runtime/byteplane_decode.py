"""Decoder of ``ai.onnxcomp::BytePlaneDecode`` (FORMAT.md section 7): exact float tensors.

Each element's bits ``u`` (a W-byte little-endian unsigned integer) are rotated left by one bit,
so the sign moves to the lowest bit and, for float32, the whole exponent fills the top byte; byte
j (from the most significant) of the rotated words forms plane j, coded as its own ANS stream of
byte symbols under its own 256-entry table (the exponent plane costs 2-3 bits, the low mantissa
planes close to 8). Decoding runs the P streams in lockstep, chunk by chunk, so memory beyond the
output stays a few MB; the same checks as EntropyDecode apply to every stream, and the CRC-32
covers the output's bytes.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from onnxcomp.errors import FormatError

from . import format as fmt
from . import native
from .entropy_decode import (DecodePlan, check_crc_attribute, iter_values, max_symbols_in, stream_words, validate_shape,
                             validate_table)

NUMPY_TYPES = {1: np.dtype("<f4"), 10: np.dtype("<f2")}
UNSIGNED = {4: np.dtype("<u4"), 2: np.dtype("<u2")}


@dataclass(frozen=True)
class BytePlanePlan:
    """A BytePlaneDecode node's inputs after every check that can be made before decoding."""

    planes: tuple[DecodePlan, ...]  # one byte stream per plane, most significant first
    shape: tuple[int, ...]
    dtype: np.dtype                 # of the output (float32 or float16)
    crc32: int
    where: str

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    def decode(self) -> np.ndarray:
        out = np.empty(self.count, self.dtype)
        self.decode_into(out)
        return out.reshape(self.shape)

    def decode_into(self, flat: np.ndarray) -> None:
        """Write the decoded elements into the 1-D ``flat`` (of ``dtype``): natively where the
        library is present, else stream by stream through constriction."""
        if native.available() and flat.flags.c_contiguous:
            native.byte_plane_decode_into(self, flat)
            return
        width = self.dtype.itemsize
        bits = 8 * width
        words = flat.view(UNSIGNED[width])
        streams = [iter_values(p) for p in self.planes]
        crc, pos = 0, 0
        for chunks in zip(*streams):
            rotated = np.zeros(chunks[0].size, np.uint32)
            for j, chunk in enumerate(chunks):
                rotated |= chunk.astype(np.uint32) << np.uint32(8 * (width - 1 - j))
            u = ((rotated >> np.uint32(1)) | (rotated << np.uint32(bits - 1))) & np.uint32((1 << bits) - 1)
            part = words[pos : pos + u.size]
            part[:] = u
            crc = zlib.crc32(memoryview(part.view(np.uint8)), crc)
            pos += u.size
        for rest in streams[1:]:
            next(rest, None)  # the first stream ended the loop: run the others' end-of-stream checks
        if pos != self.count:
            raise FormatError(f"{self.where}: decoded {pos} of {self.count} elements")
        if crc != self.crc32:
            raise FormatError(f"{self.where}: CRC mismatch (stored {self.crc32:#010x}, decoded {crc:#010x}): tampered or corrupt")


def plan_byte_plane_decode(inputs: list[np.ndarray], attrs: dict[str, int], where: str) -> BytePlanePlan:
    """Check a BytePlaneDecode node against FORMAT.md section 7; allocate nothing big."""
    if len(inputs) != fmt.BP_NUM_INPUTS:
        raise FormatError(f"{where}: BytePlaneDecode takes {fmt.BP_NUM_INPUTS} inputs, got {len(inputs)}")
    version = attrs.get("format_version", -1)
    if version != fmt.BYTE_PLANE_DECODE_VERSION:
        raise FormatError(f"{where}: BytePlaneDecode format_version {version} is not supported "
                          f"(this decoder reads {fmt.BYTE_PLANE_DECODE_VERSION}); upgrade onnxcomp")
    to = attrs.get("to", -1)
    if to not in fmt.BYTE_PLANE_TYPES:
        raise FormatError(f"{where}: BytePlaneDecode output type {to} is not one of {sorted(fmt.BYTE_PLANE_TYPES)}")
    if "crc32" not in attrs:
        raise FormatError(f"{where}: BytePlaneDecode lacks its crc32 attribute")
    planes = fmt.BYTE_PLANE_TYPES[to]
    b = np.asarray(inputs[fmt.BP_INPUT_BITSTREAM])
    sizes = np.asarray(inputs[fmt.BP_INPUT_STREAM_BYTES])
    tables = np.asarray(inputs[fmt.BP_INPUT_FREQUENCIES])
    if b.ndim != 1 or b.dtype != np.uint8:
        raise FormatError(f"{where}: bitstream must be 1-D uint8, got {b.dtype}{list(b.shape)}")
    if sizes.dtype != np.int64 or sizes.shape != (planes,):
        raise FormatError(f"{where}: stream_bytes must be int64[{planes}], got {sizes.dtype}{list(sizes.shape)}")
    if tables.dtype != np.int32 or tables.shape != (planes, fmt.PLANE_SYMBOLS):
        raise FormatError(f"{where}: frequencies must be int32[{planes}, {fmt.PLANE_SYMBOLS}], got {tables.dtype}{list(tables.shape)}")
    if (sizes < 0).any() or (sizes % 4).any() or int(sizes.sum()) != b.size:
        raise FormatError(f"{where}: stream_bytes {sizes.tolist()} must be multiples of 4 summing to the bitstream's {b.size} bytes")
    dims = validate_shape(inputs[fmt.BP_INPUT_SHAPE], where)
    count = math.prod(dims)
    plans, start = [], 0
    for j in range(planes):
        f = validate_table(tables[j], f"{where} plane {j}")
        stop = start + int(sizes[j])
        if count > max_symbols_in(8 * (stop - start), f):
            raise FormatError(f"{where}: declared shape {list(dims)} ({count} values) is larger than plane {j}'s "
                              f"{stop - start}-byte stream can hold under its table")
        plane = f"{where} plane {j}"
        plans.append(DecodePlan(stream_words(b[start:stop], plane), f, 0, (count,), None, plane))
        start = stop
    return BytePlanePlan(tuple(plans), dims, NUMPY_TYPES[to], check_crc_attribute(attrs["crc32"], where), where)


def byte_planes(values: np.ndarray) -> list[np.ndarray]:
    """The encoder's side: the P byte planes (uint8, C order) of a float32 or float16 array."""
    a = np.ascontiguousarray(values).reshape(-1)
    width = a.dtype.itemsize
    bits = 8 * width
    u = a.view(UNSIGNED[width]).astype(np.uint32)
    rotated = ((u << np.uint32(1)) | (u >> np.uint32(bits - 1))) & np.uint32((1 << bits) - 1)
    return [((rotated >> np.uint32(8 * (width - 1 - j))) & np.uint32(0xFF)).astype(np.uint8) for j in range(width)]


def crc32_of_bytes(values: np.ndarray) -> int:
    """CRC-32 of an array's little-endian element bytes in C order."""
    a = np.ascontiguousarray(values)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return zlib.crc32(memoryview(a.reshape(-1).view(np.uint8))) & 0xFFFFFFFF

