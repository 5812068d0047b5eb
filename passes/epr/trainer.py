"""EPR's training loop: task loss + lambda * rate through ONNX Runtime training, resumable.

Training is a driver, not a pass: :class:`EprTrainer` takes the graph ``epr-reparam`` built, adds
the task loss on a copy (``onnxcomp.training.losses``: cross-entropy or distillation, plus
``lambda * rate_bits / num_params``), trains the initializers the ``onnxcomp.epr`` metadata lists
with AdamW, and returns their trained values; the ``finetune`` pass writes them back.

Reproducibility: the batch order of epoch e comes from default_rng(seed * 1000 + e), the noise of
step s from default_rng([seed, s]), the learning rate and lambda from s alone; with one ORT thread
the float arithmetic is fixed too. A checkpoint holds parameters, AdamW moments and the step, so a
run resumed from one ends with the same bytes as a run never interrupted (a test checks this).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcomp.data import Split, batches
from onnxcomp.errors import TrainingError
from onnxcomp.metrics import error_rate, predictions, truth_rows
from onnxcomp.passes.epr.form import EprSpec, latent_entropy_bits
from onnxcomp.training.outputs import parse_declarations
from onnxcomp.training.losses import (LAMBDA_INPUT, Teacher, change_on, loss_graph, placeholder_targets, resolve_loss,
                                      task_feed)
from onnxcomp.training.session import TrainingSession, generate_artifacts
from onnxcomp.training.trainable import fixed_batch, trainable_form, training_sample
from onnxcomp.training.workspace import RunDir, fingerprint

EVAL_BATCH = 500


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
    outputs: str = ""           # declared output kinds (onnxcomp.training.outputs.parse_declarations)
    # Continuation (finetune's budget search): lambda rises geometrically from ``lam`` to
    # ``lambda_end`` over the run instead of staying at ``lam``; with ``cycle_epochs`` it rises
    # once per cycle, and the learning rate restarts every cycle (peak, cosine to 0: ``decay`` is
    # not used), so each lambda's model is measured settled, not mid-flight at the peak rate.
    lambda_end: float | None = None
    cycle_epochs: int = 0
    # Keep the smallest epoch whose val error is at most this (the start, epoch 0, included), not
    # the last one; None: the last epoch, except distilling on unlabeled data (see ``run``).
    keep_within: float | None = None
    # With ``keep_within``: stop once this many epochs in a row were over it after one met it (0: never).
    patience: int = 0


@dataclass
class TrainResult:
    parameters: dict[str, np.ndarray]
    history: list[dict]
    val_error: float | None      # of the rounded model: the kept epoch's (the last one's by default)
    steps: int
    step_seconds: float          # median wall time of one training step
    loss: str                    # ce or distill
    kept: dict | None = None     # with a budget to keep within: the kept epoch (0 = the start), its
                                 # val error, estimated bytes, lambda, and whether it met the budget

    @property
    def estimated_bytes(self) -> float | None:
        if self.kept is not None:
            return self.kept["estimated_bytes"]
        return self.history[-1]["estimated_bytes"] if self.history else None


def lr_at(step: int, total: int, o: TrainOptions, steps_per_epoch: int) -> float:
    """Linear warm-up, constant, then cosine to 0 over the last ``decay`` of the run; with
    ``cycle_epochs``, cosine from the peak within every cycle (warm restarts)."""
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    if o.cycle_epochs:
        cycle = o.cycle_epochs * steps_per_epoch
        return o.lr * 0.5 * (1.0 + math.cos(math.pi * (step % cycle) / cycle))
    start = int(total * (1.0 - o.decay))
    if step < start:
        return o.lr
    return o.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - start) / max(1, total - start))))


def lambda_at(step: int, steps_per_epoch: int, total: int, o: TrainOptions) -> float:
    """``lam`` (rising geometrically to ``lambda_end`` over the run, when set), ramped up from 0
    over the first ``lambda_warmup`` epochs."""
    if o.lambda_end is None:
        lam = o.lam
    elif o.cycle_epochs:
        cycle = o.cycle_epochs * steps_per_epoch
        lam = o.lam * (o.lambda_end / o.lam) ** ((step // cycle) / max(1, math.ceil(total / cycle) - 1))
    else:
        lam = o.lam * (o.lambda_end / o.lam) ** (step / max(1, total - 1))
    ramp = o.lambda_warmup * steps_per_epoch
    return lam if ramp <= 0 else lam * min(1.0, (step + 1) / ramp)


def better(row: dict, than: dict | None, budget: float) -> bool:
    """Whether epoch ``row`` is a better keep than ``than`` under a val-error budget: any epoch
    within the budget beats any over it; among those within, the smaller; among those over, the
    more accurate."""
    if than is None:
        return True
    ok, was_ok = row["val_error"] <= budget, than["val_error"] <= budget
    if ok != was_ok:
        return ok
    if ok:
        return row["estimated_bytes"] < than["estimated_bytes"]
    return row["val_error"] < than["val_error"]


def noise_at(seed: int, step: int, n: int) -> np.ndarray:
    """Uniform(-1/2, 1/2) noise of step ``step``: a function of (seed, step) only, so resumable."""
    return np.random.default_rng([seed, step]).random(n, dtype=np.float32) - np.float32(0.5)


class EprTrainer:
    """One fine-tuning run of an EPR graph (``model``: onnx.ModelProto with the metadata)."""

    def __init__(self, model: onnx.ModelProto, spec: EprSpec, train: Split, val: Split | None, options: TrainOptions, *,
                 seed: int, teacher: Teacher, say: Callable[[str], None], progress: bool) -> None:
        self.spec, self.train, self.val, self.o = spec, train, val, options
        self.seed, self.teacher, self.say, self.progress = seed, teacher, say, progress
        self.task = resolve_loss(options.loss, train, teacher, "finetune", options.temperature,
                                 parse_declarations(options.outputs))
        say(f"  task loss: {self.task.describe()}")
        # A model exported for a fixed batch trains on batches of exactly that size.
        self.fixed_batch = fixed_batch(model, train.inputs)
        self.batch = self.fixed_batch or options.batch
        if self.fixed_batch and self.batch != options.batch:
            say(f"  the model's inputs have a fixed batch of {self.batch}: training on batches of {self.batch}")
        sample = training_sample(model, train.inputs, {spec.noise_input: np.zeros(spec.num_params, np.float32)})
        self.form = trainable_form(model, sample, list(train.inputs), list(spec.trainable), "finetune")
        say(f"  {self.form.summary()}")
        self.graph = loss_graph(self.form.model, spec.rate_output, spec.num_params, self.task)
        # latents=weight: the start's log steps, constants the latents' rounding reads beside the parameters
        starts = {t.log_step0 for t in spec.tensors if t.log_step0}
        self.constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name in starts}
        self.steps_per_epoch = math.ceil(len(train) / self.batch)
        self.total_steps = max(1, round(options.epochs * self.steps_per_epoch))
        # What a saved state must match to be resumed: the graph, the data, the seed, the options.
        self.fingerprint = fingerprint(self.graph.SerializeToString(), [asdict(options), seed, len(train)], train)
        self._reference: list | None = None  # the original model's val outputs per batch (distill)

    def run(self, run_dir: RunDir) -> TrainResult:
        """Train to the end, continuing from ``run_dir``'s checkpoint when it holds one of this run
        (a finished run is returned as it was saved)."""
        state = run_dir.begin(requires=("checkpoint",))
        if state and state.get("done"):
            self.say(f"  finished before the interruption, reusing {run_dir.path}")
            return TrainResult(run_dir.arrays(), state["history"], state["val_error"], state["step"],
                               state["step_seconds"], state["loss"], state.get("kept"))
        checkpoint = run_dir.path / "checkpoint"
        artifacts = generate_artifacts(self.graph, list(self.spec.trainable) + self.form.anchors, [], run_dir.path / "artifacts")
        session = TrainingSession(artifacts, lr=self.o.lr, seed=self.seed, threads=self.o.threads,
                                  checkpoint=checkpoint if state else None)
        history: list[dict] = state["history"] if state else []
        if state:
            self.say(f"  resuming at step {session.steps} of {self.total_steps} from {run_dir.path}")

        # What to keep. With a budget (``keep_within``: finetune's continuation search) the smallest
        # epoch within it, the start included. Distilling on a few hundred unlabeled inputs without
        # one, training can end worse on held-out inputs than where it started (a deep net overfits
        # ~100 samples): the budget is then the start's val change (from ptq's steps: calibrated
        # ptq itself), so the start is kept unless an epoch is smaller and no worse. Else, as
        # before, the last epoch.
        budget = self.o.keep_within
        implicit = budget is None and self.task.kind == "distill" and self.val is not None and self.val.labels is None
        keep_best = self.val is not None and (budget is not None or implicit)
        best = state.get("best") if state else None
        best_params = run_dir.arrays() if best is not None else None
        if state and keep_best:
            budget = state["budget"]
        elif keep_best:
            start_params = self._own(session.parameters(trainable_only=True))
            best = {"epoch": 0, "val_error": self.evaluate(session, self.val),
                    "estimated_bytes": self._latent_bits(start_params) / 8.0,
                    "lambda": lambda_at(0, self.steps_per_epoch, self.total_steps, self.o)}
            best_params = start_params
            budget = best["val_error"] if implicit else budget
            self.say(f"  start: val {'change' if self.val.labels is None else 'error'} {100 * best['val_error']:.2f}%, "
                     f"latents {best['estimated_bytes'] / 1000:.1f} KB; keeping the smallest epoch "
                     + ("no worse than that" if implicit else f"within {100 * budget:.2f}%"))

        def save() -> None:
            session.save_checkpoint(checkpoint)
            run_dir.save({"step": session.steps, "history": history, "best": best, "budget": budget},
                         arrays=best_params if keep_best else None)

        def out_of_patience() -> bool:
            """Over the budget for ``patience`` (settled) epochs in a row since a kept epoch met
            it: with lambda rising, later epochs only move further away. The start alone does not
            count: the first epochs at the peak learning rate may be over where the start was not."""
            if not (keep_best and self.o.patience and best["epoch"] > 0 and best["val_error"] <= budget):
                return False
            tail = [row["val_error"] > budget for row in history if row["settled"]][-self.o.patience:]
            return len(tail) == self.o.patience and all(tail)

        step_times: list[float] = []
        last_good = session.steps
        bar = self._bar(session.steps)
        while session.steps < self.total_steps and not out_of_patience():
            epoch, position = divmod(session.steps, self.steps_per_epoch)
            sums = {"task": 0.0, "rate": 0.0, "n": 0}
            for batch_index, batch in enumerate(batches(self.train, self.batch, shuffle_seed=self.seed * 1000 + epoch)):
                if batch_index < position:
                    continue  # resumed mid-epoch: these batches were trained before the interruption
                if session.steps >= self.total_steps:
                    break
                step = session.steps
                start = time.perf_counter()  # a step's wall time includes drawing its noise
                session.set_lr(lr_at(step, self.total_steps, self.o, self.steps_per_epoch))
                feed = self._feed(batch, lambda_at(step, self.steps_per_epoch, self.total_steps, self.o), noise_at(self.seed, step, self.spec.num_params))
                try:
                    _, task, rate = session.step(feed)[:3]
                except TrainingError as failure:
                    raise TrainingError(
                        f"{failure}; stopped. The last good checkpoint (step {last_good}) is kept in {run_dir.path}; "
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
                    save()
                    last_good = session.steps
            if sums["n"] == 0:
                continue
            row = self._epoch_row(session, epoch, sums)
            history.append(row)
            if keep_best and row["settled"] and better(row, best, budget):
                best = {key: row[key] for key in ("epoch", "val_error", "estimated_bytes", "lambda")}
                best_params = self._own(session.parameters(trainable_only=True))
            save()
            last_good = session.steps
        if bar is not None:
            bar.close()
        params = self._own(session.parameters(trainable_only=True))
        val = history[-1].get("val_error") if history else None
        kept = None
        if keep_best:
            params, val = best_params, best["val_error"]
            kept = {**best, "met": best["val_error"] <= budget}
            self.say(f"  kept {'the start' if best['epoch'] == 0 else 'epoch ' + str(best['epoch'])}: val "
                     f"{'change' if self.val.labels is None else 'error'} {100 * val:.2f}%"
                     f"{'' if kept['met'] else ' (none met ' + format(100 * budget, '.2f') + '%: the most accurate)'}, "
                     f"latents {best['estimated_bytes'] / 1000:.1f} KB")
        step_seconds = float(np.median(step_times)) if step_times else float("nan")
        result = TrainResult(params, history, val, session.steps, step_seconds, self.task.kind, kept)
        run_dir.save({"done": True, "step": result.steps, "history": history, "val_error": val,
                      "step_seconds": step_seconds, "loss": result.loss, "kept": kept}, arrays=params)
        return result

    def _latent_bits(self, params: dict[str, np.ndarray]) -> float:
        """What pack will spend on the rounded latents of ``params`` (latent_entropy_bits, with the
        constants weight latents read beside the trained parameters)."""
        return latent_entropy_bits(self.spec, {**self.constants, **params})

    def _own(self, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The trained parameters that are the graph's (not the trainable form's anchors)."""
        return {name: value for name, value in params.items() if name not in self.form.anchors}

    def _feed(self, batch: Split, lam: float, noise: np.ndarray) -> dict[str, np.ndarray]:
        feed = task_feed(batch, self.task, self.teacher)
        feed[LAMBDA_INPUT] = np.float32(lam)
        feed[self.spec.noise_input] = noise
        return feed

    def evaluate(self, session: TrainingSession, split: Split) -> float:
        """Error of the rounded model (noise off) on ``split``: against its labels
        (``onnxcomp.metrics``), else its task change from the original's outputs
        (``onnxcomp.training.outputs``: share of samples whose classes moved, relative change of values)."""
        zeros = np.zeros(self.spec.num_params, np.float32)

        def run(inputs: dict[str, np.ndarray]) -> tuple:
            feed = dict(inputs)
            feed[LAMBDA_INPUT] = np.float32(0.0)
            feed[self.spec.noise_input] = zeros
            feed.update(placeholder_targets(self.task, len(next(iter(inputs.values())))))  # the task output is not read
            return session.eval(feed)[3:]

        if split.labels is not None:
            axis = self.task.class_axis
            return error_rate(predictions(lambda inputs: run(inputs)[0], split, self._eval_batch, axis),
                              truth_rows(split.labels))
        names = [k.name for k in self.task.judged]
        change, self._reference = change_on(split, self.task, self.teacher, lambda inputs: dict(zip(names, run(inputs))),
                                            self._eval_batch, self._reference)
        return change

    @property
    def _eval_batch(self) -> int:
        return self.fixed_batch or EVAL_BATCH

    def _epoch_row(self, session: TrainingSession, epoch: int, sums: dict) -> dict:
        params = session.parameters(trainable_only=True)
        entropy = self._latent_bits(params)
        row = {"epoch": epoch + 1, "step": session.steps, "task_loss": sums["task"] / sums["n"],
               "lambda": lambda_at(session.steps - 1, self.steps_per_epoch, self.total_steps, self.o),
               # what keeping and patience look at: with lr cycles only a cycle's last epoch
               "settled": not self.o.cycle_epochs or (epoch + 1) % self.o.cycle_epochs == 0
               or session.steps >= self.total_steps,
               "graph_rate_bits_per_weight": sums["rate"] / sums["n"] / self.spec.num_params,
               "entropy_bits_per_weight": entropy / self.spec.num_params, "estimated_bytes": entropy / 8.0}
        if self.val is not None:
            row["val_error"] = self.evaluate(session, self.val)
        self.say(f"  epoch {epoch + 1}/{math.ceil(self.total_steps / self.steps_per_epoch)}: task {row['task_loss']:.4f}, "
                 f"rate {row['graph_rate_bits_per_weight']:.3f} bits/weight (noisy), latents "
                 f"{row['entropy_bits_per_weight']:.3f} bits/weight ({row['estimated_bytes'] / 1000:.1f} KB)"
                 + (f", val {'error' if self.val.labels is not None else 'change'} {100 * row['val_error']:.2f}%"
                    if "val_error" in row else ""))
        return row

    def _bar(self, start: int):
        if not self.progress or not sys.stderr.isatty():
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(total=self.total_steps, initial=start, unit="step", file=sys.stderr, leave=False, dynamic_ncols=True)
