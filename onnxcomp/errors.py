"""The one error hierarchy of onnxcomp.

Every failure a user can cause (a bad file, a bad option, a tampered bitstream, data that does not
fit) raises a subclass of :class:`OnnxcompError` whose message names the node, tensor, option or
file at fault. The CLI prints ``error: <message>`` and exits with :attr:`OnnxcompError.exit_code`;
anything else escaping is a bug in onnxcomp, not in the user's input.

This module imports nothing heavy: the deploy-only runtime (``onnxcomp.runtime``) uses it too.
"""

from __future__ import annotations


def first_line(failure: BaseException) -> str:
    """The first line of a third-party exception's message (onnxruntime's and onnx's carry C++
    context after it), or its type's name when it has none: what an error message quotes."""
    text = str(failure).strip()
    return text.splitlines()[0] if text else type(failure).__name__


class OnnxcompError(Exception):
    """Base class of every error onnxcomp raises on purpose."""

    exit_code = 1


class ModelLoadError(OnnxcompError):
    """The model file is missing, not ONNX, truncated, or its external data cannot be read."""

    exit_code = 3


class ModelError(OnnxcompError):
    """The model is ONNX but cannot be processed (unsupported opset, invalid graph, ...)."""

    exit_code = 4


class NothingToCompressError(ModelError):
    """A pipeline that must compress something found no weight it can handle."""


class PipelineError(OnnxcompError):
    """A pipeline string names an unknown pass or option, or an option value is invalid."""

    exit_code = 2


class UsageError(OnnxcompError):
    """The command line asks for something that cannot be done (an output path that is a folder)."""

    exit_code = 2


class PassError(OnnxcompError):
    """A pass failed, or the model failed verification after a pass."""

    exit_code = 4


class DataError(OnnxcompError):
    """A data spec cannot be resolved, or its arrays do not fit the model."""

    exit_code = 5


class FormatError(OnnxcompError):
    """An ``ai.onnxcomp`` node or its tensors violate FORMAT.md (bad table, size, CRC, version)."""

    exit_code = 6


class TrainingError(OnnxcompError):
    """ONNX Runtime training could not be set up or diverged."""

    exit_code = 7
