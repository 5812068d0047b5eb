"""Where training passes keep their state, how a run resumes, and the error-budget search.

Both training methods (EPR's ``finetune``, ``weight-fix``) share three things here:

* :class:`Workspace`: the pass's directory, ``<output>.train/<pass>/`` under ``compile`` (kept
  until the output is written, so an interrupted run can be resumed with ``--resume``), or a
  temporary directory removed when the pass ends when a pass runs on its own;
* :class:`RunDir`: one training run's directory, its state keyed by a fingerprint of everything
  the run depends on (graph, data, seed, options), so ``--resume`` continues a run only where
  that is the same run, and says so when it is not;
* :func:`search_budget`: up to N runs with settings proposed from the ones before, kept: the
  smallest within the validation budget, else the most accurate, with a note that none met it.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from onnxcomp.data import Split
from onnxcomp.errors import TrainingError
from onnxcomp.model_io import write_bytes_atomic


def hash_split(digest, split: Split) -> None:
    """Feed a sample of ``split`` (every len/64-th row of each array) to a hashlib digest: enough
    for a resume fingerprint to tell data sets apart without hashing all of them."""
    for array in (*split.inputs.values(), *(() if split.labels is None else (split.labels,))):
        digest.update(np.ascontiguousarray(array[:: max(1, len(array) // 64)]).tobytes())


def fingerprint(graph_bytes: bytes, settings: Any, split: Split | None) -> str:
    """What a saved state must match to be resumed: the graph, the settings (JSON), the data."""
    digest = hashlib.sha256(graph_bytes)
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    if split is not None:
        hash_split(digest, split)
    return digest.hexdigest()


class RunDir:
    """One run's directory: ``state.json`` (with the fingerprint) and ``state.npz`` arrays,
    written atomically after every unit of work (an epoch, a round), plus whatever else the run
    keeps there (an ONNX Runtime checkpoint)."""

    def __init__(self, path: Path, fingerprint: str, resume: bool) -> None:
        self.path, self.fingerprint, self.resume = Path(path), fingerprint, resume

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    @property
    def arrays_file(self) -> Path:
        return self.path / "state.npz"

    def begin(self, requires: tuple[str, ...] = ()) -> dict | None:
        """The saved state to continue from (with --resume and a state of this very run), else
        None after clearing the directory. ``requires`` names further files a usable state needs.
        A state of a different run (model, data, seed or options changed) is refused."""
        state = None
        if self.resume and self.state_file.exists() and all((self.path / f).exists() for f in requires):
            state = json.loads(self.state_file.read_text())
            if state.get("fingerprint") != self.fingerprint:
                raise TrainingError(f"the state in {self.path} is from a different model, data, seed or options; "
                                    "run without --resume to start over")
        if state is None:
            shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True, exist_ok=True)
        return state

    def save(self, state: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
        if arrays is not None:
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            write_bytes_atomic(self.arrays_file, buffer.getvalue())
        write_bytes_atomic(self.state_file, json.dumps({**state, "fingerprint": self.fingerprint}).encode())

    def arrays(self) -> dict[str, np.ndarray]:
        with np.load(self.arrays_file) as saved:
            return {k: saved[k].copy() for k in saved.files}


class Workspace:
    """A training pass's directory (module doc); use as a context manager."""

    def __init__(self, work_dir: Path | None, pass_name: str, resume: bool) -> None:
        self.owned = Path(tempfile.mkdtemp(prefix=f"onnxcomp-{pass_name}-")) if work_dir is None else None
        self.root = (self.owned or Path(work_dir)) / pass_name
        self.resume = resume and self.owned is None

    def run(self, tag: str, fingerprint: str) -> RunDir:
        return RunDir(self.root / tag, fingerprint, self.resume)

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc) -> None:
        if self.owned is not None:
            shutil.rmtree(self.owned, ignore_errors=True)


S = TypeVar("S")  # a run's settings (lambda; gamma0 and order)
R = TypeVar("R")  # a run's result


@dataclass
class Trial(Generic[S, R]):
    settings: S
    result: R
    val_error: float
    size: float  # what the search minimizes among runs within the budget (estimated bytes)

    def within(self, budget: float) -> bool:
        return self.val_error <= budget


@dataclass
class SearchOutcome(Generic[S, R]):
    chosen: Trial[S, R]
    trials: list[Trial[S, R]]
    budget: float
    met: bool  # False: no run met the budget, ``chosen`` is the most accurate


def search_budget(*, who: str, budget: float, runs: int, first: S, train: Callable[[S], R],
                  measure: Callable[[R], tuple[float, float]], propose: Callable[[list[Trial[S, R]]], S],
                  describe: Callable[[S], str], stop_when_met: bool, say: Callable[[str], None],
                  warn: Callable[[str], None]) -> SearchOutcome[S, R]:
    """Train up to ``runs`` times, from ``first``, each next setting ``propose``d from the trials so
    far; ``measure`` gives a result's (val error, size). Stops at the first run within the budget
    when ``stop_when_met``. Keeps the smallest run within the budget, else the most accurate, and
    ``warn``s that no run met it."""
    trials: list[Trial[S, R]] = []
    settings = first
    for i in range(runs):
        result = train(settings)
        val_error, size = measure(result)
        trial = Trial(settings, result, val_error, size)
        trials.append(trial)
        ok = trial.within(budget)
        say(f"  {describe(settings)}: val error {100 * val_error:.2f}% {'within' if ok else 'over'} the budget {100 * budget:.2f}%")
        if ok and stop_when_met:
            break
        if i + 1 < runs:
            settings = propose(trials)
    within = [t for t in trials if t.within(budget)]
    if within:
        return SearchOutcome(min(within, key=lambda t: t.size), trials, budget, True)
    best = min(trials, key=lambda t: t.val_error)
    warn(f"{who}: no run met the error budget {100 * budget:.2f}%; kept {describe(best.settings)} "
         f"(val error {100 * best.val_error:.2f}%)")
    return SearchOutcome(best, trials, budget, False)
