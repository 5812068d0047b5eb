"""finetune trains EPR graphs through ONNX Runtime training on real (pooled 8x8) MNIST digits:
latents move, the rate falls, runs are reproducible and resumable, and bad input is named."""

from __future__ import annotations

import contextlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxcomp import cli
from onnxcomp.compile import compress
from onnxcomp.errors import DataError, PassError, TrainingError
from onnxcomp.training.session import TrainingSession
from onnxcomp.pipeline import parse_pipeline
from tests.conftest import make_model, mnist_npz

FAST = "normalize,epr-reparam{prior=logistic},finetune{epochs=2 lambda=10 lr=0.005 checkpoint_every=3},pack"


def compress_quiet(src, out, pipeline=FAST, **kw):
    return compress(src, out, pipeline, progress=False, **kw)


@contextlib.contextmanager
def interrupted_training(monkeypatch, when):
    """Inside: a training step raises KeyboardInterrupt (as Ctrl-C would) once ``when(session,
    sessions so far)`` holds, and the block must end by it; steps are real again afterwards."""
    real_step = TrainingSession.step
    sessions = []

    def step(self, inputs):
        if self not in sessions:
            sessions.append(self)
        if when(self, sessions):
            raise KeyboardInterrupt
        return real_step(self, inputs)

    monkeypatch.setattr(TrainingSession, "step", step)
    with pytest.raises(KeyboardInterrupt):
        yield
    monkeypatch.setattr(TrainingSession, "step", real_step)


