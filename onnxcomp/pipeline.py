"""Pipelines: text such as ``normalize,quantize{bits=5},pack`` or a preset name such as ``ptq``.

``str(parse_pipeline(s))`` prints a canonical form that parses back to the same pipeline. Unknown
passes and options are rejected up front, before any work, with the list of valid ones. The
runner verifies the model after every pass and names the passes that ran when one fails.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import onnx_ir as ir

from onnxcomp.errors import OnnxcompError, PassError, PipelineError
from onnxcomp.model_io import verify
from onnxcomp.pass_base import CompileContext, CompressionPass, make_pass, registered_passes

PRESETS: dict[str, str] = {
    # Data-free: the coarsest steps whose output change on probe inputs stays within int8's weights';
    # with --data, within onnxruntime int8's on those inputs.
    "ptq": "normalize,quantize,pack",
    # Lossier levels by name (their corpus figures are in BENCHMARKS.md): twice int8's weight step,
    # and the 4-bit signal-to-noise rule (lossless on the LeNets, far from it on deep nets).
    "ptq-small": "normalize,quantize{bits=7},pack",
    "ptq-tiny": "normalize,quantize{grid=rms bits=4},pack",
    "epr": "normalize,epr-reparam,finetune,pack",
    "wfn": "normalize,weight-fix,pack",
    # Outputs bit-identical to the original's: nothing that changes arithmetic (no BatchNorm
    # folding, no opset conversion), integers and floats coded exactly.
    "lossless": "normalize{fold_batchnorm=false fix_versions=false},pack{floats=exact}",
}

# Names are matched loosely (any case, underscores) so that a wrong one is reported as an unknown
# pass or preset, with the right spelling, rather than as unparsable text.
_PASS_RE = re.compile(r"\s*([A-Za-z][A-Za-z0-9_-]*)\s*(?:\{([^{}]*)\})?\s*(?:,|$)")


@dataclass(frozen=True)
class Pipeline:
    passes: tuple[CompressionPass, ...]

    def __str__(self) -> str:
        return ",".join(str(p) for p in self.passes)

    def run(self, model: ir.Model, context: CompileContext, on_pass=None) -> dict[str, float]:
        """Run every pass in place, verifying after each; returns seconds per pass."""
        timings: dict[str, float] = {}
        done: list[str] = []
        for p in self.passes:
            p.context = context
            if on_pass:
                on_pass(p)
            start = time.perf_counter()
            try:
                p(model)
            except OnnxcompError:
                raise
            except ir.passes.PassError as exc:
                raise PassError(f"pass {p.name!r} failed after [{', '.join(done)}]: {exc}") from exc
            verify(model, after=f"pass {p.name!r}")
            timings[str(p)] = time.perf_counter() - start
            done.append(p.name)
        return timings


def parse_pipeline(text: str) -> Pipeline:
    """Parse a pipeline string or preset; raise PipelineError on anything unknown or malformed."""
    spec = PRESETS.get(text.strip(), text)
    passes = []
    pos = 0
    spec = spec.strip()
    if not spec:
        raise PipelineError("empty pipeline; presets: " + ", ".join(PRESETS))
    while pos < len(spec):
        m = _PASS_RE.match(spec, pos)
        if not m or m.end() == pos:
            raise PipelineError(f"cannot parse pipeline {text!r} at character {pos}: {spec[pos:pos + 20]!r}")
        name, opts = m.group(1), m.group(2)
        if name not in registered_passes():
            raise PipelineError(_unknown_name(name))
        passes.append(make_pass(name, _parse_options(name, opts or "")))
        pos = m.end()
    return Pipeline(tuple(passes))


def _unknown_name(name: str) -> str:
    passes = registered_passes()
    hint = ""
    close = name.lower().replace("_", "-")
    if close in PRESETS:
        hint = f" (did you mean the preset {close!r}? names are lower case)"
    elif close in passes:
        hint = f" (did you mean the pass {close!r}? names are lower case)"
    return f"unknown pass {name!r}{hint}; valid passes: {', '.join(passes)}; presets: {', '.join(PRESETS)}"


def _parse_options(pass_name: str, text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    if re.search(r"=[^\s=]*,", text):
        fixed = " ".join(item.strip() for item in text.split(",") if item.strip())
        raise PipelineError(f"pass {pass_name!r}: options are separated by spaces, not commas: "
                            f"write {pass_name}{{{fixed}}}")
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise PipelineError(f"pass {pass_name!r}: option {item!r} must be written key=value")
        if key in out:
            raise PipelineError(f"pass {pass_name!r}: option {key!r} given twice")
        out[key] = value
    return out
