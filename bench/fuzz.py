"""Fuzz every decode path with mutated compressed files; count what each path does with them.

    .venv/bin/python bench/fuzz.py --cases 100000 --out bench/out/fuzz     # the benchmark run
    .venv/bin/python bench/fuzz.py --cases 300 --seed 0                    # the CI slice (tests/)

Seeds are small real compressed files of every codec and form onnxcomp writes (ANS streams, raw
narrow tensors, split streams, weight fixing's codebook, EPR's DCT decoder, exact floats, the
integers of an already-quantized model), compiled here through the real pipeline. Each case
mutates one seed (bit flips, byte runs, truncation, or an edit of one protobuf field anywhere in
the tree: a value, a length, a wire type, a field deleted, doubled or swapped) in one framing:

- ``sealed``: the mutated file as it is (domain version 3: the seal must catch every change);
- ``resealed``: the mutation sealed again, as a buggy or hostile writer would: the checks behind
  the seal must hold (a decoded, different model is then a different valid file, not an error);
- ``legacy``: the seed as a domain version 2 file (no seal), mutated: v2's guarantees.

Each case runs every decode path in a forked child (address-space limit, timeout, stderr
silenced), reporting per path one outcome class:

- ``same``: decoded, outputs on fixed inputs bit-identical to the unmutated seed's (a mutation of
  something nothing reads); ``refused``: a typed onnxcomp error; ``runtime-refused``: the decoder
  produced a model onnxruntime then refused (only possible behind a seal a writer forged);
  ``runtime-crash``/``runtime-hang``: the decoded standard model kills or stalls plain
  onnxruntime itself (checked in a separate child: decoding succeeds, onnxruntime's session or
  Run aborts or never returns); ``different``: decoded, outputs differ (a different file; only acceptable when not ``sealed``);
- bad, each must be zero: ``wrong`` (different outputs from a ``sealed`` file, i.e. silent wrong
  weights), ``raw-exception`` (anything but a typed error), ``crash`` (killed by a signal),
  ``hang`` (timeout), ``memory`` (MemoryError, or peak RSS up by more than MEMORY_GROWTH),
  ``leftover`` (a failed decompress left its output behind).

Children decode with ONNXCOMP_MAX_DECODED_BYTES=64 MiB (the seeds decode to a few KB), so a
memory blow-up stands out from what the budget allows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PATHS = ("decode_model", "InferenceSession", "CustomOpSession", "NativeOpSession", "decompress", "inspect")
# CustomOpSession: the Python op (onnxruntime-extensions); NativeOpSession: CustomOpSession(op="native"),
# the native library's kernels (skipped, with a message, where the library was not built).
from onnxcomp.runtime import native as _native  # noqa: E402 - after the sys.path entry above

if not _native.available():
    print("fuzz: the native ai.onnxcomp library is not built: path NativeOpSession skipped", file=sys.stderr)
    PATHS = tuple(p for p in PATHS if p != "NativeOpSession")
FRAMINGS = ("sealed", "resealed", "legacy")
MUTATIONS = ("bitflip", "bytes", "truncate", "field")
BAD = ("wrong", "raw-exception", "crash", "hang", "memory", "leftover")
CLASSES = ("same", "refused", "runtime-refused", "runtime-crash", "runtime-hang", "different") + BAD
PATH_TIMEOUT = 20.0  # seconds per path; the seeds decode in milliseconds
MEMORY_GROWTH = 1 << 30  # peak RSS growth of one path that counts as a blow-up
CHILD_BUDGET = str(64 << 20)  # ONNXCOMP_MAX_DECODED_BYTES in the children


@dataclass
class Seed:
    name: str
    data: bytes  # sealed, as onnxcomp writes it
    legacy: bytes  # the same as a domain version 2 file: no seal
    feeds: dict
    reference: dict  # path -> outputs of the unmutated seed


def build_seeds() -> list[Seed]:
    import numpy as np
    import onnx

    from onnxcomp.model_io import serialize
    from tests.conftest import compile_proto, tiny_cnn, tiny_mlp
    from tests.test_graph_forms import quantized_model

    mlp = {"x": np.random.default_rng(7).random((3, 64)).astype(np.float32)}
    cnn = {"x": np.random.default_rng(7).random((2, 1, 8, 8)).astype(np.float32)}
    specs = [
        ("ans", tiny_mlp(), "normalize,quantize{grid=rms bits=4},pack", mlp),
        ("ans+raw-cnn", tiny_cnn(), "normalize,quantize{grid=rms bits=4},pack", cnn),
        ("split-streams", tiny_mlp(), "normalize,quantize{grid=rms bits=4},pack{stream_symbols=1024}", mlp),
        ("wfn-codebook", tiny_mlp(), "normalize,weight-fix{epochs=0},pack", mlp),
        ("epr-dct", tiny_cnn(), "normalize,epr-reparam{conv_decoder=dct},epr-finalize,pack", cnn),
        ("exact-floats", few_mantissa_bits(tiny_mlp()), "lossless", mlp),
        ("quantized-int8", quantized_model(), "ptq", {"x": mlp["x"]}),
    ]
    seeds = []
    for name, proto, pipeline, feeds in specs:
        packed = compile_proto(proto, pipeline)
        if not any(n.domain == "ai.onnxcomp" for n in packed.graph.node):
            raise SystemExit(f"seed {name}: {pipeline} wrote no ai.onnxcomp node; nothing to fuzz")
        data = serialize(packed)
        legacy = onnx.ModelProto()
        legacy.CopyFrom(packed)
        for o in legacy.opset_import:
            if o.domain == "ai.onnxcomp":
                o.version = 2
        seed = Seed(name, data, legacy.SerializeToString(), feeds, {})
        for path in PATHS:
            outcome, outputs = run_path(path, seed.data, seed, None, keep_outputs=True)
            if outcome != "same":
                raise SystemExit(f"seed {name}: path {path} fails on the unmutated file: {outcome} {outputs}")
            seed.reference[path] = outputs
        seeds.append(seed)
    return seeds


def few_mantissa_bits(proto):
    """Float weights on a coarse grid (as a model trained in low precision has): their byte
    planes compress, so ``lossless`` codes them (BytePlaneDecode) instead of keeping them."""
    import numpy as np
    from onnx import numpy_helper

    for t in proto.graph.initializer:
        a = numpy_helper.to_array(t)
        t.CopyFrom(numpy_helper.from_array((np.round(a * 64) / 64).astype(np.float32), t.name))
    return proto


# ---- mutations -------------------------------------------------------------------------------

class Tree:
    """A protobuf message as a tree of fields, re-serializable after an edit. LEN payloads that
    parse as messages get children (names and raw data may parse by chance: editing them as a
    message is still a valid mutation)."""

    def __init__(self, number, wire, value, children=None):
        self.number, self.wire, self.value, self.children = number, wire, value, children
        self.length_lie = None  # a length prefix that disagrees with the payload

    @staticmethod
    def parse(buf: bytes, depth: int = 0) -> list[Tree]:
        from onnxcomp.errors import ModelLoadError
        from onnxcomp.runtime import onnx_wire as w

        out = []
        for f in w.parse_fields(memoryview(buf)):
            value = bytes(f.value) if f.wire_type == w.LEN else f.value
            children = None
            if f.wire_type == w.LEN and depth < 8 and len(value) >= 2:
                try:
                    children = Tree.parse(value, depth + 1)
                except (ModelLoadError, RecursionError):
                    children = None
            out.append(Tree(f.number, f.wire_type, value, children))
        return out

    def serialize(self) -> bytes:
        from onnxcomp.runtime import onnx_wire as w

        key = w.encode_varint((self.number << 3) | self.wire)
        if self.wire == w.VARINT:
            return key + w.encode_varint(self.value if isinstance(self.value, int) else 0)
        if self.wire in (w.FIXED64, w.FIXED32):
            n = 8 if self.wire == w.FIXED64 else 4
            return key + int(self.value if isinstance(self.value, int) else 0).to_bytes(n, "little", signed=False)[:n]
        payload = b"".join(c.serialize() for c in self.children) if self.children is not None else \
            (self.value if isinstance(self.value, bytes) else b"")
        length = len(payload) if self.length_lie is None else self.length_lie
        return key + w.encode_varint(length) + payload


def all_nodes(fields: list[Tree], parent: list[Tree] | None = None):
    for i, f in enumerate(fields):
        yield fields, i
        if f.children is not None:
            yield from all_nodes(f.children)


INTERESTING = [0, 1, 2, 3, 4, 7, 8, 16, 255, 256, 2**24, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**33, 2**62,
               2**63 - 1, 2**64 - 1, 2**64 - 2]


def mutate_field(data: bytes, rng: random.Random) -> bytes:
    from onnxcomp.runtime import onnx_wire as w

    fields = Tree.parse(data)
    siblings, i = rng.choice(list(all_nodes(fields)))
    f = siblings[i]
    kind = rng.choice(["value", "value", "value", "delete", "duplicate", "swap", "wire", "number", "length"])
    if kind == "delete":
        del siblings[i]
    elif kind == "duplicate":
        siblings.insert(rng.randrange(len(siblings) + 1), Tree(f.number, f.wire, f.value, f.children))
    elif kind == "swap":
        same = [j for j, g in enumerate(siblings) if g.number == f.number and j != i] or list(range(len(siblings)))
        j = rng.choice(same)
        siblings[i], siblings[j] = siblings[j], siblings[i]
    elif kind == "wire":
        f.wire = rng.choice([w.VARINT, w.FIXED64, w.LEN, w.FIXED32])
        if f.wire == w.LEN and not isinstance(f.value, bytes) and f.children is None:
            f.value = bytes(rng.randrange(256) for _ in range(rng.randrange(12)))
    elif kind == "number":
        f.number = rng.choice([1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 14, rng.randrange(1, 64)])
    elif kind == "length" and f.wire == w.LEN:
        true = len(f.serialize()) - len(w.encode_varint((f.number << 3) | f.wire))
        f.length_lie = rng.choice([0, 1, rng.randrange(1, 64), 2**20, 2**31, 2**40, max(0, true - rng.randrange(1, 9)),
                                   true + rng.randrange(1, 9)])
    elif f.wire == w.VARINT:
        f.value = rng.choice(INTERESTING + [rng.randrange(2**64), (f.value + 1) % 2**64, (f.value - 1) % 2**64,
                                            f.value ^ (1 << rng.randrange(64))])
    elif f.wire == w.LEN:
        if f.children is not None and rng.random() < 0.3:
            f.children = None  # the payload edited as bytes
        if f.children is None:
            payload = bytearray(f.value if isinstance(f.value, bytes) else b"")
            op = rng.choice(["flip", "cut", "grow", "random"])
            if op == "flip" and payload:
                payload[rng.randrange(len(payload))] ^= 1 << rng.randrange(8)
            elif op == "cut" and payload:
                del payload[rng.randrange(len(payload)):]
            elif op == "grow":
                payload += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
            else:
                payload = bytearray(rng.randrange(256) for _ in range(rng.randrange(0, 24)))
            f.value = bytes(payload)
    else:
        f.value = rng.randrange(2**(64 if f.wire == w.FIXED64 else 32))
    return b"".join(g.serialize() for g in fields)


def mutate(data: bytes, kind: str, rng: random.Random) -> bytes:
    b = bytearray(data)
    if kind == "bitflip":
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == "bytes":
        i = rng.randrange(len(b))
        n = rng.randrange(1, 9)
        b[i:i + n] = bytes(rng.randrange(256) for _ in range(rng.choice([n, n, 0, n + 3])))
    elif kind == "truncate":
        del b[rng.randrange(len(b)):]
    else:
        return mutate_field(data, rng)
    return bytes(b)


def frame(seed: Seed, framing: str, kind: str, rng: random.Random) -> bytes:
    """The mutated file of one case. A mutation that changes nothing (a value set to itself, a
    swap of equal fields) is drawn again: every case is a file that differs from its seed."""
    from onnxcomp.runtime.integrity import seal

    source = seed.data if framing == "sealed" else unsealed_v3(seed) if framing == "resealed" else seed.legacy
    for _ in range(20):
        mutated = mutate(source, kind, rng)
        if mutated != source:
            break
    return seal(mutated) if framing == "resealed" else mutated


def unsealed_v3(seed: Seed) -> bytes:
    """The seed's bytes without its seal (the seal is the last field onnxcomp writes)."""
    from onnxcomp.runtime import onnx_wire as w
    from onnxcomp.runtime.integrity import is_seal

    top = w.parse_fields(memoryview(seed.data))
    return b"".join(bytes(f.raw) for f in top if not is_seal(f))


