"""Run decode jobs on every core: constriction holds the GIL, so cores mean processes.

A job decodes one ANS stream into a destination array, optionally scaling it to float32 on the
way (the folded ``Cast -> Mul`` of the decode subgraph). With more than one core and enough
symbols, destinations live in one anonymous shared mapping and worker processes are forked
(cheap on Linux: nothing is re-imported or pickled); each writes its streams in place and exits
with a status, errors travel back through a pipe and are raised in the caller. Elsewhere, or for
small models, jobs run in this process. Large tensors are split into several streams by ``pack``
(row blocks joined by Concat) precisely so that one big weight still spreads over the cores.

Set ONNXCOMP_DECODE_WORKERS=1 to turn the processes off.
"""

from __future__ import annotations

import math
import mmap
import os
from dataclasses import dataclass

import numpy as np

from onnxcomp.errors import FormatError, OnnxcompError

from .entropy_decode import DecodePlan, iter_values

PARALLEL_MIN_SYMBOLS = 1 << 21
ALIGN = 64
FILE_ALIGN = 1 << 16  # onnxruntime maps external data only at allocation-granularity offsets


@dataclass
class Job:
    plan: DecodePlan  # or a BytePlanePlan (exact floats: never scaled)
    out: np.ndarray  # C-contiguous destination of exactly plan.shape elements
    step: np.ndarray | None = None  # float32 step broadcasting against plan.shape, or None for ints
    step_first: bool = False  # Mul(step, x) rather than Mul(x, step): operand order as in the graph

    def run(self) -> None:
        shape = self.plan.shape
        if self.step is None:
            self.plan.decode_into(self.out.reshape(-1))  # a view: out is C-contiguous
            return
        row = math.prod(shape[1:])
        lead = self.step.ndim == len(shape) and self.step.shape[0] == shape[0] and shape[0] > 1
        flat = self.out.reshape(shape[0], -1) if shape else self.out.reshape(1, -1)
        r = 0
        for chunk in iter_values(self.plan, granularity=max(1, row)):
            rows = chunk.size // max(1, row) if shape else 1
            part = chunk.reshape((rows,) + shape[1:]) if shape else chunk.reshape(())
            s = self.step[r : r + rows] if lead else self.step
            # Exactly onnxruntime's Cast(int->float32) then one correctly rounded float32 multiply.
            block = np.multiply(s, part, dtype=np.float32, casting="unsafe") if self.step_first else \
                np.multiply(part, s, dtype=np.float32, casting="unsafe")
            flat[r : r + rows] = block.reshape(rows, -1)
            r += rows


def workers_available() -> int:
    env = os.environ.get("ONNXCOMP_DECODE_WORKERS")
    if env:
        return max(1, int(env))
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:
        return max(1, min(8, os.cpu_count() or 1))


class Arena:
    """Destination arrays: private memory, one shared anonymous mapping (jobs in processes), or
    a shared mapping of a file (``path``), which onnxruntime can then map as external data.

    Offsets are multiples of FILE_ALIGN so that every tensor of a file can be memory-mapped.
    """

    def __init__(self, specs: list[tuple[tuple[int, ...], np.dtype]], shared: bool, path: str | None = None):
        self.shared = shared or path is not None
        sizes = [int(np.dtype(dt).itemsize * math.prod(shape)) for shape, dt in specs]
        align = FILE_ALIGN if path is not None else ALIGN
        self.offsets, total = [], 0
        for size in sizes:
            self.offsets.append(total)
            total += -(-size // align) * align
        self.size = max(total, align)
        self._map: mmap.mmap | None = None
        if path is not None:
            with open(path, "wb+") as fh:
                fh.truncate(self.size)
                self._map = mmap.mmap(fh.fileno(), self.size)
        elif shared:
            self._map = mmap.mmap(-1, self.size)
        self.arrays = []
        for (shape, dt), off in zip(specs, self.offsets):
            if self._map is not None:
                count = math.prod(shape)
                self.arrays.append(np.frombuffer(self._map, dtype=dt, count=count, offset=off).reshape(shape))
            else:
                self.arrays.append(np.empty(shape, dtype=dt))

    def close(self) -> None:
        """Unmap (file arenas): the data stays in the file; the arrays must not be used again."""
        self.arrays = []
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view is still alive somewhere; the mapping goes with it
                pass


def run_jobs(jobs: list[Job], workers: int) -> None:
    """Run every job; raise the first job's OnnxcompError (FormatError for bad streams)."""
    if workers <= 1 or len(jobs) < 2 or not hasattr(os, "fork"):
        for job in jobs:
            job.run()
        return
    groups: list[list[Job]] = [[] for _ in range(min(workers, len(jobs)))]
    loads = [0] * len(groups)
    for job in sorted(jobs, key=lambda j: -j.plan.count):  # longest first onto the least loaded
        i = loads.index(min(loads))
        groups[i].append(job)
        loads[i] += job.plan.count
    children = []
    for group in groups[1:]:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: decode, report, and leave without running any parent cleanup
            os.close(read_fd)
            status = 0
            try:
                for job in group:
                    job.run()
            except BaseException as exc:  # noqa: BLE001 - every failure must reach the parent
                kind = "format" if isinstance(exc, FormatError) else "other"
                os.write(write_fd, f"{kind}:{exc}".encode()[:8192])
                status = 1
            os._exit(status)
        os.close(write_fd)
        children.append((pid, read_fd))
    first_error: Exception | None = None
    try:
        for job in groups[0]:
            job.run()
    except OnnxcompError as exc:
        first_error = exc
    for pid, read_fd in children:
        with os.fdopen(read_fd, "rb") as pipe:
            message = pipe.read().decode(errors="replace")
        _, status = os.waitpid(pid, 0)
        if first_error is None and status != 0:
            kind, _, text = message.partition(":")
            first_error = FormatError(text) if kind == "format" else OnnxcompError(
                f"decode worker failed: {text or f'exit status {status}'}")
    if first_error is not None:
        raise first_error

