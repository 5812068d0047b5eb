"""ONNX Runtime on-device training without torch: artifacts, a session wrapper, trained weights out.

Why this module exists: ``import onnxruntime.training`` imports torch (through its ``optim`` and
``amp`` subpackages) although the on-device training API never uses it. :func:`training_api`
registers the ``onnxruntime.training`` package object by hand so that only ``artifacts``,
``onnxblock`` and ``api`` load, and checks that torch stayed out.

Contract of the training graphs (what onnxruntime-training 1.19's on-device API accepts, as
measured when this wrapper was written):

* the model's FIRST graph output is the scalar loss; the others (e.g. logits) are returned by
  :meth:`TrainingSession.step` and :meth:`TrainingSession.eval` after it, in graph order;
* trainable tensors are initializers (not Constant nodes, not inside subgraphs);
* the optimizer is AdamW with one learning rate for every parameter (set per step).

:func:`generate_artifacts` writes the four artifacts into a directory of the caller's choosing,
never into the working directory, and keeps ORT's INFO lines off the terminal. Failures are
:class:`~onnxcomp.errors.TrainingError` naming the op, node or tensor at fault.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from onnxcomp.errors import TrainingError, first_line
from onnxcomp.model_io import load_proto

_NO_GRADIENT = re.compile(r"gradient builder has not been registered: (\S+)")
_STEPS = "onnxcomp.steps"
_OPTIONAL_OUTPUT_NEEDED = {"SoftmaxCrossEntropyLoss": "log_prob", "Dropout": "mask"}


def training_api() -> types.SimpleNamespace:
    """Return ``SimpleNamespace(artifacts, onnxblock, api)`` of ORT training, importing no torch.

    Raises TrainingError when the installed onnxruntime is not a training build, or when the
    import pulled torch in after all (a changed ORT layout this module must be adapted to).
    """
    torch_before = "torch" in sys.modules
    if "onnxruntime.training" not in sys.modules:
        package_dir = Path(ort.__file__).parent / "training"
        if not (package_dir / "api").is_dir():
            raise TrainingError(
                f"onnxruntime at {Path(ort.__file__).parent} is not a training build: "
                "install onnxruntime-training-cpu==1.19.2 (and never plain onnxruntime beside it)"
            )
        package = types.ModuleType("onnxruntime.training")
        package.__path__ = [str(package_dir)]
        package.__file__ = str(package_dir / "__init__.py")
        sys.modules["onnxruntime.training"] = package
        ort.training = package
    from onnxruntime.training import api, artifacts, onnxblock

    if not torch_before and "torch" in sys.modules:
        raise TrainingError("importing onnxruntime.training pulled in torch; adapt training_api()")
    return types.SimpleNamespace(artifacts=artifacts, onnxblock=onnxblock, api=api)


def session_options(threads: int = 0) -> ort.SessionOptions:
    """Session options for training and evaluation: no busy-waiting thread pools.

    ``threads=0`` lets ORT use every core. Results are bit-reproducible for a fixed thread count;
    a different count may change float summation order.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


@dataclass(frozen=True)
class TrainingArtifacts:
    """The files :func:`generate_artifacts` wrote, and the names needed to drive them."""

    directory: Path
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    trainable: tuple[str, ...]

    @property
    def training_model(self) -> Path:
        return self.directory / "training_model.onnx"

    @property
    def eval_model(self) -> Path:
        return self.directory / "eval_model.onnx"

    @property
    def optimizer_model(self) -> Path:
        return self.directory / "optimizer_model.onnx"

    @property
    def checkpoint(self) -> Path:
        return self.directory / "checkpoint"


