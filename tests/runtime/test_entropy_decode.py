"""EntropyDecode: exact round trips, an independent reference decoder, a golden bitstream, and
clear errors on every kind of bad input FORMAT.md names."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from onnxcomp.coding import encode_tensor, quantize_counts
from onnxcomp.errors import FormatError
from onnxcomp.runtime.entropy_decode import entropy_decode

from .reference_decoder import reference_decode


def decode(enc, **overrides):
    args = dict(bitstream=enc.bitstream, frequencies=enc.frequencies, offset=np.int32(enc.offset),
                shape=np.array(enc.shape, np.int64), crc32=enc.crc32)
    args.update(overrides)
    return entropy_decode(args.pop("bitstream"), args.pop("frequencies"), args.pop("offset"), args.pop("shape"), **args)


int_tensors = st.sampled_from([np.int8, np.int16, np.int32]).flatmap(
    lambda dt: hnp.arrays(
        dtype=dt,
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12),
        elements=st.integers(max(-300, np.iinfo(dt).min), min(300, np.iinfo(dt).max)),
    )
)


@settings(max_examples=150, deadline=None)
@given(int_tensors)
def test_round_trip_is_exact_and_matches_reference(values):
    enc = encode_tensor(values)
    out = decode(enc)
    assert out.dtype == np.int32 and out.shape == values.shape
    np.testing.assert_array_equal(out, values.astype(np.int32))
    ref = reference_decode(enc.bitstream.tobytes(), enc.frequencies.tolist(), enc.offset, list(enc.shape), enc.crc32)
    assert ref == values.reshape(-1).astype(int).tolist()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=2, max_size=300))
def test_table_is_exact_integer_and_never_zero(counts):
    f = quantize_counts(np.array(counts))
    assert f.sum() == 1 << 24 and f.min() >= 1 and f.size == len(counts)
    np.testing.assert_array_equal(f, quantize_counts(np.array(counts)))  # deterministic


def test_coded_size_close_to_the_tables_ideal_length():
    rng = np.random.default_rng(0)
    values = np.rint(rng.laplace(0, 3, 200_000)).astype(np.int32)
    enc = encode_tensor(values)
    coded_bits = 8 * enc.bitstream.nbytes
    assert enc.ideal_bits >= enc.empirical_entropy_bits  # a quantized table cannot beat the entropy
    assert coded_bits >= enc.ideal_bits - 64
    assert coded_bits <= 1.001 * enc.ideal_bits + 64


# Pinned output of the coder: if constriction or the table builder changes its bitstream, files
# written by earlier versions might no longer decode. This must fail loudly, not silently.
GOLDEN_VALUES = np.array([[0, -1, 2, 0], [0, 3, -1, 0], [1, 0, 0, -2]], np.int32)


def test_golden_bitstream():
    enc = encode_tensor(GOLDEN_VALUES)
    assert enc.offset == -2
    assert enc.frequencies.tolist() == [1398102, 2796202, 8388606, 1398102, 1398102, 1398102]
    assert enc.bitstream.tobytes().hex() == GOLDEN_HEX
    assert enc.crc32 == GOLDEN_CRC


GOLDEN_HEX = "086e7bc64b070000"
GOLDEN_CRC = 2636442710


@pytest.fixture
def enc():
    rng = np.random.default_rng(1)
    return encode_tensor(np.rint(rng.normal(0, 4, (64, 32))).astype(np.int32))


def test_tampered_bitstream_is_detected(enc):
    bad = enc.bitstream.copy()
    bad[len(bad) // 2] ^= 0x40
    with pytest.raises(FormatError, match="CRC|corrupt|left"):
        decode(enc, bitstream=bad)


def test_truncated_bitstream_is_detected(enc):
    with pytest.raises(FormatError):
        decode(enc, bitstream=enc.bitstream[:-4])
    with pytest.raises(FormatError, match="divisible by 4"):
        decode(enc, bitstream=enc.bitstream[:-1])


def test_table_that_does_not_sum_is_rejected(enc):
    bad = enc.frequencies.copy()
    bad[0] += 1
    with pytest.raises(FormatError, match="sums to"):
        decode(enc, frequencies=bad)
    bad = enc.frequencies.copy()
    bad[1] = 0
    with pytest.raises(FormatError, match="entry < 1"):
        decode(enc, frequencies=bad)


def test_declared_shape_larger_than_the_stream_can_hold(enc):
    with pytest.raises(FormatError, match="larger than"):
        decode(enc, shape=np.array([10_000, 10_000], np.int64))
    with pytest.raises(FormatError, match="exceeds"):
        decode(enc, shape=np.array([1 << 40], np.int64))
    with pytest.raises(FormatError, match="negative"):
        decode(enc, shape=np.array([-1, 32], np.int64))


def test_wrong_shape_or_crc_is_caught(enc):
    with pytest.raises(FormatError):
        decode(enc, shape=np.array([64, 31], np.int64))
    with pytest.raises(FormatError, match="CRC"):
        decode(enc, crc32=enc.crc32 ^ 1)


def test_unknown_format_version_and_wrong_dtypes(enc):
    with pytest.raises(FormatError, match="format_version 2"):
        decode(enc, format_version=2)
    with pytest.raises(FormatError, match="int32"):
        decode(enc, frequencies=enc.frequencies.astype(np.int64))
    with pytest.raises(FormatError, match="uint8"):
        decode(enc, bitstream=enc.bitstream.view(np.int8))
