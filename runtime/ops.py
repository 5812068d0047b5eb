"""The one place that maps ``(domain, op_type, format_version)`` to a decoder.

Load-time decoding and the onnxruntime custom op both dispatch through :data:`DECODERS`, so a new
op or version is added here once. A decoder entry turns a node's input arrays (in order), its int
attributes and a ``where`` string naming the node into a checked :class:`DecodePlan`, whose
values are then streamed by ``iter_values`` (in chunks, so callers can fold or narrow them
without holding a full int32 copy).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from onnxcomp.errors import FormatError

from . import format as fmt
from .byteplane_decode import BytePlanePlan, plan_byte_plane_decode
from .entropy_decode import DecodePlan, plan_decode

Plan = DecodePlan | BytePlanePlan  # integers (EntropyDecode) or exact floats (BytePlaneDecode)
Planner = Callable[[list[np.ndarray], dict[str, int], str], Plan]


def _plan_entropy_decode_v1(inputs: list[np.ndarray], attrs: dict[str, int], where: str) -> DecodePlan:
    if len(inputs) != fmt.NUM_INPUTS:
        raise FormatError(f"{where}: EntropyDecode takes {fmt.NUM_INPUTS} inputs, got {len(inputs)}")
    if "crc32" not in attrs:
        raise FormatError(f"{where}: EntropyDecode lacks its crc32 attribute")
    return plan_decode(
        inputs[fmt.INPUT_BITSTREAM],
        inputs[fmt.INPUT_FREQUENCIES],
        inputs[fmt.INPUT_OFFSET],
        inputs[fmt.INPUT_SHAPE],
        crc32=attrs["crc32"],
        format_version=attrs.get("format_version", -1),
        where=where,
    )


DECODERS: dict[tuple[str, str, int], Planner] = {
    (fmt.DOMAIN, fmt.ENTROPY_DECODE, fmt.ENTROPY_DECODE_VERSION): _plan_entropy_decode_v1,
    (fmt.DOMAIN, fmt.BYTE_PLANE_DECODE, fmt.BYTE_PLANE_DECODE_VERSION): plan_byte_plane_decode,
}


def planner_for(domain: str, op_type: str, version: int, where: str) -> Planner:
    try:
        return DECODERS[(domain, op_type, version)]
    except KeyError:
        known = ", ".join(f"{d}::{o} v{v}" for d, o, v in DECODERS)
        raise FormatError(f"{where}: no decoder for {domain}::{op_type} format_version {version} (known: {known})") from None


def decode_node(domain: str, op_type: str, inputs: list[np.ndarray], attrs: dict[str, int], where: str) -> np.ndarray:
    """Decode a whole node output into one array (int32, or the float type of BytePlaneDecode)."""
    return planner_for(domain, op_type, attrs.get("format_version", -1), where)(inputs, attrs, where).decode()
