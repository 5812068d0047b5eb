"""The EPR training driver: task loss + lambda * rate through ONNX Runtime training, resumable.

Training is a driver, not a pass (STYLE.md): it takes the graph ``epr-reparam`` built, adds a loss
on a copy, trains the initializers the ``onnxcomp.epr`` metadata lists with AdamW, and returns
their trained values; the ``finetune`` pass writes them back. torch is never imported.

The loss graph (outputs in this order, as onnxcomp.ort_training expects the loss first):

    loss = task + onnxcomp.lambda * rate_bits / num_params     (scalar)
    task = SoftmaxCrossEntropyLoss(logits, labels)             loss "ce"
         = T^2 * mean(-sum(teacher * LogSoftmax(logits / T)))  loss "distill": teacher = softmax of
                                                                the original model's logits / T
    rate_bits, logits

Reproducibility: the batch order of epoch e comes from default_rng(seed * 1000 + e), the noise of
step s from default_rng([seed, s]), the learning rate and lambda from s alone; with one ORT thread
the float arithmetic is fixed too. A checkpoint holds parameters, AdamW moments and the step, so a
run resumed from one ends with the same bytes as a run never interrupted (a test checks this).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.data import Split, batches
from onnxcomp.errors import DataError, TrainingError
from onnxcomp.model_io import write_bytes_atomic
from onnxcomp.ort_training import TrainingSession, generate_artifacts

LAMBDA_INPUT = "onnxcomp.lambda"
LABELS_INPUT = "onnxcomp.labels"
TEACHER_INPUT = "onnxcomp.teacher"
LOSSES = ("auto", "ce", "distill")


@dataclass(frozen=True)
class TrainOptions:
    epochs: float = 25.0
    lam: float = 0.3
    lr: float = 1e-3
    batch: int = 128
    warmup_steps: int = 50
    decay: float = 0.5          # cosine to 0 over this final fraction of the steps
    lambda_warmup: float = 1.0  # epochs of linear lambda ramp
    loss: str = "auto"
    temperature: float = 1.0
    checkpoint_every: int = 500
    threads: int = 1


@dataclass
class TrainResult:
    parameters: dict[str, np.ndarray]
    history: list[dict]
    val_error: float | None      # of the rounded model, last epoch
    steps: int
    step_seconds: float          # median wall time of one training step
    loss: str                    # ce or distill


def lr_at(step: int, total: int, o: TrainOptions) -> float:
    """Linear warm-up, constant, then cosine to 0 over the last ``decay`` of the run."""
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    start = int(total * (1.0 - o.decay))
    if step < start:
        return o.lr
    return o.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - start) / max(1, total - start))))


def lambda_at(step: int, steps_per_epoch: int, o: TrainOptions) -> float:
    ramp = o.lambda_warmup * steps_per_epoch
    return o.lam if ramp <= 0 else o.lam * min(1.0, (step + 1) / ramp)


def noise_at(seed: int, step: int, n: int) -> np.ndarray:
    """Uniform(-1/2, 1/2) noise of step ``step``: a function of (seed, step) only, so resumable."""
    return np.random.default_rng([seed, step]).random(n, dtype=np.float32) - np.float32(0.5)


def loss_graph(model: onnx.ModelProto, rate_output: str, num_params: int, loss: str, temperature: float,
               output_rank: int) -> onnx.ModelProto:
    """A copy of the EPR graph with the loss first and logits, rate after it (see module doc).
    ``output_rank`` is the rank of the model's first output (the logits [N, classes, ...])."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    g = out.graph
    logits = g.output[0]
    rate = next(o for o in g.output if o.name == rate_output)
    lam = helper.make_tensor_value_info(LAMBDA_INPUT, TensorProto.FLOAT, [])
    consts = {"onnxcomp.loss.per_param": 1.0 / num_params}
    nodes = []
    if loss == "ce":
        dims = ["batch"] + [f"d{i}" for i in range(2, output_rank)]  # the logits' shape without the class axis
        g.input.append(helper.make_tensor_value_info(LABELS_INPUT, TensorProto.INT64, dims))
        nodes.append(helper.make_node("SoftmaxCrossEntropyLoss", [logits.name, LABELS_INPUT],
                                      ["onnxcomp.loss.task", "onnxcomp.loss.log_prob"], reduction="mean"))
    else:
        dims = ["batch", "classes"] + [f"d{i}" for i in range(2, output_rank)]
        g.input.append(helper.make_tensor_value_info(TEACHER_INPUT, TensorProto.FLOAT, dims))
        consts.update({"onnxcomp.loss.inv_t": 1.0 / temperature, "onnxcomp.loss.neg_t2": -temperature**2})
        g.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "onnxcomp.loss.class_axis"))
        nodes += [
            helper.make_node("Mul", [logits.name, "onnxcomp.loss.inv_t"], ["onnxcomp.loss.scaled"]),
            helper.make_node("LogSoftmax", ["onnxcomp.loss.scaled"], ["onnxcomp.loss.log_p"], axis=1),
            helper.make_node("Mul", [TEACHER_INPUT, "onnxcomp.loss.log_p"], ["onnxcomp.loss.cross"]),
            helper.make_node("ReduceSum", ["onnxcomp.loss.cross", "onnxcomp.loss.class_axis"], ["onnxcomp.loss.per_sample"], keepdims=0),
            helper.make_node("ReduceMean", ["onnxcomp.loss.per_sample"], ["onnxcomp.loss.mean"], keepdims=0),
            helper.make_node("Mul", ["onnxcomp.loss.mean", "onnxcomp.loss.neg_t2"], ["onnxcomp.loss.task"]),
        ]
    for name, value in consts.items():
        g.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
    nodes += [
        helper.make_node("Mul", [rate.name, "onnxcomp.loss.per_param"], ["onnxcomp.loss.rate_per_param"]),
        helper.make_node("Mul", [LAMBDA_INPUT, "onnxcomp.loss.rate_per_param"], ["onnxcomp.loss.weighted_rate"]),
        helper.make_node("Add", ["onnxcomp.loss.task", "onnxcomp.loss.weighted_rate"], ["onnxcomp.loss"]),
    ]
    g.node.extend(nodes)
    g.input.append(lam)
    scalar = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [])  # noqa: E731
    outputs = [scalar("onnxcomp.loss"), scalar("onnxcomp.loss.task"), scalar(rate.name), logits]
    del g.output[:]
    g.output.extend(outputs)
    return out


