"""``weight-fix``: WFN weight fixing, every weight of the network onto one small shared codebook.

Weight fixing networks (Subia-Waud & Dasmahapatra, "Weight Fixing Networks", ECCV 2022).
Rounds (``schedule``) fix a growing share of all Conv/ConvTranspose/Gemm/MatMul/RNN weights and
biases (``onnxcomp.graph.weights.find_weights``; optionally BatchNormalization scales and shifts
that normalize did not fold) to zero or signed powers of two (``clustering.py``), retraining the
still-free weights between rounds through ONNX Runtime training (``retraining.py``).
Afterwards each weight W is

    W.idx (int32 initializer) -> Gather(onnxcomp.codebook) -> W

with one float32 codebook for the whole network, so ``pack`` entropy-codes the indices at their
entropy (not log2 of the codebook size) and the runtime rebuilds W with EntropyDecode -> Gather.

With an error budget (``--max-error`` / ``--max-error-increase``, on the validation split) a run
that ends over budget is repeated with finer centres (order + 1) or fewer zeros (gamma0 halved),
alternating, up to ``search_runs`` runs; the first within budget is kept, else the most accurate.
Distilling on unlabeled data without a budget, the budget is what 8-bit rounding of the same
weights changes on the validation split (``reference_budget``): the paper's defaults (gamma0,
powers of two) were set on ImageNet nets and LeNets, and on other models they can change more
than int8 does while being smaller, which is no trade-off a user asked for: when no run of the
search gets within it the model is refused (PassError, nothing written), and a budget the user
gives accepts the larger change.
State is saved after every round in ``<output>.train/weight-fix/``: ``--resume`` continues at
the next round and ends with the same bytes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxcomp.errors import DataError, PassError
from onnxcomp.graph.edit import all_names, new_initializer, replace_initializer, unique_name
from onnxcomp.graph.forms import training_form
from onnxcomp.graph.weights import find_weights
from onnxcomp.metrics import error_budget, fixed_batch, split_error
from onnxcomp.training.outputs import parse_declarations
from onnxcomp.model_io import to_proto
from onnxcomp.pass_base import CompressionPass, PassReport, register_pass
from onnxcomp.passes.wfn.clustering import PAPER_SCHEDULE, CodebookStats, candidates, fix_round, threshold
from onnxcomp.passes.quantize.step_rule import step_for
from onnxcomp.passes.wfn.retraining import RetrainOptions, retrain_round
from onnxcomp.training.losses import LOSSES, Teacher, change_on, resolve_loss
from onnxcomp.training.workspace import RunDir, Trial, Workspace, fingerprint, search_budget

CODEBOOK = "onnxcomp.codebook"
MAX_ORDER = 2  # sums of up to three powers of two


@register_pass
@dataclass
class WeightFixPass(CompressionPass):
    name = "weight-fix"

    @property
    def trains(self) -> bool:
        return self.epochs > 0  # retraining between rounds
    summary = "WFN: fix all weights to a few shared powers of two over rounds, retraining the rest (ORT training)"

    schedule: tuple[float, ...] = field(default=PAPER_SCHEDULE, metadata={"help": "share of all weights fixed after each round, increasing, ending at 1 (e.g. 0.5:0.9:1)"})
    delta: float = field(default=0.015, metadata={"help": "threshold on the mean relative distance |w - c| / |w|; round t allows max(delta, delta * (T - t))"})
    gamma0: float = field(default=2.0**-5, metadata={"help": "weights with |w| < gamma0 are fixed to 0; powers of two start at gamma0 / 2^(order+1)"})
    order: int = field(default=0, metadata={"help": "most extra power-of-two terms a centre may add when no single power fits (0: powers of two only)"})
    epochs: float = field(default=1.0, metadata={"help": "retraining epochs between rounds (0: no retraining, no data needed)"})
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate of the retraining"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay of the free weights while retraining"})
    batch: int = field(default=128, metadata={"help": "samples per retraining step"})
    tau: float = field(default=0.05, metadata={"help": "softmin temperature of the regularizer"})
    beta: float = field(default=0.4, metadata={"help": "regularizer held at beta times the task loss (0: off)"})
    loss: str = field(default="auto", metadata={"help": "ce (labels), distill (the original model's outputs), auto = ce when the data has labels"})
    outputs: str = field(default="", metadata={"help": "distill: output kinds overriding the inferred ones, NAME:classes:AXIS / NAME:values / NAME:ignore joined by '/' (see onnxcomp/training/outputs.py)"})
    batchnorm: bool = field(default=False, metadata={"help": "also fix BatchNormalization scales/shifts that normalize did not fold"})
    threads: int = field(default=1, metadata={"help": "ORT threads; results are reproducible for a fixed count (0 = all cores)"})
    fill: bool = field(default=True, metadata={"help": "every round fixes its full share: what no centre takes within the threshold goes to its nearest centre and is retrained around (false: only the last round forces)"})
    search_runs: int = field(default=3, metadata={"help": "with an error budget: runs tried; after one over budget, order + 1 and gamma0 / 2 alternate"})

    def validate_options(self) -> None:
        bad = self.option_error
        parse_declarations(self.outputs)  # a malformed declaration fails before any work
        s = self.schedule
        text = ":".join(f"{x:g}" for x in s)
        if not s:
            raise bad("schedule", text, "a non-empty list of shares, e.g. 0.5:0.9:1")
        if any(not 0 < x <= 1 for x in s):
            raise bad("schedule", text, "shares in (0, 1] (fractions, not percent)")
        if any(b <= a for a, b in zip(s, s[1:])):
            raise bad("schedule", text, "strictly increasing")
        if s[-1] != 1.0:
            raise bad("schedule", text, "ending at 1 (every weight fixed)")
        if not self.delta > 0:
            raise bad("delta", self.delta, "> 0")
        if not 0 < self.gamma0 < 1:
            raise bad("gamma0", self.gamma0, "in (0, 1)")
        if not 0 <= self.order <= MAX_ORDER:
            raise bad("order", self.order, "0, 1 or 2")
        if not self.epochs >= 0:
            raise bad("epochs", self.epochs, ">= 0")
        if not 0 < self.lr < 1:
            raise bad("lr", self.lr, "in (0, 1)")
        if self.batch < 1:
            raise bad("batch", self.batch, ">= 1")
        if not 0 <= self.weight_decay < 1:
            raise bad("weight_decay", self.weight_decay, "in [0, 1)")
        if not self.tau > 0:
            raise bad("tau", self.tau, "> 0")
        if not self.beta >= 0:
            raise bad("beta", self.beta, ">= 0")
        if self.loss not in LOSSES:
            raise bad("loss", self.loss, f"one of {', '.join(LOSSES)}")
        if self.threads < 0:
            raise bad("threads", self.threads, ">= 0")
        if self.search_runs < 1:
            raise bad("search_runs", self.search_runs, ">= 1")

    # -- the pass ------------------------------------------------------------------------------

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        ctx = self.context
        if training_form(model) is not None or CODEBOOK in model.graph.initializers:
            raise PassError("weight-fix: the model is already reparameterized (epr-reparam or weight-fix ran); "
                            "weight-fix takes float weights, e.g. -p wfn")
        names = self._weights(model)
        if not names:
            ctx.warn("weight-fix: no float32 weights to fix; model left unchanged")
            return ir.passes.PassResult(model, False)
        proto = to_proto(model)
        start = {n: model.graph.initializers[n].const_value.numpy().astype(np.float32) for n in names}
        fixer = _Fixer(self, proto, start)
        budget, budget_from = fixer.budget()
        if budget_from == "8-bit":
            ctx.say(f"  no labels and no error budget: a run may change the val outputs no more than 8-bit "
                    f"rounding of these weights does ({100 * budget:.2f}%)")
        with Workspace(ctx.work_dir, self.name, ctx.resume) as workspace:
            def train(settings: tuple[float, int]) -> FixRun:
                return fixer.fix(*settings, workspace)

            first = (self.gamma0, self.order)
            if budget is None:
                chosen = train(first)
                runs = [chosen]
            else:
                outcome = search_budget(
                    who=self.name, budget=budget, runs=self.search_runs, first=first, train=train,
                    measure=lambda r: (r.val_error, r.size_bits), propose=_finer_or_fewer_zeros,
                    describe=lambda g_o: f"gamma0 {g_o[0]:g}, order {g_o[1]}", stop_when_met=True,
                    say=ctx.say, warn=ctx.warn)
                chosen, runs = outcome.chosen.result, [t.result for t in outcome.trials]
                if not outcome.met and budget_from == "8-bit":
                    # Smaller than int8 but further from the original than int8: not a trade-off to
                    # hand over unasked. The user can ask for it with a budget.
                    raise PassError(
                        f"weight-fix: every run changed the val outputs more than 8-bit rounding of the same weights "
                        f"does (best {100 * outcome.chosen.val_error:.2f}%, 8-bit {100 * budget:.2f}%; runs: "
                        + ", ".join(f"gamma0 {r.gamma0:g} order {r.order} {100 * r.val_error:.2f}%" for r in runs)
                        + "). Nothing written: give an error budget (--max-error-increase) to accept the larger "
                        "change, weight-fix{search_runs=..} to try finer codebooks, or use ptq --data, which "
                        "calibrates on these inputs")
        stats = rewrite_to_codebook(model, chosen.values)
        for n in names:
            ctx.note(n, method="wfn")
        ctx.record(WeightFixReport(chosen.gamma0, chosen.val_error, chosen.history, list(self.schedule), self.delta,
                                   chosen.order, fixer.loss_kind, chosen.wall_s, stats,
                                   [{"gamma0": r.gamma0, "order": r.order, "val_error": r.val_error} for r in runs],
                                   budget, budget_from))
        ctx.say(f"  fixed {stats.weights:,} weights to {stats.unique} values network-wide, "
                f"{stats.entropy_bits:.3f} bits/weight pooled entropy ({100 * stats.zeros:.1f}% zeros)")
        return ir.passes.PassResult(model, True)

    def _weights(self, model: ir.Model) -> list[str]:
        """Names of the float32 weights to fix; says which it leaves alone and why."""
        ctx = self.context
        weights, skipped = find_weights(model)
        names = []
        for w in weights:
            if w.value.const_value.dtype != ir.DataType.FLOAT:
                skipped.append(f"{w.name}: {w.value.const_value.dtype.name} weight left as is (weight-fix handles float32)")
            else:
                names.append(w.name)
        if self.batchnorm:
            for node in model.graph:
                if node.op_type != "BatchNormalization" or node.domain != "":
                    continue
                for v in node.inputs[1:3]:
                    if (v is not None and v.is_initializer() and v.const_value is not None
                            and v.const_value.dtype == ir.DataType.FLOAT and v.name not in names):
                        names.append(v.name)
        for line in skipped:
            ctx.warn(f"weight-fix: {line}")
        return names


def _finer_or_fewer_zeros(trials: list[Trial]) -> tuple[float, int]:
    """The next run after one over budget: finer centres first (measured: cheaper in entropy than
    more nonzero weights), then fewer zeros, alternating while the order can still grow."""
    gamma0, order = trials[-1].settings
    if order < MAX_ORDER and (len(trials) == 1 or trials[-2].settings[1] == order):
        return gamma0, order + 1
    return gamma0 / 2, order


@dataclass
class FixRun:
    """One full weight-fixing run at (gamma0, order)."""

    gamma0: float
    order: int
    values: dict[str, np.ndarray]
    val_error: float | None
    history: list[dict]
    wall_s: float

    @property
    def size_bits(self) -> float:
        """Pooled entropy of the fixed weights times their count: what pack spends, about."""
        pooled = np.concatenate([v.ravel() for v in self.values.values()])
        return CodebookStats.of(pooled).entropy_bits * pooled.size


@dataclass
class WeightFixReport(PassReport):
    """The weight-fixing run ``weight-fix`` kept (report section ``weight_fixing``)."""

    section = "weight_fixing"
    gamma0: float
    val_error: float | None
    history: list[dict]
    schedule: list[float]
    delta: float
    order: int
    loss: str
    wall_s: float
    stats: CodebookStats
    runs: list[dict]       # every run of a budget search: gamma0, order, val error
    budget: float | None
    budget_from: str       # given (--max-error...), 8-bit (reference_budget) or "" (none)

    def as_json(self) -> dict[str, Any]:
        row = super().as_json()
        stats = row.pop("stats")
        runs, budget, budget_from = row.pop("runs"), row.pop("budget"), row.pop("budget_from")
        return {**row, **stats, "runs": runs, "budget": budget, "budget_from": budget_from}

    def summary(self) -> str:
        s = self.stats
        search = f", chosen among {len(self.runs)} runs" if len(self.runs) > 1 else ""
        return (f"weight fixing: {s.weights:,} weights on {s.unique} values network-wide "
                f"({100 * s.power_of_two:.0f}% of nonzero weights powers of two, {100 * s.sum_of_two:.0f}% sums of two), "
                f"{100 * s.zeros:.1f}% zeros; pooled entropy {s.entropy_bits:.3f} bits/weight "
                f"({s.entropy_nonzero_bits:.3f} over nonzero); gamma0 {self.gamma0:g}{search}")


class _Fixer:
    """Everything one compile shares between weight-fixing runs: the weights, data, teacher, loss."""

    def __init__(self, p: WeightFixPass, proto: onnx.ModelProto, start: dict[str, np.ndarray]) -> None:
        ctx = p.context
        self.p, self.proto, self.start = p, proto, start
        self.data = ctx.data
        if p.epochs > 0 and (self.data is None or self.data.train is None):
            raise DataError("weight-fix retrains between rounds and needs --data with a train split "
                            "(e.g. --data mnist), or weight-fix{epochs=0} to fix without retraining")
        self.teacher = Teacher(ctx.original_model.SerializeToString()) if ctx.original_model is not None else None
        self.task = None
        if self.data is not None and self.data.train is not None and self.teacher is not None:
            self.task = resolve_loss(p.loss, self.data.train, self.teacher, "weight-fix", declared=parse_declarations(p.outputs))
            ctx.say(f"  task loss: {self.task.describe()}")
        elif p.epochs > 0:
            raise PassError("weight-fix: the compile context has no original model (the teacher and error baseline)")
        self._val_reference: list | None = None  # the original's val outputs per batch (distill)
        self.names = list(start)
        self.shapes = {n: start[n].shape for n in self.names}
        self.sizes = [start[n].size for n in self.names]

    @property
    def loss_kind(self) -> str:
        """ce or distill as resolved against the data; the option as given when nothing trains."""
        return self.task.kind if self.task else self.p.loss

    def budget(self) -> tuple[float | None, str]:
        """The val error a run may end at and where it comes from: the user's budget ("given"),
        else, distilling on unlabeled data, ``reference_budget`` ("8-bit"), else none."""
        ctx = self.p.context
        val = self.data.val if self.data is not None else None
        given = error_budget(ctx.max_error, ctx.max_error_increase, val, self.teacher.session if self.teacher else None)
        if given is not None:
            return given, "given"
        if self.task is not None and self.task.kind == "distill" and val is not None and val.labels is None:
            return self.reference_budget(), "8-bit"
        return None, ""

    def reference_budget(self) -> float:
        """The val change of rounding every weight weight-fix would fix to 8 bits (symmetric, one
        step per tensor: onnxruntime's default int8 weights, without its activation rounding,
        so a stricter bar than int8 itself)."""
        rounded = {}
        for name, w in self.start.items():
            step = float(step_for(w, (), 8.0, grid="peak"))  # ptq's int8 grid; 1.0 for an all-zero tensor
            rounded[name] = (np.round(w / step) * step).astype(np.float32)
        return self.val_error(rounded)

    def val_error(self, values: dict[str, np.ndarray]) -> float | None:
        if self.data is None or self.data.val is None:
            return None
        import onnxruntime as ort

        from onnxcomp.training.session import apply_parameters, session_options

        session = ort.InferenceSession(apply_parameters(self.proto, values).SerializeToString(), session_options(1),
                                       providers=["CPUExecutionProvider"])
        if self.data.val.labels is not None or self.task is None or self.task.kind == "ce":
            return split_error(session, self.data.val, self.teacher.session if self.teacher else None)
        # Without labels: the task change from the original's outputs (onnxcomp.training.outputs).
        names = [o.name for o in session.get_outputs()]
        inputs = [i.name for i in session.get_inputs()]

        def predict(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return dict(zip(names, session.run(None, {n: batch[n] for n in inputs})))

        change, self._val_reference = change_on(self.data.val, self.task, self.teacher, predict,
                                                fixed_batch(self.teacher.session) or 256, self._val_reference)
        return change

    def fingerprint(self, gamma0: float, order: int) -> str:
        options = {f.name: getattr(self.p, f.name) for f in self.p.options() if f.name != "search_runs"}
        options["gamma0"], options["order"] = gamma0, order
        kind = self.loss_kind
        train = self.data.train if self.data is not None else None
        return fingerprint(self.proto.SerializeToString(), [options, self.p.context.seed, kind], train)

    def fix(self, gamma0: float, order: int, workspace: Workspace) -> FixRun:
        """One full weight-fixing run at ``gamma0`` and ``order``: every round, resumable per round."""
        p, ctx = self.p, self.p.context
        run_dir: RunDir = workspace.run(f"gamma0-{gamma0:g}-order-{order}", self.fingerprint(gamma0, order))
        state = run_dir.begin()
        flat = np.concatenate([self.start[n].ravel() for n in self.names]).astype(np.float32)
        fixed = np.zeros(flat.size, bool)
        history: list[dict] = []
        if state is not None:
            arrays = run_dir.arrays()
            flat, fixed = arrays["flat"], arrays["fixed"]
            history = state["history"]
            ctx.say(f"  resuming weight-fix after round {len(history)} of {len(p.schedule)} from {run_dir.path}")
        t0 = time.perf_counter() - (history[-1]["elapsed_s"] if history else 0.0)
        rounds = len(p.schedule)
        options = RetrainOptions(p.epochs, p.lr, p.batch, p.tau, p.beta, p.threads, p.weight_decay)
        said_form = ""
        for t in range(len(history), rounds):
            share = p.schedule[t]
            target = int(round(share * flat.size))
            fix_round(flat, fixed, target, threshold(t, rounds, p.delta), gamma0, order, force_rest=p.fill or share >= 1.0)
            row = {"round": t + 1, "target_share": share}
            if p.epochs > 0 and not fixed.all():
                # The regularizer pulls free weights toward the powers of two and every value
                # already in use (sums of powers once order > 0 has placed some).
                centres = np.union1d(candidates(gamma0, float(np.abs(flat).max()), 0), flat[fixed])
                result = retrain_round(self.proto, self._split(flat), self._split(fixed), centres, self.data.train,
                                       self.teacher, options, self.task, seed=ctx.seed, round_index=t)
                if result.form and not said_form:  # every round builds the same form: say it once
                    ctx.say(f"  {result.form}")
                    said_form = result.form
                trained = np.concatenate([result.values[n].ravel() for n in self.names]).astype(np.float32)
                flat = np.where(fixed, flat, trained)
                row.update(steps=result.steps, median_step_ms=round(1000 * result.step_seconds, 3),
                           task_loss=result.task_loss, regularizer=result.regularizer)
            stats = CodebookStats.of(flat[fixed])
            row.update(fixed_share=float(fixed.mean()), unique=stats.unique, entropy_bits=stats.entropy_bits)
            val = self.val_error(self._split(flat))
            if val is not None:
                row["val_error"] = val
            row["elapsed_s"] = time.perf_counter() - t0
            history.append(row)
            ctx.say(f"  round {t + 1}/{rounds}: {100 * row['fixed_share']:.2f}% fixed (target {100 * share:g}%), "
                    f"{stats.unique} values, {stats.entropy_bits:.3f} bits/weight"
                    + (f", val error {100 * val:.2f}%" if val is not None else ""))
            run_dir.save({"history": history}, arrays={"flat": flat, "fixed": fixed})
        val = history[-1].get("val_error") if history else None
        return FixRun(gamma0, order, self._split(flat), val, history, history[-1]["elapsed_s"] if history else 0.0)

    def _split(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        parts = np.split(flat, np.cumsum(self.sizes)[:-1])
        return {n: part.reshape(self.shapes[n]) for n, part in zip(self.names, parts)}


def rewrite_to_codebook(model: ir.Model, values: dict[str, np.ndarray]) -> CodebookStats:
    """Replace each weight by ``Gather(onnxcomp.codebook, W.idx)`` under the weight's own name."""
    pooled = np.concatenate([v.ravel() for v in values.values()]).astype(np.float32)
    stats = CodebookStats.of(pooled)
    book = np.array(stats.codebook, np.float32)
    graph = model.graph
    taken = all_names(model)
    codebook = new_initializer(graph, unique_name(model, CODEBOOK, taken), book)
    nodes = []
    for name, v in values.items():
        value = graph.initializers[name]
        v = np.asarray(v, np.float32)
        idx = np.searchsorted(book, v).astype(np.int32)
        if not np.array_equal(book[np.minimum(idx, book.size - 1)], v):
            raise PassError(f"weight-fix: tensor {name!r} holds a value outside the codebook (not every weight fixed)")
        indices = new_initializer(graph, unique_name(model, f"{name}.idx", taken), idx)
        node = ir.Node("", "Gather", [codebook, indices], {"axis": ir.AttrInt64("axis", 0)},
                       name=unique_name(model, f"{name}/codebook_gather", taken))
        out = node.outputs[0]
        out.dtype = ir.DataType.FLOAT
        out.shape = ir.Shape(v.shape)
        nodes.append(node)
        replace_initializer(graph, value, out)
    graph.insert_before(graph[0], nodes)
    return stats
