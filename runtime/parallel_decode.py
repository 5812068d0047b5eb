"""Run decode jobs, in this process or on several cores.

A job decodes one ANS stream into a destination array, optionally scaling it to float32 on the
way (the folded ``Cast -> Mul`` of the decode subgraph). With the native library
(:mod:`.native`) a job is one foreign call that releases the GIL, so jobs run in threads on every
core by default, in the caller's process: nothing is forked. Without it, decoding goes through
constriction, which holds the GIL (measured: two threads decoding take the CPU time of one), so
more cores mean processes, and the only cheap way to start them is ``fork``, which is unsafe in a
host that runs threads of its own (onnxruntime itself has thread pools; a forked child inherits
their locks). So the Python decoders run in the caller's thread unless it opts in: ``workers=N``
(``decode_model``/``decode_workers=`` of ``InferenceSession``) or ``ONNXCOMP_DECODE_WORKERS=N``.
Then, with enough symbols, destinations live in one shared mapping and N-1 worker processes are
forked; each writes its streams in place and exits with a status, errors travel back through a
pipe and are raised in the caller. Large tensors are split into several streams by ``pack`` (row
blocks joined by Concat) so that one big weight still spreads over the workers.
"""

from __future__ import annotations

import math
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from onnxcomp.errors import FormatError, OnnxcompError

from . import native
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

    def native_args(self) -> tuple | None:
        """The job as one entry of native.entropy_decode_batch, or None where it cannot be one
        (exact floats, a step varying along two axes, the library missing)."""
        if not native.available() or not isinstance(self.plan, DecodePlan) or not self.out.flags.c_contiguous:
            return None
        flat = self.out.reshape(-1)
        if self.step is None:
            return (self.plan, flat, None, 0) if flat.dtype in native.INTEGER_TYPES else None
        stride = native.step_layout(self.step, self.plan.shape)
        return None if stride is None or flat.dtype != np.float32 else (self.plan, flat, self.step, stride)

    def run(self) -> None:
        args = self.native_args()
        if args is not None:
            # A scalar step or one per index of an axis folds natively (float32 multiplication
            # commutes exactly, so the graph's operand order does not matter).
            native.entropy_decode_into(*args)
            return
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


WORKERS_ENV = "ONNXCOMP_DECODE_WORKERS"


def workers_available(requested: int | None = None) -> int:
    """Decode threads (native) or processes (Python) to use: ``requested``, else
    ONNXCOMP_DECODE_WORKERS, else every core with the native decoder and 1 (no fork) without;
    never more than the cores this process may run on."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    if requested is None:
        env = os.environ.get(WORKERS_ENV, "").strip()
        try:
            requested = int(env) if env else (cores if native.available() else 1)
        except ValueError:
            raise OnnxcompError(f"{WORKERS_ENV}={env!r} is not a number of workers") from None
    return max(1, min(int(requested), cores, 8))


def needs_shared_memory(workers: int) -> bool:
    """Whether jobs on ``workers`` run in forked processes (destinations must then be shared)."""
    return workers > 1 and not native.available()


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
    if native.available():  # one interleaved batch per thread, even on one
        _run_in_threads(jobs, max(1, workers))
        return
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
    first_error: BaseException | None = None
    try:
        for job in groups[0]:
            job.run()
    except BaseException as exc:  # noqa: BLE001 - the children are reaped before anything propagates
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


def _run_in_threads(jobs: list[Job], workers: int) -> None:
    """Native jobs on ``workers`` threads: the streams that can be, as one interleaved batch per
    thread (balanced by symbols, longest first), the others one by one; the first error in job
    order wins, after every thread has stopped."""
    batched = [(i, job.native_args()) for i, job in enumerate(jobs)]
    groups: list[list[tuple[int, tuple]]] = [[] for _ in range(workers)]
    loads = [0] * workers
    single = []
    for i, args in sorted(batched, key=lambda item: -jobs[item[0]].plan.count):
        if args is None:
            single.append(i)
            continue
        g = loads.index(min(loads))
        groups[g].append((i, args))
        loads[g] += jobs[i].plan.count
    errors: dict[int, BaseException] = {}

    def run_group(group):
        for (i, _), error in zip(group, native.entropy_decode_batch([args for _, args in group])):
            if error is not None:
                errors[i] = error

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="onnxcomp-decode") as pool:
        futures = {pool.submit(run_group, group): None for group in groups if group}
        futures.update({pool.submit(jobs[i].run): i for i in single})
        for future, i in futures.items():
            exc = future.exception()
            if exc is not None:
                errors[i if i is not None else -1] = exc
    if errors:
        raise errors[min(errors)]