def softmax(x: np.ndarray, temperature: float) -> np.ndarray:
    z = x.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def check_labels(split: Split, which: str, probe: np.ndarray) -> None:
    """DataError unless ``split``'s labels fit model outputs shaped like ``probe`` [N, classes, ...]."""
    if split.labels is None:
        raise DataError(f"loss 'ce' needs labels; the {which} split has none (use loss=distill)")
    classes = probe.shape[1]
    labels = split.labels
    if tuple(labels.shape[1:]) != tuple(probe.shape[2:]):
        raise DataError(f"{which} labels of shape {labels.shape} do not fit model output {probe.shape}: "
                        f"want [N{''.join(', ' + str(d) for d in probe.shape[2:])}]")
    bad = np.flatnonzero((labels < 0) | (labels >= classes))
    if bad.size:
        sample = int(bad[0]) // max(1, int(np.prod(labels.shape[1:])))
        raise DataError(f"{which} label {int(labels.flat[bad[0]])} at sample {sample} is out of range: "
                        f"the model has {classes} classes (0..{classes - 1})")


def resolve_loss(loss: str, train: Split, teacher: Teacher, who: str) -> tuple[str, np.ndarray]:
    """``loss`` with "auto" resolved (ce when the train split has labels, else distill), checked
    against the model's output, and that output for two samples (the probe: [2, classes, ...])."""
    resolved = loss if loss != "auto" else ("ce" if train.labels is not None else "distill")
    probe = teacher.logits(train.take(slice(0, 2)).inputs)
    if probe.ndim < 2:
        raise DataError(f"model output of shape {probe.shape} has no class axis: {who}'s losses need [N, classes, ...]")
    if resolved == "ce":
        check_labels(train, "train", probe)
    return resolved, probe


def task_feed(batch: Split, loss: str, teacher: Teacher, temperature: float) -> dict[str, np.ndarray]:
    """A batch's inputs plus the task loss's targets: labels (ce) or the teacher's soft outputs."""
    feed = dict(batch.inputs)
    if loss == "ce":
        feed[LABELS_INPUT] = batch.labels.astype(np.int64)
    else:
        feed[TEACHER_INPUT] = softmax(teacher.logits(batch.inputs), temperature)
    return feed


