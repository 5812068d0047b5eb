"""``weight-fix``: WFN weight fixing, every weight of the network onto one small shared codebook.

Rounds (``schedule``) fix a growing share of all Conv/ConvTranspose/Gemm/MatMul/RNN weights and
biases (``onnxcomp.weights.find_weights``; optionally BatchNormalization scales and shifts that
normalize did not fold) to zero or signed powers of two (``onnxcomp.weight_fixing``), retraining
the still-free weights between rounds through ONNX Runtime training (``onnxcomp.wfn_training``).
Afterwards each weight W is

    W.idx (int32 initializer) -> Gather(onnxcomp.codebook) -> W

with one float32 codebook for the whole network, so ``pack`` entropy-codes the indices at their
entropy (not log2 of the codebook size) and the runtime rebuilds W with EntropyDecode -> Gather.

With an error budget (``--max-error`` / ``--max-error-increase``, on the validation split) a run
that ends over budget is repeated with finer centres (order + 1) or fewer zeros (gamma0 halved),
alternating, up to ``search_runs`` runs; the first within budget is kept, else the most accurate. State is saved after
every round in ``<output>.train/weight-fix/``: ``--resume`` continues at the next round and ends
with the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from onnxcomp.errors import DataError, PassError
from onnxcomp.finetune import LOSSES, Teacher, hash_split, resolve_loss
from onnxcomp.irutil import all_names, new_initializer, unique_name
from onnxcomp.metrics import error_budget
from onnxcomp.model_io import to_proto, write_bytes_atomic
from onnxcomp.pass_base import CompressionPass, register_pass
from onnxcomp.passes.epr_reparam import EprSpec
from onnxcomp.weight_fixing import PAPER_SCHEDULE, CodebookStats, candidates, fix_round, threshold
from onnxcomp.weights import find_weights
from onnxcomp.wfn_training import RetrainOptions, retrain_round

CODEBOOK = "onnxcomp.codebook"
MAX_ORDER = 2  # sums of up to three powers of two


@register_pass
@dataclass
class WeightFixPass(CompressionPass):
    name = "weight-fix"
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
    batchnorm: bool = field(default=False, metadata={"help": "also fix BatchNormalization scales/shifts that normalize did not fold"})
    threads: int = field(default=1, metadata={"help": "ORT threads; results are reproducible for a fixed count (0 = all cores)"})
    fill: bool = field(default=True, metadata={"help": "every round fixes its full share: what no centre takes within the threshold goes to its nearest centre and is retrained around (false: only the last round forces)"})
    search_runs: int = field(default=3, metadata={"help": "with an error budget: runs tried; after one over budget, order + 1 and gamma0 / 2 alternate"})

    def validate_options(self) -> None:
        bad = self.option_error
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
        if EprSpec.from_model(model) is not None or CODEBOOK in model.graph.initializers:
            raise PassError("weight-fix: the model is already reparameterized (epr-reparam or weight-fix ran); "
                            "weight-fix takes float weights, e.g. -p wfn")
        names = self._weights(model)
        if not names:
            ctx.log.append("weight-fix: no float32 weights to fix; model left unchanged")
            ctx.say(ctx.log[-1])
            return ir.passes.PassResult(model, False)
        proto = to_proto(model)
        start = {n: model.graph.initializers[n].const_value.numpy().astype(np.float32) for n in names}
        run = _Run(self, proto, start)
        try:
            budget = run.budget()
            gamma0, order, results = self.gamma0, self.order, []
            for _ in range(self.search_runs if budget is not None else 1):
                result = run.fix(gamma0, order, f"gamma0-{gamma0:g}-order-{order}")
                results.append(result)
                if budget is None:
                    break
                ok = result["val_error"] <= budget
                ctx.say(f"  gamma0 {gamma0:g}, order {order}: val error {100 * result['val_error']:.2f}% "
                        f"{'within' if ok else 'over'} the budget {100 * budget:.2f}%")
                if ok:
                    break
                # Finer centres first (measured: cheaper in entropy than more nonzero weights),
                # then fewer zeros, alternating while the order can still grow.
                if order < MAX_ORDER and (len(results) == 1 or results[-2]["order"] == order):
                    order += 1
                else:
                    gamma0 /= 2
        finally:
            if run.owned_dir is not None:
                shutil.rmtree(run.owned_dir, ignore_errors=True)
        chosen = results[-1]
        if budget is not None and chosen["val_error"] > budget:
            chosen = min(results, key=lambda r: r["val_error"])
            ctx.log.append(f"weight-fix: no run met the error budget {100 * budget:.2f}%; kept gamma0 "
                           f"{chosen['gamma0']:g}, order {chosen['order']} (val error {100 * chosen['val_error']:.2f}%)")
            ctx.say(ctx.log[-1])
        stats = rewrite_to_codebook(model, chosen["values"])
        for n in names:
            ctx.note(n, method="wfn")
        ctx.note("__wfn__", **{k: v for k, v in chosen.items() if k != "values"}, **asdict(stats),
                 runs=[{"gamma0": r["gamma0"], "order": r["order"], "val_error": r["val_error"]} for r in results],
                 budget=budget)
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
            ctx.log.append(f"weight-fix: {line}")
            ctx.say(ctx.log[-1])
        return names


class _Run:
    """Everything one compile shares between weight-fixing runs: data, teacher, the work dir."""

    def __init__(self, p: WeightFixPass, proto: onnx.ModelProto, start: dict[str, np.ndarray]) -> None:
        ctx = p.context
        self.p, self.proto, self.start = p, proto, start
        self.data = ctx.data
        if p.epochs > 0 and (self.data is None or self.data.train is None):
            raise DataError("weight-fix retrains between rounds and needs --data with a train split "
                            "(e.g. --data mnist), or weight-fix{epochs=0} to fix without retraining")
        self.teacher = Teacher(ctx.original_model.SerializeToString()) if ctx.original_model is not None else None
        self.loss = p.loss
        self.output_rank = 2
        if self.data is not None and self.data.train is not None and self.teacher is not None:
            self.loss, probe = resolve_loss(p.loss, self.data.train, self.teacher, "weight-fix")
            self.output_rank = probe.ndim
        elif p.epochs > 0:
            raise PassError("weight-fix: the compile context has no original model (the teacher and error baseline)")
        # Under compile, state lives in <output>.train/ (removed once the output is written);
        # called on its own, in a temporary directory removed when the pass ends.
        self.owned_dir = Path(tempfile.mkdtemp(prefix="onnxcomp-wfn-")) if ctx.work_dir is None else None
        self.root = (self.owned_dir or Path(ctx.work_dir)) / "weight-fix"
        self.names = list(start)
        self.shapes = {n: start[n].shape for n in self.names}
        self.sizes = [start[n].size for n in self.names]

    def budget(self) -> float | None:
        ctx = self.p.context
        val = self.data.val if self.data is not None else None
        return error_budget(ctx.max_error, ctx.max_error_increase, val, self.teacher.session if self.teacher else None)

    def val_error(self, values: dict[str, np.ndarray]) -> float | None:
        if self.data is None or self.data.val is None:
            return None
        import onnxruntime as ort

        from onnxcomp.metrics import disagreement, evaluate_session
        from onnxcomp.ort_training import apply_parameters, session_options

        session = ort.InferenceSession(apply_parameters(self.proto, values).SerializeToString(), session_options(1),
                                       providers=["CPUExecutionProvider"])
        if self.data.val.labels is not None:
            return evaluate_session(session, self.data.val)
        return disagreement(self.teacher.session, session, self.data.val)

    def fingerprint(self, gamma0: float, order: int) -> str:
        digest = hashlib.sha256(self.proto.SerializeToString())
        options = {f.name: getattr(self.p, f.name) for f in self.p.options() if f.name != "search_runs"}
        options["gamma0"], options["order"] = gamma0, order
        digest.update(json.dumps([options, self.p.context.seed, self.loss], sort_keys=True, default=str).encode())
        if self.data is not None and self.data.train is not None:
            hash_split(digest, self.data.train)
        return digest.hexdigest()

    def fix(self, gamma0: float, order: int, tag: str) -> dict:
        """One full weight-fixing run at ``gamma0`` and ``order``: every round, resumable per round."""
        p, ctx = self.p, self.p.context
        work = self.root / tag
        fingerprint = self.fingerprint(gamma0, order)
        flat = np.concatenate([self.start[n].ravel() for n in self.names]).astype(np.float32)
        fixed = np.zeros(flat.size, bool)
        history: list[dict] = []
        state_file = work / "state.json"
        if ctx.resume and state_file.exists() and json.loads(state_file.read_text()).get("fingerprint") == fingerprint:
            state = json.loads(state_file.read_text())
            with np.load(work / "state.npz") as arrays:
                flat, fixed = arrays["flat"].copy(), arrays["fixed"].copy()
            history = state["history"]
            ctx.say(f"  resuming weight-fix after round {len(history)} of {len(p.schedule)} from {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter() - (history[-1]["elapsed_s"] if history else 0.0)
        rounds = len(p.schedule)
        options = RetrainOptions(p.epochs, p.lr, p.batch, p.tau, p.beta, self.loss, p.threads, p.weight_decay)
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
                                       self.teacher, options, seed=ctx.seed, round_index=t, output_rank=self.output_rank)
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
            arrays = io.BytesIO()
            np.savez(arrays, flat=flat, fixed=fixed)
            write_bytes_atomic(work / "state.npz", arrays.getvalue())
            write_bytes_atomic(state_file, json.dumps({"fingerprint": fingerprint, "history": history}).encode())
        values = self._split(flat)
        val = history[-1].get("val_error") if history else None
        return {"gamma0": gamma0, "values": values, "val_error": val, "history": history,
                "schedule": list(p.schedule), "delta": p.delta, "order": order, "loss": self.loss,
                "wall_s": history[-1]["elapsed_s"] if history else 0.0}

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
        value.replace_all_uses_with(out)
        del graph.initializers[name]
        out.name = name
    graph.insert_before(graph[0], nodes)
    return stats
