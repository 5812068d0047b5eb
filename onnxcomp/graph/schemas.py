"""ONNX operator schemas of the ``ai.onnxcomp`` domain, so onnx.checker knows the custom ops.

The schema states inputs, types and attributes as FORMAT.md specifies them. The compiler side
only; the deploy-only runtime has no ``onnx`` to register with.
"""

from __future__ import annotations

import onnx
from onnx.defs import OpSchema

from onnxcomp.runtime import format as fmt

_done = False


def entropy_decode_schema() -> OpSchema:
    P = OpSchema.FormalParameter
    return OpSchema(
        fmt.ENTROPY_DECODE,
        fmt.DOMAIN,
        fmt.DOMAIN_VERSION,
        doc="Decodes an ANS bitstream into an int32 tensor (see FORMAT.md).",
        inputs=[
            P("bitstream", "tensor(uint8)", "ANS words, uint32 little-endian"),
            P("frequencies", "tensor(int32)", "integer table, entries >= 1, sum 2**24"),
            P("offset", "tensor(int32)", "symbol s decodes to s + offset"),
            P("shape", "tensor(int64)", "output shape"),
        ],
        outputs=[P("values", "tensor(int32)", "decoded integers")],
        attributes=[
            OpSchema.Attribute("format_version", OpSchema.AttrType.INT, "bitstream format version"),
            OpSchema.Attribute("crc32", OpSchema.AttrType.INT, "CRC-32 of the output, int32 little-endian"),
        ],
    )


def byte_plane_decode_schema() -> OpSchema:
    P = OpSchema.FormalParameter
    return OpSchema(
        fmt.BYTE_PLANE_DECODE,
        fmt.DOMAIN,
        fmt.BYTE_PLANE_DOMAIN_VERSION,
        doc="Decodes a float tensor exactly from ANS-coded byte planes (see FORMAT.md).",
        inputs=[
            P("bitstream", "tensor(uint8)", "the planes' ANS words, plane 0 first"),
            P("stream_bytes", "tensor(int64)", "bytes of each plane's stream"),
            P("frequencies", "tensor(int32)", "[planes, 256] integer tables, rows sum to 2**24"),
            P("shape", "tensor(int64)", "output shape"),
        ],
        outputs=[P("values", "T", "decoded floats, bit-exact")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "output type, attribute 'to'")],
        attributes=[
            OpSchema.Attribute("format_version", OpSchema.AttrType.INT, "format version of this op"),
            OpSchema.Attribute("to", OpSchema.AttrType.INT, "TensorProto data type of the output"),
            OpSchema.Attribute("crc32", OpSchema.AttrType.INT, "CRC-32 of the output's bytes"),
        ],
    )


def register_schemas() -> None:
    global _done
    if _done:
        return
    if not onnx.defs.has(fmt.ENTROPY_DECODE, fmt.DOMAIN):
        onnx.defs.register_schema(entropy_decode_schema())
    if not onnx.defs.has(fmt.BYTE_PLANE_DECODE, fmt.DOMAIN):
        onnx.defs.register_schema(byte_plane_decode_schema())
    _done = True