def hash_split(digest, split: Split) -> None:
    """Feed a sample of ``split`` (every len/64-th row of each array) to a hashlib digest: enough
    for a resume fingerprint to tell data sets apart without hashing all of them."""
    for array in (*split.inputs.values(), *(() if split.labels is None else (split.labels,))):
        digest.update(np.ascontiguousarray(array[:: max(1, len(array) // 64)]).tobytes())


class Teacher:
    """The original model, run by onnxruntime: soft targets for distillation, reference predictions."""

    def __init__(self, model_bytes: bytes) -> None:
        import onnxruntime as ort

        from onnxcomp.ort_training import session_options

        self.session = ort.InferenceSession(model_bytes, session_options(1), providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.session.run(None, {n: inputs[n] for n in self.inputs})[0])


class EprTrainer:
    """One fine-tuning run of an EPR graph (``model``: onnx.ModelProto with the metadata)."""

    def __init__(self, model: onnx.ModelProto, spec, train: Split, val: Split | None, options: TrainOptions, *,
                 seed: int, work_dir: Path, teacher: Teacher, say: Callable[[str], None], progress: bool) -> None:
        self.spec, self.train, self.val, self.o = spec, train, val, options
        self.seed, self.work_dir, self.teacher, self.say, self.progress = seed, Path(work_dir), teacher, say, progress
        self.loss, probe = resolve_loss(options.loss, train, teacher, "finetune")
        self.output_shape = probe.shape[1:]  # per sample: [classes, ...]
        self.graph = loss_graph(model, spec.rate_output, spec.num_params, self.loss, options.temperature, probe.ndim)
        self.steps_per_epoch = math.ceil(len(train) / options.batch)
        self.total_steps = max(1, round(options.epochs * self.steps_per_epoch))
        # What a checkpoint must match to be resumed: the graph, the data, the seed, the options.
        digest = hashlib.sha256(self.graph.SerializeToString())
        digest.update(json.dumps([asdict(options), seed, len(train)], sort_keys=True).encode())
        hash_split(digest, train)
        self.fingerprint = digest.hexdigest()

    # -- checkpoints ---------------------------------------------------------------------------

    @property
    def _checkpoint(self) -> Path:
        return self.work_dir / "checkpoint"

    @property
    def _state_file(self) -> Path:
        return self.work_dir / "state.json"

    def _load_state(self, resume: bool) -> dict | None:
        if not resume or not self._state_file.exists() or not self._checkpoint.exists():
            return None
        state = json.loads(self._state_file.read_text())
        if state.get("fingerprint") != self.fingerprint:
            raise TrainingError(f"the checkpoint in {self.work_dir} is from a different model, data, seed or options; "
                                "run without --resume to start over")
        return state

    def _save(self, session: TrainingSession, history: list[dict]) -> None:
        session.save_checkpoint(self._checkpoint)
        state = {"fingerprint": self.fingerprint, "step": session.steps, "history": history}
        write_bytes_atomic(self._state_file, json.dumps(state).encode())

    # -- training ------------------------------------------------------------------------------

    def run(self, resume: bool = False) -> TrainResult:
        state = self._load_state(resume)
        if state is None and self.work_dir.exists():
            shutil.rmtree(self.work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        artifacts = generate_artifacts(self.graph, self.spec.trainable, [], self.work_dir / "artifacts")
        session = TrainingSession(artifacts, lr=self.o.lr, seed=self.seed, threads=self.o.threads,
                                  checkpoint=self._checkpoint if state else None)
        history: list[dict] = state["history"] if state else []
        if state:
            self.say(f"  resuming at step {session.steps} of {self.total_steps} from {self.work_dir}")
        step_times: list[float] = []
        last_good = session.steps
        bar = self._bar(session.steps)
        while session.steps < self.total_steps:
            epoch, position = divmod(session.steps, self.steps_per_epoch)
            sums = {"task": 0.0, "rate": 0.0, "n": 0}
            for batch_index, batch in enumerate(batches(self.train, self.o.batch, shuffle_seed=self.seed * 1000 + epoch)):
                if batch_index < position:
                    continue  # resumed mid-epoch: these batches were trained before the interruption
                if session.steps >= self.total_steps:
                    break
                step = session.steps
                start = time.perf_counter()  # a step's wall time includes drawing its noise
                session.set_lr(lr_at(step, self.total_steps, self.o))
                feed = self._feed(batch, lambda_at(step, self.steps_per_epoch, self.o), noise_at(self.seed, step, self.spec.num_params))
                try:
                    _, task, rate, _ = session.step(feed)
                except TrainingError as failure:
                    raise TrainingError(
                        f"{failure}; stopped. The last good checkpoint (step {last_good}) is kept in {self.work_dir}; "
                        "check the data for NaN/inf, or start over with a lower finetune{lr=..} or lambda "
                        "(--resume continues from that checkpoint with unchanged options)") from failure
                step_times.append(time.perf_counter() - start)
                sums["task"] += float(task)
                sums["rate"] += float(rate)
                sums["n"] += 1
                if bar is not None:
                    bar.update(1)
                    if sums["n"] % 20 == 0:
                        bar.set_postfix_str(f"task {sums['task'] / sums['n']:.4f} rate {sums['rate'] / sums['n'] / self.spec.num_params:.3f} b/w")
                if session.steps % self.o.checkpoint_every == 0 and session.steps < self.total_steps:
                    self._save(session, history)
                    last_good = session.steps
            if sums["n"] == 0:
                continue
            history.append(self._epoch_row(session, epoch, sums))
            self._save(session, history)
            last_good = session.steps
        if bar is not None:
            bar.close()
        params = session.parameters(trainable_only=True)
        val = history[-1].get("val_error") if history else None
        step_seconds = float(np.median(step_times)) if step_times else float("nan")
        return TrainResult(params, history, val, session.steps, step_seconds, self.loss)

    def _feed(self, batch: Split, lam: float, noise: np.ndarray) -> dict[str, np.ndarray]:
        feed = task_feed(batch, self.loss, self.teacher, self.o.temperature)
        feed[LAMBDA_INPUT] = np.float32(lam)
        feed[self.spec.noise_input] = noise
        return feed

    def evaluate(self, session: TrainingSession, split: Split) -> float:
        """Error of the rounded model (noise off) on ``split``: against its labels, else the share of
        samples whose arg-max differs from the original model's."""
        zeros = np.zeros(self.spec.num_params, np.float32)
        wrong = 0
        for batch in batches(split, 500):
            feed = dict(batch.inputs)
            feed[LAMBDA_INPUT] = np.float32(0.0)
            feed[self.spec.noise_input] = zeros
            truth = batch.labels if batch.labels is not None else self.teacher.logits(batch.inputs).argmax(axis=1)
            if self.loss == "ce":  # the task output is not read: any valid targets do
                feed[LABELS_INPUT] = np.zeros(truth.shape, np.int64)
            else:
                feed[TEACHER_INPUT] = np.zeros((len(batch), *self.output_shape), np.float32)
            pred = np.asarray(session.eval(feed)[3]).argmax(axis=1)
            wrong += int(np.count_nonzero(np.any((pred != truth).reshape(len(batch), -1), axis=1)))
        return wrong / len(split)

    def _epoch_row(self, session: TrainingSession, epoch: int, sums: dict) -> dict:
        from onnxcomp.passes.epr_reparam import latent_entropy_bits

        params = session.parameters(trainable_only=True)
        entropy = latent_entropy_bits(self.spec, params)
        row = {"epoch": epoch + 1, "step": session.steps, "task_loss": sums["task"] / sums["n"],
               "graph_rate_bits_per_weight": sums["rate"] / sums["n"] / self.spec.num_params,
               "entropy_bits_per_weight": entropy / self.spec.num_params, "estimated_bytes": entropy / 8.0}
        if self.val is not None:
            row["val_error"] = self.evaluate(session, self.val)
        self.say(f"  epoch {epoch + 1}/{math.ceil(self.total_steps / self.steps_per_epoch)}: task {row['task_loss']:.4f}, "
                 f"rate {row['graph_rate_bits_per_weight']:.3f} bits/weight (noisy), latents "
                 f"{row['entropy_bits_per_weight']:.3f} bits/weight ({row['estimated_bytes'] / 1000:.1f} KB)"
                 + (f", val error {100 * row['val_error']:.2f}%" if "val_error" in row else ""))
        return row

    def _bar(self, start: int):
        if not self.progress or not sys.stderr.isatty():
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(total=self.total_steps, initial=start, unit="step", file=sys.stderr, leave=False, dynamic_ncols=True)
