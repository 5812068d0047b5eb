"""``finetune``: train an EPR graph (task loss + lambda * rate), write the trained values back,
and end the training form (``finalize_epr``), so ``pack`` codes the rounded latents.

A driver step inside the pipeline, not a graph rewrite of its own: it changes only initializer
values of the graph ``epr-reparam`` built (``trainer.py`` does the training). With an error
budget (``--max-error`` or ``--max-error-increase``, on the validation split) it searches for the
smallest model within the budget in one run (``search=climb``, continuation): lambda rises
geometrically from ``climb_low`` to ``climb_high`` times ``lambda``, one level per ``cycle``
epochs, over at most ``climb_epochs`` x ``epochs``; the learning rate restarts at the peak with
each level and decays to 0 by its end, so every level's rounded model is measured settled on the
validation split (mid-cycle, at the peak rate, val error is 0.5-1 point higher on LeNet-300-100:
a budget would end the climb on noise). The smallest level within the budget is kept; the run
stops once ``patience`` levels in a row are over it (a higher lambda only moves further).
When training moves the weights (``epr-reparam`` latents=weight, the default; ``climb_from=trained``)
the climb first trains once at ``lambda`` with the usual schedule, then spends the rest of the
``climb_epochs`` in levels ``climb_factor`` apart from there: up while that training is within
the budget, down when it is over. Weight latents settle only in a long decay (the learned steps
keep moving roundings until the learning rate is low), so 3-epoch levels from the start end far
above the fixed lambda's size (LeNet-300-100: 25.2 KB kept where one training at lambda 0.3
gives 6.7 KB at no more val error).

Why these defaults (LeNet-300-100, BENCHMARKS.md "EPR budget search"): the rate follows lambda
with a lag (the latents move at the learning rate's pace), so a level's size and error depend on
how long the climb spent below it; 3-epoch levels 1.33x apart (0.3 -> 10 times lambda) ended
smaller than the best fixed lambda within the same budget, 2-epoch levels 1.68x apart (0.1 -> 30)
larger. A low-rate "settle" of the kept level after the climb (tried: 0.5 trainings at 1/4 of the
rate) moved size and error on along the curve, past the budget. Searching by separate trainings
(``search=runs``: up to ``search_runs`` of them, lambda grown by ``search_factor`` while the
budget holds, shrunk while it does not, bisected once both sides are known) costs one training
per try. Sizes are compared by the entropy of the rounded latents, which is what pack spends on
bitstreams.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxcomp.errors import DataError, PassError
from onnxcomp.metrics import error_budget
from onnxcomp.training.outputs import parse_declarations
from onnxcomp.model_io import to_proto
from onnxcomp.pass_base import CompressionPass, PassReport, register_pass
from onnxcomp.passes.epr.form import EprSpec, finalize_epr
from onnxcomp.passes.epr.trainer import EprTrainer, TrainOptions, TrainResult
from onnxcomp.training.losses import LOSSES, Teacher
from onnxcomp.training.session import apply_parameters
from onnxcomp.training.workspace import Trial, Workspace, search_budget


@dataclass
class FinetuneReport(PassReport):
    """The training run ``finetune`` kept (report section ``training``)."""

    section = "training"
    lam: float
    loss: str
    steps: int
    median_step_ms: float
    val_error: float | None
    history: list[dict]
    runs: list[dict]  # what a lambda search measured (run_row): lambda, val error, estimated bytes
    kept: dict | None  # with a budget to keep within: the epoch kept (TrainResult.kept)

    def as_json(self) -> dict[str, Any]:
        row = super().as_json()
        return {"lambda": row.pop("lam"), **row}

    def summary(self) -> str:
        levels = sum(1 for row in self.runs if row.get("phase") == "climb")
        search = (f" (kept among {levels} levels of one climbing run)" if levels
                  else f" (chosen among {len(self.runs)} trainings)" if len(self.runs) > 1 else "")
        return (f"training: lambda {self.lam:g}{search}, loss {self.loss}, {self.steps} steps, "
                f"median {self.median_step_ms:.1f} ms/step")


@dataclass
class LambdaSearchReport(PassReport):
    """How ``finetune`` searched lambda for an error budget (report section ``search``)."""

    section = "search"
    budget: float
    chosen_lambda: float
    met: bool
    runs: list[dict]


@register_pass
@dataclass
class FinetunePass(CompressionPass):
    name = "finetune"

    @property
    def trains(self) -> bool:
        return True
    summary = "train an epr-reparam graph: task loss + lambda * bits/weight (ONNX Runtime training, resumable)"

    epochs: float = field(default=25.0, metadata={"help": "passes over the train split"})
    lam: float = field(default=0.3, metadata={"option": "lambda", "help": "rate weight: loss = task + lambda * bits per weight"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate (no weight decay)"})
    batch: int = field(default=128, metadata={"help": "samples per step"})
    warmup_steps: int = field(default=50, metadata={"help": "linear learning-rate warm-up"})
    decay: float = field(default=0.5, metadata={"help": "cosine decay to 0 over this final fraction of the steps"})
    lambda_warmup: float = field(default=1.0, metadata={"help": "epochs over which lambda ramps up from 0"})
    loss: str = field(default="auto", metadata={"help": "ce (labels), distill (the original model's outputs), auto = ce when the data has labels"})
    temperature: float = field(default=1.0, metadata={"help": "distillation temperature"})
    outputs: str = field(default="", metadata={"help": "distill: output kinds overriding the inferred ones, NAME:classes:AXIS / NAME:values / NAME:ignore joined by '/' (see onnxcomp/training/outputs.py)"})
    checkpoint_every: int = field(default=500, metadata={"help": "steps between checkpoints (also one per epoch)"})
    threads: int = field(default=1, metadata={"help": "ORT threads; results are reproducible for a fixed count (0 = all cores)"})
    search: str = field(default="climb", metadata={"help": "with an error budget: climb (one run of rising lambda; module doc) or runs (separate trainings)"})
    climb_from: str = field(default="auto", metadata={"help": "search=climb: start (lambda rises from climb_low x lambda from the first step) or trained (one full training at lambda, then levels of climb_factor up, or down when it is over the budget); auto = trained when training moves the weights (epr-reparam latents=weight), else start"})
    climb_factor: float = field(default=1.4, metadata={"help": "search=climb climb_from=trained: lambda's factor per level"})
    climb_low: float = field(default=0.3, metadata={"help": "search=climb climb_from=start: lambda starts at this times lambda"})
    climb_high: float = field(default=10.0, metadata={"help": "search=climb climb_from=start: lambda would end at this times lambda"})
    climb_epochs: float = field(default=1.5, metadata={"help": "search=climb: the search's length at most, in multiples of epochs (climb_from=trained: the training included)"})
    cycle: int = field(default=3, metadata={"help": "search=climb: epochs per lambda level; the learning rate restarts at each (0: lambda rises every step at the peak rate)"})
    patience: int = field(default=2, metadata={"help": "search=climb: levels over the budget in a row that end the climb"})
    search_runs: int = field(default=4, metadata={"help": "search=runs: trainings tried to find lambda"})
    search_factor: float = field(default=3.0, metadata={"help": "search=runs: lambda step while only one side of the budget is known"})

    def validate_options(self) -> None:
        bad = self.option_error
        if not self.epochs > 0:
            raise bad("epochs", self.epochs, "> 0")
        if not self.lam >= 0:
            raise bad("lambda", self.lam, ">= 0")
        if not 0 < self.lr < 1:
            raise bad("lr", self.lr, "in (0, 1)")
        if self.batch < 1:
            raise bad("batch", self.batch, ">= 1")
        if self.loss not in LOSSES:
            raise bad("loss", self.loss, f"one of {', '.join(LOSSES)}")
        if not 0 <= self.decay <= 1:
            raise bad("decay", self.decay, "in [0, 1]")
        if not self.temperature > 0:
            raise bad("temperature", self.temperature, "> 0")
        parse_declarations(self.outputs)  # a malformed declaration fails before any work
        if self.checkpoint_every < 1:
            raise bad("checkpoint_every", self.checkpoint_every, ">= 1")
        if self.threads < 0:
            raise bad("threads", self.threads, ">= 0")
        if self.warmup_steps < 0 or self.lambda_warmup < 0:
            raise bad("warmup_steps/lambda_warmup", f"{self.warmup_steps}/{self.lambda_warmup}", ">= 0")
        if self.search not in ("climb", "runs"):
            raise bad("search", self.search, "climb or runs")
        if not 0 < self.climb_low <= 1 <= self.climb_high or self.climb_low == self.climb_high:
            raise bad("climb_low/climb_high", f"{self.climb_low}/{self.climb_high}", "0 < climb_low <= 1 <= climb_high, not equal")
        if self.climb_from not in ("auto", "start", "trained"):
            raise bad("climb_from", self.climb_from, "auto, start or trained")
        if not self.climb_factor > 1:
            raise bad("climb_factor", self.climb_factor, "> 1")
        if self.cycle < 0:
            raise bad("cycle", self.cycle, ">= 0")
        if self.patience < 1:
            raise bad("patience", self.patience, ">= 1")
        if not self.climb_epochs > 0:
            raise bad("climb_epochs", self.climb_epochs, "> 0")
        if self.search_runs < 1:
            raise bad("search_runs", self.search_runs, ">= 1")
        if not self.search_factor > 1:
            raise bad("search_factor", self.search_factor, "> 1")

    def train_options(self, lam: float, **changes) -> TrainOptions:
        options = TrainOptions(self.epochs, lam, self.lr, self.batch, self.warmup_steps, self.decay, self.lambda_warmup,
                               self.loss, self.temperature, self.checkpoint_every, self.threads, self.outputs)
        return dataclasses.replace(options, **changes)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        spec = EprSpec.from_model(model)
        if spec is None:
            raise PassError("finetune: nothing to train; run epr-reparam before it (e.g. -p epr)")
        ctx = self.context
        if ctx.data is None or ctx.data.train is None:
            raise DataError("finetune needs --data with inputs to train on (e.g. --data mnist, or an .npz of the "
                            "model's inputs)")
        if ctx.original_model is None:
            raise PassError("finetune: the compile context has no original model (the teacher and error baseline)")
        teacher = Teacher(ctx.original_model.SerializeToString())
        proto = to_proto(model)
        budget = error_budget(ctx.max_error, ctx.max_error_increase, ctx.data.val, teacher.session)
        with Workspace(ctx.work_dir, self.name, ctx.resume) as workspace:
            def train(lam: float) -> TrainResult:
                return self._train(proto, spec, teacher, self.train_options(lam), workspace, f"lambda-{lam:g}")

            if budget is None:
                lam, result = self.lam, train(self.lam)
                runs = [run_row(lam, result.val_error, result.estimated_bytes)]
            elif self.search == "climb":
                lam, result, runs, met = self._climb(proto, spec, teacher, budget, workspace)
                ctx.record(LambdaSearchReport(budget, lam, met, runs))
            else:
                outcome = search_budget(
                    who=self.name, budget=budget, runs=self.search_runs, first=self.lam, train=train,
                    measure=lambda r: (r.val_error, r.estimated_bytes),
                    propose=lambda trials: self._next_lambda(trials, budget),
                    describe=lambda lam: f"lambda {lam:g}", stop_when_met=False, say=ctx.say, warn=ctx.warn)
                lam, result = outcome.chosen.settings, outcome.chosen.result
                runs = [run_row(t.settings, t.val_error, t.result.estimated_bytes) for t in outcome.trials]
                ctx.record(LambdaSearchReport(budget, lam, outcome.met, runs))
        for name, value in result.parameters.items():
            ir_value = model.graph.initializers[name]
            # np.asarray, not ascontiguousarray: the latter turns a 0-d scalar into shape [1]
            ir_value.const_value = ir.tensor(np.asarray(value, np.float32), name=name)
        finalize_epr(model, ctx)
        ctx.record(FinetuneReport(
            lam, result.loss, result.steps, round(1000 * result.step_seconds, 3), result.val_error, result.history, runs,
            result.kept))
        return ir.passes.PassResult(model, True)

    def _next_lambda(self, trials: list[Trial], budget: float) -> float:
        """Grow lambda while every run met the budget, shrink it while none did, then bisect
        (geometrically) between the largest that met it and the smallest that did not."""
        low = max((t.settings for t in trials if t.within(budget)), default=None)
        high = min((t.settings for t in trials if not t.within(budget)), default=None)
        if high is None:
            return low * self.search_factor
        if low is None:
            return high / self.search_factor
        return math.sqrt(low * high)

    def _climb(self, proto: onnx.ModelProto, spec: EprSpec, teacher: Teacher, budget: float, workspace: Workspace):
        """Continuation (module doc). Returns the kept lambda, the run's result, every level
        measured (``run_row``s), and whether one met the budget."""
        ctx = self.context
        trained = self.climb_from == "trained" or (self.climb_from == "auto" and any(t.log_step0 for t in spec.tensors))
        base, runs = None, []
        if trained:
            # Weight latents settle only in a long decay (the steps keep moving roundings until the
            # learning rate is low): a 3-epoch level from the start is far above the fixed
            # lambda's size. So one full training at lambda first, then short levels from there.
            ctx.say(f"  searching lambda for val error <= {100 * budget:.2f}%: one training at {self.lam:g}, then levels from it")
            base = self._train(proto, spec, teacher, self.train_options(self.lam), workspace, f"lambda-{self.lam:g}")
            runs.append(run_row(self.lam, base.val_error, base.estimated_bytes, "train", len(base.history)))
            factor = self.climb_factor if base.val_error <= budget else 1.0 / self.climb_factor
            cycle = max(1, self.cycle)
            levels = max(1, math.floor((self.climb_epochs - 1.0) * self.epochs / cycle))  # whole levels
            epochs = levels * cycle
            low, high = self.lam * factor, self.lam * factor**levels
            proto = apply_parameters(proto, base.parameters)
        else:
            low, high = self.lam * self.climb_low, self.lam * self.climb_high
            epochs = self.climb_epochs * self.epochs
        ctx.say(f"  searching lambda {low:g} -> {high:g} in one run for val error <= {100 * budget:.2f}%")
        climb = self._train(proto, spec, teacher, self.train_options(
            low, epochs=epochs, lambda_end=high, cycle_epochs=self.cycle, decay=0.0,
            lambda_warmup=0.0, keep_within=budget, patience=self.patience), workspace, "climb")
        if base is not None:  # one history, one step count: the climb's epochs follow the training's
            offset = len(base.history)
            climb = dataclasses.replace(
                climb, history=base.history + [{**row, "epoch": row["epoch"] + offset} for row in climb.history],
                steps=base.steps + climb.steps,
                kept={**climb.kept, "epoch": climb.kept["epoch"] + offset,
                      "lambda": self.lam if climb.kept["epoch"] == 0 else climb.kept["lambda"]})  # the climb's start is the training's end
        runs += [run_row(row["lambda"], row["val_error"], row["estimated_bytes"], "climb", row["epoch"])
                 for row in climb.history[len(base.history) if base else 0:] if row["settled"]]  # a level's last epoch
        kept = climb.kept
        if not kept["met"]:
            ctx.warn(f"{self.name}: no level of the climb met the error budget {100 * budget:.2f}%; kept "
                     f"{'the start' if kept['epoch'] == 0 else 'epoch ' + str(kept['epoch'])} at lambda "
                     f"{kept['lambda']:g} (val error {100 * kept['val_error']:.2f}%)")
        return kept["lambda"], climb, runs, kept["met"]

    def _train(self, proto: onnx.ModelProto, spec: EprSpec, teacher: Teacher, options: TrainOptions,
               workspace: Workspace, tag: str) -> TrainResult:
        ctx = self.context
        trainer = EprTrainer(proto, spec, ctx.data.train, ctx.data.val, options, seed=ctx.seed,
                             teacher=teacher, say=ctx.say, progress=ctx.progress)
        schedule = f"lambda {options.lam:g}" + ("" if options.lambda_end is None else f" -> {options.lambda_end:g}")
        ctx.say(f"  training with {schedule}: {trainer.total_steps} steps of {trainer.batch}, loss {trainer.task.kind}")
        return trainer.run(workspace.run(tag, trainer.fingerprint))


def run_row(lam: float, val_error: float | None, estimated_bytes: float | None, phase: str | None = None,
            epoch: int | None = None) -> dict:
    """One measured point of a lambda search for the report: a training (search=runs) or an epoch
    of the climb, a level's last (search=climb)."""
    row = {"lambda": lam, "val_error": val_error, "estimated_bytes": estimated_bytes}
    return row if phase is None else {**row, "phase": phase, "epoch": epoch}
