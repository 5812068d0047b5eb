"""Pipeline strings: parse/print round trip, presets, and up-front errors naming what is wrong."""

from __future__ import annotations

import pytest

from onnxcomp.errors import PipelineError
from onnxcomp.pipeline import PRESETS, parse_pipeline


@pytest.mark.parametrize("text", [
    "normalize,quantize,pack",
    "normalize{fold_batchnorm=false},quantize{bits=4.5 per_channel=false},pack{min_elements=64}",
    "quantize{bias_bits=2.0}",
])
def test_round_trip(text):
    p = parse_pipeline(text)
    assert str(parse_pipeline(str(p))) == str(p)
    assert parse_pipeline(str(p)) == p


def test_canonical_form_omits_defaults_and_normalizes_values():
    assert str(parse_pipeline(" normalize , quantize{grid=peak} ,pack")) == "normalize,quantize,pack"
    assert str(parse_pipeline("quantize{bits=3 per_channel=0}")) == "quantize{bits=3 per_channel=false}"


def test_presets_expand():
    assert str(parse_pipeline("ptq")) == PRESETS["ptq"]


@pytest.mark.parametrize("text, message", [
    ("normalize,frobnicate", "unknown pass 'frobnicate'; valid passes: epr-finalize, epr-reparam, finetune, normalize, pack, quantize, weight-fix"),
    ("quantize{bitz=3}", "no option 'bitz'; valid options: grid, bits, bias_bits, per_channel"),
    ("quantize{bits=many}", "bits='many' is not a valid float"),
    ("quantize{bits}", "must be written key=value"),
    ("quantize{bits=3 bits=4}", "given twice"),
    ("quantize{bits=3", "cannot parse pipeline"),
    ("", "empty pipeline"),
    ("pack{min_elements=0}", "min_elements=0 must be >= 1"),
])
def test_errors_name_the_culprit(text, message):
    with pytest.raises(PipelineError) as info:
        parse_pipeline(text)
    assert message in str(info.value)