# ---- the decode paths ------------------------------------------------------------------------

def _session_options():
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.log_severity_level = 4
    return so


def run_path(path: str, data: bytes, seed: Seed, workdir: str | None, keep_outputs: bool = False):
    """(outcome class, outputs or message) of one decode path on ``data``."""
    import numpy as np
    import onnxruntime as ort

    import onnxcomp.runtime as rt
    from onnxcomp.errors import OnnxcompError

    workdir = workdir or tempfile.mkdtemp(prefix="fuzz-")
    src = os.path.join(workdir, "in.onnx")
    with open(src, "wb") as fh:
        fh.write(data)

    def ort_run(model):
        try:
            sess = ort.InferenceSession(model, _session_options(), providers=["CPUExecutionProvider"])
            return sess.run(None, seed.feeds), None
        except Exception as exc:  # onnxruntime's own error types
            return None, f"{type(exc).__name__}: {exc}"

    try:
        if path == "decode_model":
            outputs, err = ort_run(rt.decode_model(src))
        elif path in ("InferenceSession", "CustomOpSession", "NativeOpSession"):
            if path == "InferenceSession":
                session = rt.InferenceSession(src, _session_options())
            else:
                session = rt.CustomOpSession(src, _session_options(), op="native" if path == "NativeOpSession" else "python")
            try:  # the session exists: what its Run does with the weights is onnxruntime's business
                outputs, err = session.run(None, seed.feeds), None
            except Exception as exc:  # onnxruntime's own error types (a Gather index out of range)
                outputs, err = None, f"{type(exc).__name__}: {exc}"
        elif path == "decompress":
            from onnxcomp.decompress import decompress

            out = os.path.join(workdir, "out.onnx")
            try:
                decompress(src, out)
            except OnnxcompError as exc:
                leftover = [f for f in os.listdir(workdir) if f != "in.onnx"]
                return ("leftover", leftover) if leftover else ("refused", str(exc))
            outputs, err = ort_run(out)
        else:
            from onnxcomp.inspection import inspect_model

            inspect_model(src)
            return "same", None
    except OnnxcompError as exc:
        return "refused", f"{type(exc).__name__}: {exc}"
    except MemoryError:
        return "memory", "MemoryError"
    except Exception as exc:  # noqa: BLE001 - this is what the fuzzer looks for
        import traceback

        return "raw-exception", f"{type(exc).__name__}: {exc} | {traceback.format_exc().splitlines()[-3:]}"
    if err is not None:
        return "runtime-refused", err
    if keep_outputs:
        return "same", outputs
    ref = seed.reference[path]
    same = len(ref) == len(outputs) and all(
        a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes() for a, b in zip(ref, outputs))
    return ("same" if same else "different"), None


