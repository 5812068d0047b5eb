"""Constants of the ``ai.onnxcomp`` custom domain. FORMAT.md is the normative spec; this module
is its single source of numbers, shared by the encoder (``onnxcomp.passes.pack``) and every
decoder (load-time, custom op, the tests' pure-Python reference)."""

from __future__ import annotations

DOMAIN = "ai.onnxcomp"
DOMAIN_VERSION = 1  # what a file imports when it uses only EntropyDecode
# Domain version 2 adds BytePlaneDecode (exact float weights); a file using it imports version 2.
# EntropyDecode is the same op in both: version-1 files decode unchanged.
BYTE_PLANE_DOMAIN_VERSION = 2
# Domain version 3 seals the file (FORMAT.md section 8, runtime/integrity.py): every file onnxcomp
# writes imports it. Ops and streams are those of version 2.
SEALED_DOMAIN_VERSION = 3
DOMAIN_VERSIONS = (1, 2, 3)  # what the decoders here read; any other version is refused

ENTROPY_DECODE = "EntropyDecode"
# Attribute ``format_version`` of EntropyDecode; a decoder refuses versions it does not know.
ENTROPY_DECODE_VERSION = 1

# ANS parameters of format version 1 (constriction's default stack coder): 32-bit words, a 64-bit
# state, probabilities in 24-bit fixed point. Frequencies of a table sum to exactly 2**PRECISION.
PRECISION = 24
WORD_BITS = 32
STATE_BITS = 64

# Input order of EntropyDecode.
INPUT_BITSTREAM = 0  # uint8[B], B % 4 == 0: the ANS words, uint32 little-endian
INPUT_FREQUENCIES = 1  # int32[K], K >= 2, every entry >= 1, sum == 2**PRECISION
INPUT_OFFSET = 2  # int32 scalar: symbol s decodes to the integer s + offset
INPUT_SHAPE = 3  # int64[r]: shape of the int32 output
NUM_INPUTS = 4

# Hard ceilings a decoder applies before allocating anything, whatever a file says.
MAX_SYMBOLS = 1 << 24  # alphabet size K
MAX_ELEMENTS = 1 << 33  # elements of one decoded tensor (32 GiB of int32)
MAX_RANK = 16

# BytePlaneDecode (domain version 2): a float tensor coded exactly, one ANS stream per byte plane.
BYTE_PLANE_DECODE = "BytePlaneDecode"
BYTE_PLANE_DECODE_VERSION = 1  # its ``format_version`` attribute
BP_INPUT_BITSTREAM = 0  # uint8[B]: the planes' streams, plane 0 first, each a multiple of 4 bytes
BP_INPUT_STREAM_BYTES = 1  # int64[P]: bytes of each plane's stream
BP_INPUT_FREQUENCIES = 2  # int32[P, 256]: each plane's table over the byte values 0..255
BP_INPUT_SHAPE = 3  # int64[r]: shape of the output
BP_NUM_INPUTS = 4
PLANE_SYMBOLS = 256
# Attribute ``to`` (TensorProto data type) -> bytes per element (= planes): FLOAT, FLOAT16.
BYTE_PLANE_TYPES = {1: 4, 10: 2}
