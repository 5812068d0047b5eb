"""``finetune``: train an EPR graph (task loss + lambda * rate) and write the trained values back.

A driver step inside the pipeline, not a graph rewrite: it changes only initializer values of the
graph ``epr-reparam`` built (onnxcomp.finetune does the training). With an error budget
(``--max-error`` or ``--max-error-increase``, on the validation split) it runs up to
``search_runs`` trainings and keeps the smallest model within the budget: lambda grows by
``search_factor`` while the budget holds, shrinks while it does not, and is bisected
(geometrically) once both sides are known. Sizes are compared by the entropy of the rounded
latents, which is what pack spends on bitstreams.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxcomp.errors import DataError, PassError
from onnxcomp.finetune import LOSSES, EprTrainer, Teacher, TrainOptions, TrainResult
from onnxcomp.metrics import error_budget
from onnxcomp.model_io import to_proto, write_bytes_atomic
from onnxcomp.pass_base import CompressionPass, register_pass
from onnxcomp.passes.epr_reparam import EprSpec


@register_pass
@dataclass
class FinetunePass(CompressionPass):
    name = "finetune"
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
    checkpoint_every: int = field(default=500, metadata={"help": "steps between checkpoints (also one per epoch)"})
    threads: int = field(default=1, metadata={"help": "ORT threads; results are reproducible for a fixed count (0 = all cores)"})
    search_runs: int = field(default=4, metadata={"help": "with an error budget: trainings tried to find lambda"})
    search_factor: float = field(default=3.0, metadata={"help": "with an error budget: lambda step while only one side of the budget is known"})

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
        if self.checkpoint_every < 1:
            raise bad("checkpoint_every", self.checkpoint_every, ">= 1")
        if self.threads < 0:
            raise bad("threads", self.threads, ">= 0")
        if self.warmup_steps < 0 or self.lambda_warmup < 0:
            raise bad("warmup_steps/lambda_warmup", f"{self.warmup_steps}/{self.lambda_warmup}", ">= 0")
        if self.search_runs < 1:
            raise bad("search_runs", self.search_runs, ">= 1")
        if not self.search_factor > 1:
            raise bad("search_factor", self.search_factor, "> 1")

    def train_options(self, lam: float) -> TrainOptions:
        return TrainOptions(self.epochs, lam, self.lr, self.batch, self.warmup_steps, self.decay, self.lambda_warmup,
                            self.loss, self.temperature, self.checkpoint_every, self.threads)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        spec = EprSpec.from_model(model)
        if spec is None:
            raise PassError("finetune: nothing to train; run epr-reparam before it (e.g. -p epr)")
        ctx = self.context
        if ctx.data is None or ctx.data.train is None:
            raise DataError("finetune needs --data with a train split (e.g. --data mnist, or an .npz with train/ keys)")
        if ctx.original_model is None:
            raise PassError("finetune: the compile context has no original model (the teacher and error baseline)")
        teacher = Teacher(ctx.original_model.SerializeToString())
        proto = to_proto(model)
        owned = ctx.work_dir is None
        work_dir = Path(tempfile.mkdtemp(prefix="onnxcomp-finetune-")) if owned else Path(ctx.work_dir)
        try:
            budget = self._budget(teacher)
            if budget is None:
                result = self._train(proto, spec, teacher, self.lam, work_dir)
                runs = [(self.lam, result)]
            else:
                result, runs = self._search(proto, spec, teacher, budget, work_dir)
        finally:
            if owned:
                shutil.rmtree(work_dir, ignore_errors=True)
        for name, value in result.parameters.items():
            ir_value = model.graph.initializers[name]
            # np.asarray, not ascontiguousarray: the latter turns a 0-d scalar into shape [1]
            ir_value.const_value = ir.tensor(np.asarray(value, np.float32), name=name)
        chosen = next(lam for lam, r in runs if r is result)
        ctx.note("__finetune__", **{
            "lambda": chosen, "loss": result.loss, "steps": result.steps,
            "median_step_ms": round(1000 * result.step_seconds, 3), "val_error": result.val_error,
            "history": result.history,
            "runs": [{"lambda": lam, "val_error": r.val_error, "estimated_bytes": r.history[-1]["estimated_bytes"] if r.history else None}
                     for lam, r in runs],
        })
        if budget is not None:
            ctx.note("__search__", budget=budget, chosen_lambda=chosen,
                     runs=[{"lambda": lam, "val_error": r.val_error} for lam, r in runs])
        return ir.passes.PassResult(model, True)

    def _budget(self, teacher: Teacher) -> float | None:
        ctx = self.context
        return error_budget(ctx.max_error, ctx.max_error_increase, ctx.data.val, teacher.session)

    def _train(self, proto, spec: EprSpec, teacher: Teacher, lam: float, work_dir: Path) -> TrainResult:
        ctx = self.context
        trainer = EprTrainer(proto, spec, ctx.data.train, ctx.data.val, self.train_options(lam), seed=ctx.seed,
                             work_dir=work_dir, teacher=teacher, say=ctx.say, progress=ctx.progress)
        done = work_dir / "result.json"
        if ctx.resume and done.exists() and json.loads(done.read_text()).get("fingerprint") == trainer.fingerprint:
            ctx.say(f"  lambda {lam:g}: finished before the interruption, reusing {work_dir}")
            saved = json.loads(done.read_text())
            with np.load(work_dir / "result.npz") as arrays:
                params = {k: arrays[k] for k in arrays.files}
            return TrainResult(params, saved["history"], saved["val_error"], saved["steps"], saved["step_seconds"], saved["loss"])
        ctx.say(f"  training with lambda {lam:g}: {trainer.total_steps} steps of {self.batch}, loss {trainer.loss}")
        result = trainer.run(resume=ctx.resume)
        arrays = io.BytesIO()
        np.savez(arrays, **result.parameters)
        write_bytes_atomic(work_dir / "result.npz", arrays.getvalue())
        write_bytes_atomic(done, json.dumps({"fingerprint": trainer.fingerprint, "history": result.history,
                                             "val_error": result.val_error, "steps": result.steps,
                                             "step_seconds": result.step_seconds, "loss": result.loss}).encode())
        return result

    def _search(self, proto, spec: EprSpec, teacher: Teacher, budget: float, work_dir: Path):
        """Up to ``search_runs`` trainings; the smallest within budget (else the most accurate)."""
        runs: list[tuple[float, TrainResult]] = []
        feasible_lams, infeasible_lams = [], []
        lam = self.lam
        for i in range(self.search_runs):
            result = self._train(proto, spec, teacher, lam, work_dir / f"run-{i}")
            runs.append((lam, result))
            ok = result.val_error is not None and result.val_error <= budget
            (feasible_lams if ok else infeasible_lams).append(lam)
            self.context.say(f"  lambda {lam:g}: val error {100 * result.val_error:.2f}% "
                             f"{'within' if ok else 'over'} the budget {100 * budget:.2f}%")
            low = max(feasible_lams, default=None)
            high = min(infeasible_lams, default=None)
            lam = (low * self.search_factor if high is None else high / self.search_factor if low is None
                   else math.sqrt(low * high))
        within = [(lam, r) for lam, r in runs if r.val_error is not None and r.val_error <= budget]
        if within:
            return min(within, key=lambda lr: lr[1].history[-1]["estimated_bytes"])[1], runs
        best = min(runs, key=lambda lr: lr[1].val_error)
        self.context.log.append(f"finetune: no lambda met the error budget {100 * budget:.2f}%; kept lambda {best[0]:g} "
                                f"(val error {100 * best[1].val_error:.2f}%)")
        self.context.say(self.context.log[-1])
        return best[1], runs