# ---- children --------------------------------------------------------------------------------

def child(seed: Seed, data: bytes, paths: list[str], write_fd: int) -> None:
    """In a forked process: run ``paths`` in order, one JSON line per path on ``write_fd``."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        for path in paths:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            workdir = os.path.join(tmp, path)
            os.mkdir(workdir)
            outcome, detail = run_path(path, data, seed, workdir)
            grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
            if grown > MEMORY_GROWTH:
                outcome, detail = "memory", f"peak RSS grew {grown >> 20} MiB"
            line = json.dumps({"path": path, "outcome": outcome, "detail": str(detail)[:400] if detail else None})
            os.write(write_fd, (line + "\n").encode())


def forked(body, address_limit: int) -> tuple[int, int]:
    """(pid, read end of its pipe) of a child running ``body(write_fd)`` under the address-space
    limit, stdout/stderr silenced (onnxruntime's wrapper prints "EP Error" banners, its C++
    logs to stderr) and the children's decode budget; the child exits 0 whatever happens."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            resource.setrlimit(resource.RLIMIT_AS, (address_limit, address_limit))
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.environ["ONNXCOMP_MAX_DECODED_BYTES"] = CHILD_BUDGET
            body(write_fd)
        except BaseException:  # noqa: BLE001 - the parent reads what was written before
            pass
        finally:
            os._exit(0)
    os.close(write_fd)
    return pid, read_fd


