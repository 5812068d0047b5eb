"""Train a reference model from scratch with ONNX Runtime training and write its inference ONNX.

    python -m onnxcomp.models.train lenet-300-100 --out models/lenet-300-100.onnx --seed 0

The shipped files in ``models/`` were made this way (exact commands and errors in
models/README.md). The output is the builder's graph with trained initializers, nothing else:
training nodes never leave the training session. Training uses AdamW with a linear warm-up and a
cosine decay per step, shuffles with ``seed * 1000 + epoch`` and seeds ORT, so a run is repeatable
for a seed and a thread count (bit-identical with the default single thread). Val error is reported every epoch; test error once, at the end, for the
README (it is never used to choose anything).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxcomp.data import Data, batches, load_data, model_input_shapes
from onnxcomp.errors import OnnxcompError, TrainingError
from onnxcomp.metrics import evaluate_session
from onnxcomp.model_io import write_bytes_atomic
from onnxcomp.models.lenet import BUILDERS, LABELS, with_training_loss
from onnxcomp.training.session import TrainingSession, apply_parameters, generate_artifacts, session_options


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    seed: int = 0
    lr: float = 2e-3
    batch_size: int = 128
    weight_decay: float = 0.3  # ORT's AdamW decays by lr * weight_decay per step
    warmup_steps: int = 200
    threads: int = 1  # 1 thread: bit-identical results on any machine


# Chosen on MNIST val error (see models/README.md); the CLI's flags override them.
DEFAULTS: dict[str, TrainConfig] = {
    "lenet-300-100": TrainConfig(epochs=20, lr=3e-3),
    "lenet5-caffe": TrainConfig(epochs=10, lr=2e-3),
}


def lr_at(step: int, total_steps: int, config: TrainConfig) -> float:
    """Linear warm-up to ``config.lr`` over ``warmup_steps``, then cosine decay to zero."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


def inference_error(model: onnx.ModelProto, data: Data, split: str, threads: int = 0) -> float:
    session = ort.InferenceSession(model.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"])
    return evaluate_session(session, data.split(split))


def train_classifier(
    model: onnx.ModelProto, data: Data, config: TrainConfig, log: Callable[[str], None] = print
) -> onnx.ModelProto:
    """``model`` (inference graph, output logits) with every initializer trained on ``data.train``.

    Logs one line per epoch with the mean training loss, the val error and the elapsed time.
    """
    if config.epochs < 1 or config.batch_size < 1:
        raise TrainingError(f"epochs and batch size must be >= 1, got {config.epochs} and {config.batch_size}")
    train = data.split("train")
    (input_name,) = model_input_shapes(model)
    trainable = [t.name for t in model.graph.initializer]
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    with tempfile.TemporaryDirectory(prefix="onnxcomp-train-") as tmp:
        artifacts = generate_artifacts(
            with_training_loss(model), trainable, [], tmp, weight_decay=config.weight_decay
        )
        session = TrainingSession(artifacts, lr=lr_at(0, total_steps, config), seed=config.seed, threads=config.threads)
        start = time.perf_counter()
        for epoch in range(config.epochs):
            losses = []
            for batch in batches(train, config.batch_size, shuffle_seed=config.seed * 1000 + epoch):
                session.set_lr(lr_at(session.steps, total_steps, config))
                loss = session.step({input_name: batch.inputs[input_name], LABELS: batch.labels})[0]
                losses.append(float(loss))
            trained = apply_parameters(model, session.parameters())
            val = inference_error(trained, data, "val", config.threads) if data.val is not None else float("nan")
            log(
                f"epoch {epoch + 1:3d}/{config.epochs}  loss {np.mean(losses):.4f}  "
                f"val error {100 * val:.2f}%  {time.perf_counter() - start:.0f}s"
            )
    return trained


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m onnxcomp.models.train", description=__doc__.split("\n")[0])
    parser.add_argument("model", choices=sorted(BUILDERS))
    parser.add_argument("--out", required=True, help="where to write the trained inference .onnx")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--seed", type=int, help="initial weights, shuffling and ORT seed")
    parser.add_argument("--lr", type=float, help="peak AdamW learning rate")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--threads", type=int, help="ORT intra-op threads, 0 = all cores")
    parser.add_argument("--data", default="mnist", help="data spec with a train split (default: mnist)")
    args = parser.parse_args(argv)
    flags = {field: getattr(args, field) for field in TrainConfig.__dataclass_fields__ if hasattr(args, field)}
    config = replace(DEFAULTS[args.model], **{k: v for k, v in flags.items() if v is not None})
    print(f"{args.model}: {config}")
    try:
        model = BUILDERS[args.model](config.seed)
        data = load_data(args.data, model_input_shapes(model))
        trained = train_classifier(model, data, config)
        if data.test is not None:
            print(f"test error {100 * inference_error(trained, data, 'test', config.threads):.2f}%")
        write_bytes_atomic(Path(args.out), trained.SerializeToString())
    except OnnxcompError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
