"""The compile driver: file in, pipeline, file out, report. The CLI and the Python API call this.

The caller's model is never changed (the driver loads its own copy), the output is staged, checked
(report, validation metrics) and moved into place last, so a failed run leaves no file, and
``compress`` reads only the train and validation splits of the data: the test
split is for ``onnxcomp eval`` alone.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from onnxcomp.errors import DataError
from onnxcomp.model_io import StagedModel, load_model, load_proto, write_bytes_atomic
from onnxcomp.pass_base import CompileContext
from onnxcomp.pipeline import parse_pipeline
from onnxcomp.report import payload_bytes, tensor_rows, weight_params


def load_compile_data(spec: str, model_proto) -> Any:
    """Train/val splits of a data spec for compiling; refuses test-only specs."""
    from onnxcomp.data import Data, load_data, model_input_dtypes, model_input_shapes

    if spec.endswith(":test"):
        raise DataError(f"data spec {spec!r}: compress never reads a test split; use it with 'onnxcomp eval'")
    data = load_data(spec, model_input_shapes(model_proto), model_input_dtypes(model_proto))
    return Data(data.spec, data.train, data.val, None)


def compress(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    pipeline: str = "ptq",
    data: str | None = None,
    max_error_increase: float | None = None,
    seed: int = 0,
    max_error: float | None = None,
    resume: bool = False,
    report_path: str | os.PathLike | None = None,
    progress: bool = True,
    say: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Compress ``input_path`` into ``output_path``; returns the report (also written as JSON)."""
    if not progress:
        say = lambda s: None  # noqa: E731
    pipe = parse_pipeline(pipeline)  # reject bad pipelines before any work
    for flag, budget in (("--max-error-increase", max_error_increase), ("--max-error", max_error)):
        if budget is None:
            continue
        if not 0.0 <= budget < 1.0:
            raise DataError(f"{flag} {budget} must be a fraction in [0, 1), e.g. 0.001")
        if data is None:
            raise DataError(f"{flag} needs --data (the validation split measures the error)")
    if max_error is not None and max_error_increase is not None:
        raise DataError("give --max-error or --max-error-increase, not both")
    model = load_model(input_path)
    original = Original(Path(input_path), Path(input_path).stat().st_size, payload_bytes(model), weight_params(model))
    dataset = load_compile_data(data, original.proto) if data else None
    if dataset is not None and dataset.train is None and any(p.trains for p in pipe.passes):
        from onnxcomp.data import HELD_OUT_EVERY, split_for_training

        dataset = split_for_training(dataset)
        say(f"data: one split; training on {len(dataset.train)} samples, validating on {len(dataset.val)} "
            f"(every {HELD_OUT_EVERY}th held out)")
    # Checkpoints of training passes live beside the output until it is written, so that an
    # interrupted run can be resumed with the same command plus --resume.
    work_dir = Path(output_path).with_name(Path(output_path).name + ".train")
    context = CompileContext(data=dataset, seed=seed, max_error_increase=max_error_increase, max_error=max_error,
                             progress=progress, say=say, original_source=lambda: original.proto,
                             work_dir=work_dir, resume=resume)
    say(f"pipeline: {pipe}")
    n = len(pipe.passes)
    counter = iter(range(1, n + 1))
    timings = pipe.run(model, context, on_pass=lambda p: say(f"[{next(counter)}/{n}] {p}"))
    if not any(p.name == "pack" for p in pipe.passes) and model.graph.initializers:
        context.warn("note: the pipeline has no 'pack' pass, so nothing is entropy coded and the file is not "
                     "smaller (latents stay as plain integer or float tensors); end it with ',pack'")
    # The output is checked (report, validation metrics) where it was staged and moved into place
    # last: a run that fails anywhere leaves no output file behind.
    with StagedModel(model, output_path) as staged:
        report = build_report(original, model, staged, pipe, context, timings)
        if report_path:
            write_json(report_path, report)
        staged.commit()
    shutil.rmtree(work_dir, ignore_errors=True)
    return report


@dataclass(frozen=True)
class Original:
    """The model as the user gave it: what the report compares the output with."""

    path: Path
    file_bytes: int
    payload_bytes: int
    weights: dict[str, tuple[int, ...]]  # float tensors it stores, by name

    @functools.cached_property
    def proto(self) -> Any:
        """onnx.ModelProto, read from the file when first needed (data-free runs never need it)."""
        return load_proto(self.path)