def read_lines(read_fd: int, on_line) -> bool:
    """Feed the child's lines to ``on_line`` until it closes the pipe; False when it stays
    silent for PATH_TIMEOUT (each line restarts the clock)."""
    import select

    buf, deadline = b"", time.monotonic() + PATH_TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select([read_fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(read_fd, 65536)
        if not chunk:
            return True
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            on_line(line)
            deadline = time.monotonic() + PATH_TIMEOUT


def reap(pid: int, read_fd: int, kill: bool) -> int:
    os.close(read_fd)
    if kill:
        os.kill(pid, 9)
    return os.waitpid(pid, 0)[1]


def run_case(seed: Seed, data: bytes, address_limit: int) -> dict[str, tuple[str, str | None]]:
    """Every path's outcome for one mutated file; a child that dies costs only the path it was on."""
    results: dict[str, tuple[str, str | None]] = {}
    pending = list(PATHS)

    def on_line(line: bytes) -> None:
        r = json.loads(line)
        results[r["path"]] = (r["outcome"], r["detail"])
        pending.remove(r["path"])

    while pending:
        pid, read_fd = forked(lambda fd, todo=list(pending): child(seed, data, todo, fd), address_limit)
        answered = read_lines(read_fd, on_line)
        status = reap(pid, read_fd, kill=not answered)
        if pending:  # the child died or hung on pending[0]
            runtime = onnxruntime_fails_on_decoded(data, address_limit, pending[0])
            if runtime is not None:
                results[pending[0]] = (runtime, "plain onnxruntime itself dies or hangs on the decoded standard model")
            elif not answered:
                results[pending[0]] = ("hang", f"no answer in {PATH_TIMEOUT:.0f} s")
            elif os.WIFSIGNALED(status):
                results[pending[0]] = ("crash", f"signal {os.WTERMSIG(status)}")
            else:
                results[pending[0]] = ("crash", f"child exited {os.WEXITSTATUS(status)} mid-path")
            pending.pop(0)
    return results


def onnxruntime_fails_on_decoded(data: bytes, address_limit: int, path: str) -> str | None:
    """"runtime-crash" / "runtime-hang" when a child that decodes ``data`` (successfully) then
    dies or hangs in plain onnxruntime's session or Run, else None: onnxruntime 1.19 aborts on
    some malformed standard graphs (a Conv input of the wrong rank trips a bounds assertion),
    which only a forged or unsealed file can carry. ``path`` decompress: the standard model is
    decompress's output (folded weights give onnxruntime other shapes to infer), else decode_model's."""
    def body(write_fd: int) -> None:
        import numpy as np
        import onnxruntime as ort

        import onnxcomp.runtime as rt

        if path == "decompress":
            from onnxcomp.decompress import decompress

            with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
                src, out = os.path.join(tmp, "in.onnx"), os.path.join(tmp, "out.onnx")
                with open(src, "wb") as fh:
                    fh.write(data)
                decompress(src, out, verify=False)
                with open(out, "rb") as fh:
                    decoded = fh.read()
        else:
            decoded = rt.decode_model(data, verify=False)
        os.write(write_fd, b"decoded\n")
        sess = ort.InferenceSession(decoded, _session_options(), providers=["CPUExecutionProvider"])
        feeds = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32) for i in sess.get_inputs()}
        try:
            sess.run(None, feeds)
        except Exception:  # noqa: BLE001 - only a death counts
            pass
        os.write(write_fd, b"ran\n")

    lines: list[bytes] = []
    pid, read_fd = forked(body, address_limit)
    answered = read_lines(read_fd, lines.append)
    status = reap(pid, read_fd, kill=not answered)
    if lines != [b"decoded"]:
        return None  # the decoder itself failed or hung (ours), or onnxruntime was fine
    return "runtime-hang" if not answered else "runtime-crash" if os.WIFSIGNALED(status) else None