def generate_artifacts(
    model: onnx.ModelProto | str | os.PathLike,
    requires_grad: Sequence[str],
    frozen_params: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    weight_decay: float = 0.0,
) -> TrainingArtifacts:
    """Build training, eval and AdamW optimizer models plus the initial checkpoint in ``out_dir``.

    ``model``'s first output must be the scalar loss. ``requires_grad`` are the initializers to
    train, ``frozen_params`` the initializers kept as updatable-but-constant parameters (every other
    initializer is baked into the graphs). The caller's model is not modified; on the copy,
    initializers that are also graph inputs lose that input entry (ORT needs that).
    ``weight_decay`` is AdamW's decoupled decay, fixed in the optimizer graph.
    """
    if not isinstance(model, onnx.ModelProto):
        model = load_proto(model)  # in memory: ORT's path mode writes temp files next to the CWD
    else:
        model = onnx.ModelProto.FromString(model.SerializeToString())
    _check_trainable(model, requires_grad, frozen_params)
    lib = training_api()
    directory = Path(out_dir).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    with _quiet_stderr() as captured, _working_directory(directory):
        try:
            lib.artifacts.generate_artifacts(
                model,
                requires_grad=list(requires_grad),
                frozen_params=list(frozen_params),
                loss=None,
                optimizer=lib.onnxblock.optim.AdamW(weight_decay=weight_decay),
                artifact_directory=directory,
            )
        except Exception as failure:  # ORT raises bare RuntimeError with C++ context
            raise _explain_failure(failure, model, captured()) from failure
    graph_inputs = [i.name for i in model.graph.input]
    return TrainingArtifacts(
        directory=directory,
        input_names=tuple(graph_inputs),
        output_names=tuple(o.name for o in model.graph.output),
        trainable=tuple(requires_grad),
    )


