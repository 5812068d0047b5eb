"""BytePlaneDecode: exact float round trips (signed zeros, inf, NaN payloads, subnormals), the
pure-Python reference decoder written from FORMAT.md, a golden bitstream, and every corruption
the decoder must refuse with a FormatError."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from onnxcomp.coding import encode_floats
from onnxcomp.errors import FormatError
from onnxcomp.runtime.byteplane_decode import plan_byte_plane_decode

from .reference_decoder import reference_byte_plane_decode


def decode(enc, **changes):
    inputs = [enc.bitstream, enc.stream_bytes, enc.frequencies, np.array(enc.shape, np.int64)]
    attrs = {"format_version": 1, "to": enc.to, "crc32": enc.crc32}
    for index, value in changes.pop("inputs", {}).items():
        inputs[index] = value
    attrs.update(changes)
    return plan_byte_plane_decode(inputs, attrs, "node 'w'").decode()


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(st.sampled_from([np.float32, np.float16]), hnp.array_shapes(min_dims=0, max_dims=3, max_side=9),
                  elements=st.floats(allow_nan=True, allow_infinity=True, width=16)))
def test_round_trip_is_bit_exact_and_matches_the_reference(values):
    enc = encode_floats(values)
    back = decode(enc)
    assert back.dtype == values.dtype and back.shape == values.shape
    assert back.tobytes() == values.tobytes()
    reference = reference_byte_plane_decode(enc.bitstream.tobytes(), enc.stream_bytes.tolist(), enc.frequencies.tolist(),
                                            list(enc.shape), enc.to, enc.crc32)
    assert reference == values.tobytes()


def test_special_values_survive():
    bits = np.array([0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00001, 0x00000001, 0x807FFFFF], np.uint32)
    values = bits.view(np.float32)
    assert decode(encode_floats(values)).view(np.uint32).tolist() == bits.tolist()


GOLDEN = np.array([[0.5, -0.25, 1.0], [0.0, -0.0, 3.0]], np.float16)


def test_golden_bitstream():
    enc = encode_floats(GOLDEN)
    assert enc.stream_bytes.tolist() == [8, 4]
    assert enc.bitstream.tobytes().hex() == GOLDEN_HEX
    assert enc.crc32 == GOLDEN_CRC


GOLDEN_HEX = "f709814e05000000f5050007"
GOLDEN_CRC = 3939502525


@pytest.fixture
def enc():
    return encode_floats(np.random.default_rng(0).normal(0, 0.05, (64, 32)).astype(np.float32))


def test_corruptions_are_refused_with_a_format_error(enc):
    flipped = enc.bitstream.copy()
    flipped[len(flipped) // 2] ^= 0x10
    cases = [
        dict(inputs={0: flipped}),                                                   # a flipped bit
        dict(inputs={0: enc.bitstream[:-4], 1: enc.stream_bytes - np.array([0, 0, 0, 4])}),  # truncated
        dict(inputs={1: enc.stream_bytes[::-1].copy()}),                             # planes swapped
        dict(inputs={1: enc.stream_bytes + 1}),                                      # sizes do not add up
        dict(inputs={2: enc.frequencies[:2]}),                                       # wrong number of planes
        dict(inputs={3: np.array([64, 33], np.int64)}),                              # wrong shape
        dict(inputs={3: np.array([1 << 20, 1 << 20], np.int64)}),                    # more than the streams hold
        dict(crc32=enc.crc32 ^ 1),
        dict(to=11),                                                                 # unknown output type
        dict(format_version=2),
    ]
    for case in cases:
        with pytest.raises(FormatError, match="node 'w'"):
            decode(enc, **case)
