"""Run directories resume only their own run, and the budget search keeps what it promises."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcomp.errors import TrainingError
from onnxcomp.training.workspace import RunDir, Workspace, fingerprint, search_budget


def test_a_run_dir_resumes_its_own_state_and_refuses_another_runs(tmp_path):
    run = RunDir(tmp_path / "run", "abc", resume=False)
    assert run.begin() is None
    run.save({"round": 3}, arrays={"w": np.arange(4, dtype=np.float32)})
    again = RunDir(tmp_path / "run", "abc", resume=True)
    assert again.begin() == {"round": 3, "fingerprint": "abc"}
    np.testing.assert_array_equal(again.arrays()["w"], np.arange(4, dtype=np.float32))
    with pytest.raises(TrainingError, match="different model, data, seed or options"):
        RunDir(tmp_path / "run", "other", resume=True).begin()
    # without --resume a saved state is cleared, not continued
    assert RunDir(tmp_path / "run", "abc", resume=False).begin() is None
    assert not (tmp_path / "run" / "state.json").exists()
    # a state that lacks a file the run needs (an ORT checkpoint) is started over
    RunDir(tmp_path / "run", "abc", resume=False).save({"step": 1})
    assert RunDir(tmp_path / "run", "abc", resume=True).begin(requires=("checkpoint",)) is None


def test_fingerprints_tell_graphs_settings_and_data_apart():
    from onnxcomp.data import Split

    split = Split({"x": np.zeros((100, 3), np.float32)}, None)
    other = Split({"x": np.ones((100, 3), np.float32)}, None)
    base = fingerprint(b"graph", {"lr": 0.1}, split)
    assert base == fingerprint(b"graph", {"lr": 0.1}, split)
    assert len({base, fingerprint(b"graph2", {"lr": 0.1}, split), fingerprint(b"graph", {"lr": 0.2}, split),
                fingerprint(b"graph", {"lr": 0.1}, other)}) == 4


def test_an_owned_workspace_is_removed_and_never_resumes(tmp_path):
    with Workspace(None, "finetune", resume=True) as ws:
        root = ws.owned
        assert root.exists() and ws.root == root / "finetune" and not ws.resume
    assert not root.exists()
    kept = Workspace(tmp_path, "weight-fix", resume=True)
    with kept:
        pass
    assert kept.root == tmp_path / "weight-fix" and kept.resume and tmp_path.exists()


def search(errors_sizes, stop_when_met, budget=0.1, runs=None):
    """search_budget over settings 0, 1, 2, ... whose (val error, size) are given."""
    said, warned, trained = [], [], []

    def train(setting):
        trained.append(setting)
        return errors_sizes[setting]

    outcome = search_budget(who="test", budget=budget, runs=runs or len(errors_sizes), first=0, train=train,
                            measure=lambda r: r, propose=lambda trials: trials[-1].settings + 1,
                            describe=lambda s: f"setting {s}", stop_when_met=stop_when_met,
                            say=said.append, warn=warned.append)
    return outcome, trained, said, warned


def test_the_search_keeps_the_smallest_run_within_the_budget():
    outcome, trained, said, warned = search([(0.05, 30.0), (0.2, 10.0), (0.08, 20.0), (0.1, 25.0)], stop_when_met=False)
    assert trained == [0, 1, 2, 3] and outcome.met and outcome.chosen.settings == 2 and not warned
    assert said[1] == "  setting 1: val error 20.00% over the budget 10.00%"


def test_the_search_can_stop_at_the_first_run_within_the_budget():
    outcome, trained, _, _ = search([(0.3, 1.0), (0.05, 9.0), (0.01, 1.0)], stop_when_met=True)
    assert trained == [0, 1] and outcome.chosen.settings == 1


def test_when_no_run_meets_the_budget_the_most_accurate_is_kept_and_said():
    outcome, _, _, warned = search([(0.3, 1.0), (0.2, 9.0), (0.25, 1.0)], stop_when_met=True)
    assert not outcome.met and outcome.chosen.settings == 1
    assert warned == ["test: no run met the error budget 10.00%; kept setting 1 (val error 20.00%)"]
