"""The pass contract and the registry of passes.

A pass is a small in-place transformation of an onnx-ir model (``onnx_ir.passes.InPlacePass``):
``call(model)`` returns ``PassResult(model, modified)``. Its options are dataclass fields with a
default and a ``help`` text in the field metadata; pipelines set them by name
(``quantize{bits=5}``). Passes that need more than the model (data, a seed, the report) read
:class:`CompileContext`, which the pipeline runner hands to every pass before it runs. What a
pass found beyond the model (a training run, a budget search) it records there as a typed
:class:`PassReport`, which the report prints without knowing the method.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import onnx_ir as ir

from onnxcomp.errors import PipelineError


@dataclass
class CompileContext:
    """What a compile run shares between passes."""

    data: Any = None  # onnxcomp.data.Dataset or None: passes use only its train/val splits
    seed: int = 0
    max_error_increase: float | None = None
    max_error: float | None = None  # absolute error budget on the validation split
    progress: bool = True
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)  # progress lines
    # For passes that train: the model as the user gave it (a teacher, the error baseline), where
    # checkpoints go, and whether to resume from the ones found there.
    # The onnx.ModelProto, or a function loading it: read from the file only by the passes that
    # need it (a 2 GB model held once more for nothing would be 2 GB more peak memory).
    original_source: Any = None
    work_dir: Path | None = None
    resume: bool = False
    # Per-tensor facts passes record for the report, keyed by the weight's original name.
    tensor_notes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # What whole passes found (a training run, a budget search), one typed record per section.
    results: dict[str, PassReport] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    @property
    def original_model(self) -> Any:
        """The model as the user gave it (onnx.ModelProto), None when the run has none."""
        if callable(self.original_source):
            self.original_source = self.original_source()
        return self.original_source

    def note(self, tensor: str, **facts: Any) -> None:
        self.tensor_notes.setdefault(tensor, {}).update(facts)

    def record(self, result: PassReport) -> None:
        """Keep a pass's result for the report (a later record of the same section replaces it)."""
        self.results[result.section] = result

    def warn(self, line: str) -> None:
        """A note the user should see now and find in the report's ``notes`` later."""
        self.log.append(line)
        self.say(line)


class PassReport:
    """Base of the typed results passes hand the report: a dataclass with a ``section`` name.

    The report writes ``as_json()`` under ``section`` and adds ``summary()`` (one paragraph, or
    None) below the before/after table, so a new method reports itself without the report
    knowing it.
    """

    section: ClassVar[str] = ""

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str | None:
        return None


class CompressionPass(ir.passes.InPlacePass):
    """Base of onnxcomp passes: kebab-case ``name``, options as dataclass fields."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    context: CompileContext

    @property
    def trains(self) -> bool:
        """Whether the pass trains on a train split (validating on val): compile then splits a
        one-split data spec (a flat .npz) for it (``onnxcomp.data.split_for_training``)."""
        return False

    def __post_init__(self) -> None:
        self.context = CompileContext()
        self.validate_options()

    def validate_options(self) -> None:
        """Raise PipelineError naming the option when a value is out of range."""

    def option_error(self, option: str, value: Any, want: str) -> PipelineError:
        """The error ``validate_options`` raises: "pass 'NAME': option OPTION=VALUE must be WANT"."""
        return PipelineError(f"pass {self.name!r}: option {option}={value} must be {want}")

    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.init]

    def changed_options(self) -> dict[str, Any]:
        return {option_name(f): getattr(self, f.name) for f in self.options() if getattr(self, f.name) != f.default}

    def __str__(self) -> str:
        opts = self.changed_options()
        if not opts:
            return self.name
        return self.name + "{" + " ".join(f"{k}={format_value(v)}" for k, v in opts.items()) + "}"


def option_name(f: dataclasses.Field) -> str:
    """The option's name in pipeline text: the field name, unless metadata ``option`` renames it
    (``lambda`` is a Python keyword, so finetune's field is ``lam``)."""
    return f.metadata.get("option", f.name)


def format_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return ":".join(format_value(x) for x in v)
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))  # epochs=25, not 25.0 (the option still takes fractions)
    return str(v)


def parse_value(pass_name: str, opt: dataclasses.Field, text: str, hints: dict[str, Any]) -> Any:
    """Convert option text to the field's type (int, float, bool, str, tuple of float/int)."""
    kind = hints[opt.name]
    origin = typing.get_origin(kind)
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        if text in ("none", "None"):
            return None
        kind = args[0]
        origin = typing.get_origin(kind)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if kind in (int, float, str):
            return kind(text)
        if origin is tuple:
            elem = typing.get_args(kind)[0]
            return tuple(elem(x) for x in text.split(":") if x)
    except ValueError:
        pass
    else:
        raise PipelineError(f"pass {pass_name!r}: option {opt.name!r} has unsupported type {kind}")
    raise PipelineError(f"pass {pass_name!r}: option {opt.name}={text!r} is not a valid {getattr(kind, '__name__', kind)}")


_REGISTRY: dict[str, type[CompressionPass]] = {}


def register_pass(cls: type[CompressionPass]) -> type[CompressionPass]:
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"pass name {cls.name!r} is empty or registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def registered_passes() -> dict[str, type[CompressionPass]]:
    import onnxcomp.passes  # noqa: F401  (importing the package registers every pass)

    return dict(sorted(_REGISTRY.items()))


def make_pass(name: str, raw_options: dict[str, str]) -> CompressionPass:
    passes = registered_passes()
    if name not in passes:
        raise PipelineError(f"unknown pass {name!r}; valid passes: {', '.join(passes)}")
    cls = passes[name]
    hints = typing.get_type_hints(cls)
    fields = {option_name(f): f for f in cls.options()}
    kwargs = {}
    for key, text in raw_options.items():
        if key not in fields:
            valid = ", ".join(fields) or "(none)"
            raise PipelineError(f"pass {name!r} has no option {key!r}; valid options: {valid}")
        kwargs[fields[key].name] = parse_value(name, fields[key], text, hints)
    return cls(**kwargs)