def test_training_moves_latents_and_lowers_the_rate(mlp, digits, tmp_path):
    report = compress_quiet(mlp, tmp_path / "out.onnx", data=digits)
    training = report["training"]
    assert training["loss"] == "ce" and training["steps"] == 8 and training["lambda"] == 10
    history = training["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    start = compress_quiet(mlp, tmp_path / "start.onnx", "normalize,epr-reparam{prior=logistic},epr-finalize,pack", data=digits)
    # A zero gradient (the trap of the naive straight-through form) would leave the latents, and
    # so the packed bytes, exactly where epr-reparam put them.
    assert report["payload_bytes"] < 0.95 * start["payload_bytes"]
    assert history[-1]["entropy_bits_per_weight"] < history[0]["entropy_bits_per_weight"] + 1e-9
    assert not (tmp_path / "out.onnx.train").exists()  # checkpoints go once the output is written


def test_weight_latents_train_and_the_packed_file_scores_as_the_trained_graph(mlp, digits, tmp_path):
    """latents=weight: the rounding finalize repeats (x = 64 phi step0 / step) is the graph's, so
    the packed file's val error is the one training measured at its last epoch."""
    pipeline = FAST.replace("epr-reparam{prior=logistic}", "epr-reparam{prior=logistic latents=weight}")
    report = compress_quiet(mlp, tmp_path / "out.onnx", pipeline, data=digits)
    start = compress_quiet(mlp, tmp_path / "start.onnx", "normalize,epr-reparam{prior=logistic latents=weight},epr-finalize,pack", data=digits)
    assert report["payload_bytes"] < 0.95 * start["payload_bytes"]
    assert report["metrics"]["val_error"] == pytest.approx(report["training"]["history"][-1]["val_error"], abs=0.0005)


def test_same_seed_same_bytes_and_resume_reproduces_an_uninterrupted_run(mlp, digits, tmp_path, monkeypatch, capsys):
    compress_quiet(mlp, tmp_path / "a.onnx", data=digits, seed=3)
    compress_quiet(mlp, tmp_path / "b.onnx", data=digits, seed=3)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()

    real_step = TrainingSession.step

    def interrupted(self, inputs):
        if self.steps == 5:  # checkpoints were written at steps 3 and 4 (end of epoch 1)
            raise KeyboardInterrupt
        return real_step(self, inputs)

    monkeypatch.setattr(TrainingSession, "step", interrupted)
    code = cli.main(["compress", str(mlp), "-o", str(tmp_path / "c.onnx"), "-p", FAST, "--data", digits,
                     "--seed", "3", "--quiet"])
    assert code == cli.EXIT_INTERRUPTED
    assert "run the same command with --resume" in capsys.readouterr().err
    assert (tmp_path / "c.onnx.train" / "finetune" / "lambda-10" / "checkpoint").exists()
    assert not (tmp_path / "c.onnx").exists()
    monkeypatch.setattr(TrainingSession, "step", real_step)
    lines = []
    compress(mlp, tmp_path / "c.onnx", FAST, data=digits, seed=3, resume=True, say=lines.append)
    assert any("resuming at step 4" in line for line in lines)
    assert (tmp_path / "c.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()


def test_distillation_needs_no_labels(mlp, tmp_path):
    unlabeled = mnist_npz(tmp_path / "unlabeled.npz", "x", (64,), pool=4, labels=False)
    report = compress_quiet(mlp, tmp_path / "out.onnx", data=unlabeled)
    assert report["training"]["loss"] == "distill"
    assert 0.0 <= report["training"]["val_error"] <= 1.0  # disagreement with the original model


def test_error_budget_searches_lambda_by_separate_runs(mlp, digits, tmp_path):
    pipeline = "normalize,epr-reparam{prior=logistic},finetune{epochs=1 search=runs search_runs=3},pack"
    report = compress_quiet(mlp, tmp_path / "out.onnx", pipeline, data=digits, max_error=0.95)
    search = report["metrics"]["search"]
    lambdas = [run["lambda"] for run in search["runs"]]
    assert lambdas == pytest.approx([0.3, 0.9, 2.7])  # every run met the loose budget: lambda grows
    assert search["chosen_lambda"] in lambdas and search["met"]
    assert report["metrics"]["val_error"] <= 0.95


CLIMB = "normalize,epr-reparam{prior=logistic},finetune{epochs=4 lr=0.005 climb_from=start climb_low=0.1 climb_high=100 cycle=2},pack"


def test_the_climb_raises_lambda_in_one_run_and_keeps_the_smallest_level_within_the_budget(mlp, digits, tmp_path):
    report = compress_quiet(mlp, tmp_path / "out.onnx", CLIMB, data=digits, max_error=0.95)
    search = report["metrics"]["search"]
    climb = search["runs"]
    # every level met the loose budget: the climb runs its 1.5 x 4 epochs, one level per 2-epoch
    # cycle, lambda rising geometrically from 0.3 x 0.1 to 0.3 x 100
    assert [row["epoch"] for row in climb] == [2, 4, 6] and {row["phase"] for row in climb} == {"climb"}
    assert [row["lambda"] for row in climb] == pytest.approx([0.03, 0.03 * 1000 ** 0.5, 30.0], rel=1e-6)
    training = report["training"]
    assert training["steps"] == 6 * 4 and search["met"]
    # kept: the smallest level (or the start, when no level is smaller), within the budget
    smallest = min(climb, key=lambda row: row["estimated_bytes"])
    kept = training["kept"]
    assert kept["met"] and training["val_error"] == kept["val_error"] <= 0.95
    assert kept["estimated_bytes"] <= smallest["estimated_bytes"]
    if kept["epoch"]:
        assert kept["epoch"] == smallest["epoch"] and search["chosen_lambda"] == pytest.approx(smallest["lambda"])


CLIMB_TRAINED = "normalize,epr-reparam{prior=logistic latents=weight},finetune{epochs=4 lr=0.005 cycle=1 climb_factor=2},pack"


def test_the_climb_from_a_trained_model_goes_up_within_the_budget_and_down_over_it(mlp, digits, tmp_path):
    report = compress_quiet(mlp, tmp_path / "up.onnx", CLIMB_TRAINED, data=digits, max_error=0.95)
    runs = report["metrics"]["search"]["runs"]
    # one training at lambda (4 epochs), then whole 1-epoch levels over the other 0.5 x 4 epochs
    assert [(r["phase"], r["epoch"]) for r in runs] == [("train", 4), ("climb", 5), ("climb", 6)]
    assert [r["lambda"] for r in runs] == pytest.approx([0.3, 0.6, 1.2])
    training = report["training"]
    assert training["steps"] == 6 * 4 and [row["epoch"] for row in training["history"]] == [1, 2, 3, 4, 5, 6]
    kept = training["kept"]
    assert kept["met"] and kept["estimated_bytes"] == min(r["estimated_bytes"] for r in runs)
    chosen = next(r for r in runs if r["epoch"] == kept["epoch"])  # the training's end counts as its own lambda
    assert report["metrics"]["search"]["chosen_lambda"] == pytest.approx(chosen["lambda"]) == training["lambda"]
    down = compress_quiet(mlp, tmp_path / "down.onnx", CLIMB_TRAINED, data=digits, max_error=0.0)
    assert [r["lambda"] for r in down["metrics"]["search"]["runs"]] == pytest.approx([0.3, 0.15, 0.075])
    assert not down["metrics"]["search"]["met"]


def test_an_interrupted_climb_from_a_trained_model_reuses_the_training_and_ends_with_the_same_bytes(mlp, digits, tmp_path, monkeypatch):
    compress_quiet(mlp, tmp_path / "a.onnx", CLIMB_TRAINED, data=digits, max_error=0.95)
    # in the climb's second level, after the checkpoint of its first (step 4 of the climb's session)
    with interrupted_training(monkeypatch, lambda session, sessions: len(sessions) == 2 and session.steps == 5):
        compress_quiet(mlp, tmp_path / "b.onnx", CLIMB_TRAINED, data=digits, max_error=0.95)
    lines = []
    compress(mlp, tmp_path / "b.onnx", CLIMB_TRAINED, data=digits, max_error=0.95, resume=True, say=lines.append)
    assert any("finished before the interruption" in line for line in lines)
    assert any("resuming at step 4" in line for line in lines)
    assert (tmp_path / "b.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()


def test_an_interrupted_climb_resumes_and_ends_with_the_same_bytes(mlp, digits, tmp_path, monkeypatch):
    compress_quiet(mlp, tmp_path / "a.onnx", CLIMB, data=digits, max_error=0.95)
    # in the climb's second level, after its checkpoint at step 12 (epoch 3)
    with interrupted_training(monkeypatch, lambda session, sessions: session.steps == 13):
        compress_quiet(mlp, tmp_path / "b.onnx", CLIMB, data=digits, max_error=0.95)
    lines = []
    compress(mlp, tmp_path / "b.onnx", CLIMB, data=digits, max_error=0.95, resume=True, say=lines.append)
    assert any("resuming at step 12" in line for line in lines)
    assert (tmp_path / "b.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()


def test_a_budget_no_epoch_meets_keeps_the_most_accurate_and_says_so(mlp, digits, tmp_path):
    report = compress_quiet(mlp, tmp_path / "out.onnx", CLIMB, data=digits, max_error=0.0)
    search = report["metrics"]["search"]
    assert not search["met"]
    assert any("no level of the climb met the error budget 0.00%" in note for note in report["notes"])
    start_and_epochs = [report["training"]["val_error"]] + [row["val_error"] for row in search["runs"]]
    assert report["training"]["val_error"] == min(start_and_epochs)


def test_the_climb_stops_after_patience_epochs_over_the_budget(mlp, digits, tmp_path, monkeypatch):
    from onnxcomp.passes.epr.trainer import EprTrainer

    # The val errors the climb sees: the start and epoch 1 within 0.5, then over it for good.
    scripted = iter([0.2, 0.3, 0.6, 0.7, 0.8, 0.9, 0.9, 0.9])
    monkeypatch.setattr(EprTrainer, "evaluate", lambda self, session, split: next(scripted))
    pipeline = "normalize,epr-reparam{prior=logistic},finetune{epochs=8 climb_from=start climb_epochs=1 cycle=1 patience=2},pack"
    report = compress_quiet(mlp, tmp_path / "out.onnx", pipeline, data=digits, max_error=0.5)
    search = report["metrics"]["search"]
    assert [row["epoch"] for row in search["runs"]] == [1, 2, 3]  # stopped after epochs 2 and 3 were over
    assert report["training"]["steps"] == 3 * 4 and search["met"]
    assert report["training"]["kept"]["epoch"] in (0, 1)  # the start or epoch 1: the only ones within


def test_an_interrupted_search_reuses_finished_trainings_and_ends_with_the_same_bytes(mlp, digits, tmp_path, monkeypatch):
    pipeline = "normalize,epr-reparam{prior=logistic},finetune{epochs=1 search=runs search_runs=2},pack"
    compress_quiet(mlp, tmp_path / "a.onnx", pipeline, data=digits, max_error=0.95)
    # inside the second training of the search
    with interrupted_training(monkeypatch, lambda session, sessions: len(sessions) == 2 and session.steps == 2):
        compress_quiet(mlp, tmp_path / "b.onnx", pipeline, data=digits, max_error=0.95)
    lines = []
    compress(mlp, tmp_path / "b.onnx", pipeline, data=digits, max_error=0.95, resume=True, say=lines.append)
    assert sum("finished before the interruption" in line for line in lines) == 1
    assert (tmp_path / "b.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()
    assert not (tmp_path / "b.onnx.train").exists()


def test_nan_loss_stops_and_keeps_the_last_checkpoint(mlp, digits, tmp_path, capsys):
    with np.load(digits) as arrays:
        broken = {k: arrays[k].copy() for k in arrays.files}
    broken["train/x"][300] = np.nan  # in the 3rd batch of epoch 2's order? anywhere: every epoch visits it
    np.savez(tmp_path / "nan.npz", **broken)
    code = cli.main(["compress", str(mlp), "-o", str(tmp_path / "out.onnx"), "-p", FAST,
                     "--data", str(tmp_path / "nan.npz"), "--quiet"])
    err = capsys.readouterr().err
    assert code == TrainingError.exit_code
    assert "training diverged: loss is nan" in err and "last good checkpoint" in err
    assert "Traceback" not in err and not (tmp_path / "out.onnx").exists()


def test_labels_out_of_range_are_named(mlp, digits, tmp_path):
    with np.load(digits) as arrays:
        broken = {k: arrays[k].copy() for k in arrays.files}
    broken["train/labels"][7] = 10
    np.savez(tmp_path / "bad.npz", **broken)
    with pytest.raises(DataError, match="label 10 at sample 7 is out of range: the model has 10 classes"):
        compress_quiet(mlp, tmp_path / "out.onnx", data=str(tmp_path / "bad.npz"))


def test_an_op_without_gradient_is_named(digits, tmp_path):
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "W1"], ["h"]), helper.make_node("CumSum", ["h", "axis"], ["s"], name="total"),
             helper.make_node("Gemm", ["s", "W2"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                       {"W1": rng.normal(0, 0.1, (64, 32)).astype(np.float32),
                        "W2": rng.normal(0, 0.1, (32, 10)).astype(np.float32), "axis": np.int64(1)})
    onnx.save(model, tmp_path / "cumsum.onnx")
    with pytest.raises(TrainingError, match=r"cannot train through 1 node.*total \(CumSum: no gradient builder\)"):
        compress_quiet(tmp_path / "cumsum.onnx", tmp_path / "out.onnx", data=digits)


def test_finetune_needs_a_reparameterized_model_and_train_data(mlp, digits, tmp_path):
    with pytest.raises(PassError, match="run epr-reparam before it"):
        compress_quiet(mlp, tmp_path / "out.onnx", "normalize,finetune,pack", data=digits)
    with pytest.raises(DataError, match="finetune needs --data"):
        compress_quiet(mlp, tmp_path / "out.onnx", "epr")


def test_options_parse_and_print_back():
    pipeline = parse_pipeline("normalize,epr-reparam{prior=logistic},finetune{lambda=0.5 epochs=3},pack")
    assert str(pipeline) == "normalize,epr-reparam{prior=logistic},finetune{epochs=3 lambda=0.5},pack"
    assert str(parse_pipeline(str(pipeline))) == str(pipeline)
    assert str(parse_pipeline("epr")) == "normalize,epr-reparam,finetune,pack"
    with pytest.raises(Exception, match="option loss=mse must be one of auto, ce, distill"):
        parse_pipeline("finetune{loss=mse}")


def test_distilling_starts_at_ptq_and_never_keeps_an_epoch_worse_on_val_than_the_start(mlp, digits, tmp_path):
    """Unlabeled data: epr-reparam starts from ptq's steps and rounding, and a training that only
    hurts (a learning rate far too high) ends at that start, bit for bit."""
    with np.load(digits) as arrays:
        unlabeled = {k: arrays[k] for k in arrays.files if not k.endswith("labels")}
    np.savez(tmp_path / "unlabeled.npz", **unlabeled)
    data = str(tmp_path / "unlabeled.npz")
    lines = []
    report = compress(mlp, tmp_path / "out.onnx", "normalize,epr-reparam,finetune{epochs=2 lr=0.5 lambda=30},pack",
                      data=data, progress=True, say=lines.append)
    assert report["training"]["loss"] == "distill"
    assert any("initial steps from ptq's search" in line for line in lines)
    assert any(line.strip().startswith("kept the start") for line in lines), lines[-5:]
    start = compress(mlp, tmp_path / "start.onnx", "normalize,epr-reparam,epr-finalize,pack", data=data, progress=False)
    assert report["payload_bytes"] == start["payload_bytes"]
    x = unlabeled["val/x"][:64].astype(np.float32)
    import onnxcomp.runtime as rt
    got = rt.InferenceSession(str(tmp_path / "out.onnx")).run(None, {"x": x})[0]
    want = rt.InferenceSession(str(tmp_path / "start.onnx")).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)


def test_the_climb_schedule_restarts_the_learning_rate_and_raises_lambda_once_per_cycle():
    from onnxcomp.passes.epr.trainer import TrainOptions, lambda_at, lr_at

    o = TrainOptions(lam=0.1, lambda_end=10.0, cycle_epochs=2, lr=1e-3, warmup_steps=0, lambda_warmup=0.0)
    per_epoch, total = 5, 30  # 3 cycles of 10 steps
    lrs = [lr_at(s, total, o, per_epoch) for s in range(total)]
    lams = [lambda_at(s, per_epoch, total, o) for s in range(total)]
    assert [lrs[s] for s in (0, 10, 20)] == [1e-3] * 3  # the peak at every cycle's first step
    assert all(a > b for a, b in zip(lrs[:9], lrs[1:10]))  # cosine down within a cycle
    assert lams[:10] == [0.1] * 10 and lams[10:20] == pytest.approx([1.0] * 10) and lams[20:] == pytest.approx([10.0] * 10)