def address_limit() -> int:
    """This process's address space plus 3 GiB: room for any decode within the children's budget."""
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    return vm + (3 << 30)


# ---- the run ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=max(1, len(os.sched_getaffinity(0))))
    ap.add_argument("--out", help="folder for fuzz.json, fuzz.md and the bad cases' files")
    ap.add_argument("--recheck", help="run the saved bad cases of a folder (caseN-SEED-FRAMING.onnx) again")
    args = ap.parse_args(argv)
    if args.recheck:
        return recheck(Path(args.recheck))

    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    t0 = time.time()
    seeds = build_seeds()
    limit = address_limit()
    rng = random.Random(args.seed)
    plan = []
    for case in range(args.cases):
        seed = rng.choice(seeds)
        framing, kind = rng.choice(FRAMINGS), rng.choice(MUTATIONS)
        plan.append((case, seed, framing, kind, rng.getrandbits(64)))

    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    bad_cases = []
    out_dir = Path(args.out) if args.out else None
    if out_dir:
        (out_dir / "bad").mkdir(parents=True, exist_ok=True)

    def one(item):
        case, seed, framing, kind, case_seed = item
        data = frame(seed, framing, kind, random.Random(case_seed))
        results = run_case(seed, data, limit)
        return item, data, results

    # Cases run --jobs at a time: each is its own forked children, so threads only wait on pipes.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(args.jobs) as pool:
        for done, (item, data, results) in enumerate(pool.map(one, plan), 1):
            case, seed, framing, kind, _ = item
            for path, (outcome, detail) in results.items():
                if outcome == "different" and framing == "sealed":
                    outcome = "wrong"
                counts[(framing, path)][outcome] += 1
                if outcome in BAD:
                    bad_cases.append({"case": case, "seed": seed.name, "framing": framing, "mutation": kind,
                                      "path": path, "outcome": outcome, "detail": detail})
                    if out_dir:
                        (out_dir / "bad" / f"case{case}-{seed.name}-{framing}.onnx").write_bytes(data)
            if done % 1000 == 0:
                print(f"{done}/{args.cases} cases, {len(bad_cases)} bad, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)

    elapsed = time.time() - t0
    summary = {"cases": args.cases, "seed": args.seed, "seconds": round(elapsed, 1), "seeds": [s.name for s in seeds],
               "counts": {f"{f}/{p}": dict(c) for (f, p), c in sorted(counts.items())}, "bad": bad_cases}
    table = fuzz_table(summary, counts)
    print(table)
    if out_dir:
        (out_dir / "fuzz.json").write_text(json.dumps(summary, indent=1) + "\n")
        (out_dir / "fuzz.md").write_text(table + "\n")
    for b in bad_cases[:20]:
        print(f"BAD case {b['case']} ({b['seed']}, {b['framing']}, {b['mutation']}) {b['path']}: {b['outcome']}: {b['detail']}",
              file=sys.stderr)
    return 1 if bad_cases else 0


def recheck(folder: Path) -> int:
    """Every saved case again, with this version's attribution; prints one line per bad path."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    seeds = {s.name: s for s in build_seeds()}
    limit, bad = address_limit(), 0
    for f in sorted(folder.glob("case*.onnx")):
        stem = f.stem.split("-", 1)[1]
        framing = next(fr for fr in FRAMINGS if stem.endswith("-" + fr))
        seed = seeds[stem[: -len(framing) - 1]]
        for path, (outcome, detail) in run_case(seed, f.read_bytes(), limit).items():
            if outcome == "different" and framing == "sealed":
                outcome = "wrong"
            print(f"{f.name} {path}: {outcome}" + (f" ({detail})" if outcome in BAD else ""))
            bad += outcome in BAD
    return 1 if bad else 0


def fuzz_table(summary: dict, counts) -> str:
    lines = [f"{summary['cases']:,} cases (seed {summary['seed']}, {summary['seconds']:.0f} s), "
             f"seeds: {', '.join(summary['seeds'])}", "",
             "| framing | path | " + " | ".join(CLASSES) + " |", "|---|---|" + "---:|" * len(CLASSES)]
    for framing in FRAMINGS:
        for path in PATHS:
            c = counts.get((framing, path), Counter())
            lines.append(f"| {framing} | {path} | " + " | ".join(f"{c.get(k, 0):,}" for k in CLASSES) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