class TrainingSession:
    """One training run over :class:`TrainingArtifacts`: forward+backward+AdamW per :meth:`step`.

    Inputs are given by name (a mapping holding exactly the graph's non-parameter inputs); outputs
    come back as a tuple in graph order, loss first. ``seed`` seeds ORT's random ops (RandomUniform
    noise), so a run is repeatable. ``checkpoint`` resumes from a file written by
    :meth:`save_checkpoint` (parameters, AdamW moments and step count) instead of the initial one.
    A non-finite loss raises TrainingError before the optimizer applies it.
    """

    def __init__(
        self,
        artifacts: TrainingArtifacts,
        *,
        lr: float,
        seed: int = 0,
        threads: int = 0,
        checkpoint: str | os.PathLike | None = None,
    ) -> None:
        api = training_api().api
        ort.set_seed(seed)
        source = Path(checkpoint) if checkpoint is not None else artifacts.checkpoint
        if not source.exists():
            raise TrainingError(f"checkpoint {source} does not exist")
        try:
            self._state = api.CheckpointState.load_checkpoint(source)
            self._module = api.Module(
                artifacts.training_model, self._state, artifacts.eval_model, session_options=session_options(threads)
            )
            self._optimizer = api.Optimizer(artifacts.optimizer_model, self._module)
        except Exception as failure:
            raise TrainingError(f"cannot open training artifacts in {artifacts.directory}: {failure}") from failure
        self._train_inputs = tuple(self._module.train().input_names())
        self._eval_inputs = tuple(self._module.eval().input_names())
        properties = self._state.properties
        self.steps = int(properties[_STEPS]) if _STEPS in properties else 0
        self.set_lr(lr)

    @property
    def lr(self) -> float:
        return float(self._optimizer.get_learning_rate())

    def set_lr(self, lr: float) -> None:
        """Learning rate for the following steps (one rate for every parameter)."""
        if not lr >= 0.0:
            raise TrainingError(f"learning rate must be >= 0, got {lr}")
        self._optimizer.set_learning_rate(float(lr))

    def step(self, inputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        """Forward, backward and one AdamW update; returns the training graph's outputs."""
        outputs = self._run(True, inputs, self._train_inputs)
        loss = float(np.asarray(outputs[0]).sum())
        if not np.isfinite(loss):
            self._module.lazy_reset_grad()
            raise TrainingError(f"training diverged: loss is {loss} at step {self.steps}")
        self._optimizer.step()
        self._module.lazy_reset_grad()
        self.steps += 1
        return outputs

    def eval(self, inputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        """Forward pass of the eval graph (training-only behaviour off); no update."""
        return self._run(False, inputs, self._eval_inputs)

    def _run(self, training: bool, inputs: Mapping[str, np.ndarray], names: tuple[str, ...]) -> tuple:
        missing = [n for n in names if n not in inputs]
        unknown = [n for n in inputs if n not in names]
        if missing or unknown:
            raise TrainingError(f"graph inputs are {list(names)}: missing {missing}, unknown {unknown}")
        self._module.train(training)
        # asarray, not ascontiguousarray: the latter turns scalar inputs (lambda, a noise switch)
        # into shape [1], which the graph then warns about on every step.
        outputs = self._module(*[np.asarray(inputs[n], order="C") for n in names])
        # A graph with one output gets it back as an OrtValue, not an array.
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return tuple(o.numpy() if isinstance(o, ort.OrtValue) else o for o in outputs)

    def parameters(self, trainable_only: bool = False) -> dict[str, np.ndarray]:
        """Current parameter values by name (copies), read from the checkpoint state."""
        return {
            name: np.array(parameter.data)
            for name, parameter in self._state.parameters
            if parameter.requires_grad or not trainable_only
        }

    def set_parameters(self, values: Mapping[str, np.ndarray]) -> None:
        """Overwrite parameters by name (e.g. to start from values computed outside ORT)."""
        current = self.parameters()
        for name, value in values.items():
            if name not in current:
                raise TrainingError(f"{name!r} is not a training parameter; parameters: {sorted(current)}")
            if np.shape(value) != current[name].shape:
                raise TrainingError(f"parameter {name!r} has shape {current[name].shape}, got {np.shape(value)}")
            self._state.parameters[name] = np.ascontiguousarray(value, dtype=current[name].dtype)

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write parameters, AdamW state and the step count atomically, for resuming."""
        path = Path(path)
        self._state.properties[_STEPS] = self.steps
        partial = path.with_name(path.name + ".partial")
        training_api().api.CheckpointState.save_checkpoint(self._state, partial, include_optimizer_state=True)
        os.replace(partial, path)


def apply_parameters(model: onnx.ModelProto, values: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers named in ``values`` hold those values.

    This is how trained weights leave training: the inference graph stays exactly the one the
    builder (or a pass) made. Every name must be an initializer of the same shape.
    """
    result = onnx.ModelProto.FromString(model.SerializeToString())
    by_name = {t.name: t for t in result.graph.initializer}
    for name, value in values.items():
        if name not in by_name:
            raise TrainingError(f"trained parameter {name!r} is not an initializer of graph {model.graph.name!r}")
        if tuple(by_name[name].dims) != np.shape(value):
            raise TrainingError(f"initializer {name!r} has shape {tuple(by_name[name].dims)}, trained {np.shape(value)}")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(by_name[name].data_type)
        by_name[name].CopyFrom(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
    return result


def _check_trainable(model: onnx.ModelProto, requires_grad: Sequence[str], frozen: Sequence[str]) -> None:
    """Reject what ORT would reject with an opaque C++ message; drop inputs that shadow weights."""
    initializers = {t.name for t in model.graph.initializer}
    missing = [n for n in [*requires_grad, *frozen] if n not in initializers]
    if missing:
        raise TrainingError(f"not initializers of graph {model.graph.name!r}, cannot train: {missing}")
    both = sorted(set(requires_grad) & set(frozen))
    if both:
        raise TrainingError(f"parameters both trainable and frozen: {both}")
    if not requires_grad:
        raise TrainingError("requires_grad is empty: nothing to train")
    if not model.graph.output:
        raise TrainingError(f"graph {model.graph.name!r} has no outputs; the first must be the loss")
    kept = [i for i in model.graph.input if i.name not in initializers]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    for node in model.graph.node:
        needed = _OPTIONAL_OUTPUT_NEEDED.get(node.op_type)
        if needed and (len(node.output) < 2 or not node.output[1]):
            raise TrainingError(
                f"{node.op_type} node {node.name or node.output[0]!r} must produce its optional "
                f"{needed!r} output, else ORT's gradient builder crashes"
            )


def _explain_failure(failure: Exception, model: onnx.ModelProto, log: str) -> TrainingError:
    text = str(failure)
    found = _NO_GRADIENT.search(text)
    if found:
        op_type = found.group(1)
        nodes = [n.name or n.output[0] for n in model.graph.node if n.op_type == op_type]
        return TrainingError(
            f"op {op_type} has no gradient builder in ONNX Runtime training (nodes {nodes}); "
            "rewrite it with differentiable ops or keep it off the path from loss to trainables"
        )
    problems = [line for line in log.splitlines() if "[E:" in line or "[W:" in line]
    detail = f"; ORT log: {problems[-1]}" if problems else ""
    return TrainingError(f"generate_artifacts failed for graph {model.graph.name!r}: {first_line(failure)}{detail}")


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """Run ORT's onnxblock code inside the artifact folder.

    Every onnxblock ``Block`` records ``<cwd>/temp.onnx`` when it is created and deletes that file
    when garbage-collected, so a user's own ``temp.onnx`` in the working directory would vanish;
    for path inputs it would also write it there. Blocks must therefore be created in here.
    """
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator:
    """Send file descriptor 2 (ORT's C++ logger writes INFO lines there) to a temp file.

    Yields a function returning what was captured so far, for error messages.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)

        def captured() -> str:
            sink.flush()
            sink.seek(0)
            return sink.read().decode("utf-8", "replace")

        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