def build_report(original: Original, model, staged: StagedModel, pipe, context: CompileContext,
                 timings: dict[str, float]) -> dict[str, Any]:
    """The report of one compile (``--report``'s JSON; the CLI prints its summary table), of the
    output as staged (not yet in place)."""
    params = sum(int(np.prod(s)) if s else 1 for s in original.weights.values())
    payload = payload_bytes(model)
    notes = context.tensor_notes
    coded = [v for v in notes.values() if v.get("codec") == "ans"]
    report: dict[str, Any] = {
        "input": str(original.path),
        "output": str(staged.dest),
        "pipeline": str(pipe),
        "seed": context.seed,
        "original_bytes": original.file_bytes,
        "compressed_bytes": staged.size,
        "original_payload_bytes": original.payload_bytes,
        "payload_bytes": payload,
        "params": params,
        "bits_per_param": 8.0 * payload / max(1, params),
        "ans_bitstream_bytes": int(sum(v["bitstream_bytes"] for v in coded)),
        "ans_ideal_bytes": float(sum(v["ideal_bits"] for v in coded) / 8.0),
        "tensors": tensor_rows(original.weights, model, notes),
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "notes": context.log,
    }
    for section, result in context.results.items():
        if section != "search":  # a budget search is reported with the metrics it was judged by
            report[section] = result.as_json()
    dataset = context.data
    if dataset is not None and dataset.val is not None:
        context.say("evaluating on the validation split")
        t = time.perf_counter()
        try:
            report["metrics"] = validation_metrics(original.proto.SerializeToString(), str(staged.path), dataset.val)
        except DataError as exc:
            if dataset.val.labels is not None:
                raise  # labels that do not fit the model: the user's data is wrong, say so
            # unlabeled inputs (calibration data) and outputs without a class axis: the file is
            # still good, there is just no decision to compare
            context.warn(f"validation metrics unavailable: {exc}")
        if "search" in context.results:
            report.setdefault("metrics", {})["search"] = context.results["search"].as_json()
        report["timings_s"]["evaluate"] = round(time.perf_counter() - t, 4)
    if "search" in context.results:  # also at the top: with or without data, one place to look
        report["search"] = context.results["search"].as_json()
    report["summaries"] = [line for r in context.results.values() if (line := r.summary())]
    return report


def validation_metrics(original: bytes, compressed: str, val) -> dict[str, Any]:
    """The report's ``metrics``: both models' error on the validation split, or without labels
    the share of samples whose predictions changed (``onnxcomp.metrics``)."""
    import onnxcomp.runtime as rt
    from onnxcomp.metrics import disagreement, evaluate_session

    before, after = rt.InferenceSession(original), rt.InferenceSession(compressed)
    metrics: dict[str, Any] = {"split": "val", "samples": len(val)}
    if val.labels is not None:
        metrics["val_error_original"] = evaluate_session(before, val)
        metrics["val_error"] = evaluate_session(after, val)
    else:
        metrics.update(output_change(original, before, after, val))
        if "classes" not in {k["kind"] for k in metrics.get("outputs", {}).values()}:
            try:  # the first output's arg-max, where it has an axis to take it on: decisions flipped
                metrics["val_disagreement"] = disagreement(before, after, val)
            except Exception:  # noqa: BLE001 - a rank-1 or integer first output has no decisions
                pass
    return metrics


def output_change(original: bytes, before, after, val) -> dict[str, Any]:
    """Without labels: every output's kind and change on ``val`` and the task change, as the
    training passes measure them (``onnxcomp.training.outputs``)."""
    import onnx

    from onnxcomp.data import batches
    from onnxcomp.errors import DataError
    from onnxcomp.metrics import session_batch
    from onnxcomp.training.outputs import infer_kinds, measure_change

    names = [o.name for o in before.get_outputs()]
    inputs = [i.name for i in before.get_inputs()]
    size = session_batch(before, 256)

    def outputs_of(session):
        return lambda batch: dict(zip(names, session.run(None, {n: batch[n] for n in inputs})))

    first = next(iter(batches(val, size)), None)
    if first is None:
        return {}
    reference = outputs_of(before)(first.inputs)  # the kinds are read off the first batch
    try:
        kinds = infer_kinds(onnx.ModelProto.FromString(original), reference, len(first))
    except DataError:
        return {}  # no output to judge (all integer, or no weight reaches them)
    meter, _ = measure_change(kinds, val, outputs_of(before), outputs_of(after), size, [reference])
    per_output = meter.per_output()
    return {"outputs": {k.name: {"kind": k.kind, "axis": k.axis, "change": per_output.get(k.name), "why": k.why}
                        for k in kinds},
            "val_task_change": meter.task_change()}


def write_json(path: str | os.PathLike, obj: Any) -> None:
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(dest, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())
