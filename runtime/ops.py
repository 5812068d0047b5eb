"""The one place that maps ``(domain, op_type, format_version)`` to a decoder.

Load-time decoding and the onnxruntime custom op both dispatch through :data:`DECODERS`, so a new
op or version is added here once. A decoder takes the node's input arrays (in order), its int
attributes and a ``where`` string naming the node for errors, and returns the output array.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from onnxcomp.errors import FormatError

from . import format as fmt
from .entropy_decode import entropy_decode

Decoder = Callable[[list[np.ndarray], dict[str, int], str], np.ndarray]


def _entropy_decode_v1(inputs: list[np.ndarray], attrs: dict[str, int], where: str) -> np.ndarray:
    if len(inputs) != fmt.NUM_INPUTS:
        raise FormatError(f"{where}: EntropyDecode takes {fmt.NUM_INPUTS} inputs, got {len(inputs)}")
    if "crc32" not in attrs:
        raise FormatError(f"{where}: EntropyDecode lacks its crc32 attribute")
    return entropy_decode(
        inputs[fmt.INPUT_BITSTREAM],
        inputs[fmt.INPUT_FREQUENCIES],
        inputs[fmt.INPUT_OFFSET],
        inputs[fmt.INPUT_SHAPE],
        crc32=attrs["crc32"],
        format_version=attrs.get("format_version", -1),
        where=where,
    )


DECODERS: dict[tuple[str, str, int], Decoder] = {
    (fmt.DOMAIN, fmt.ENTROPY_DECODE, fmt.ENTROPY_DECODE_VERSION): _entropy_decode_v1,
}


def decoder_for(domain: str, op_type: str, version: int, where: str) -> Decoder:
    try:
        return DECODERS[(domain, op_type, version)]
    except KeyError:
        known = ", ".join(f"{d}::{o} v{v}" for d, o, v in DECODERS)
        raise FormatError(f"{where}: no decoder for {domain}::{op_type} format_version {version} (known: {known})") from None
