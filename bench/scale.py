"""Deploy at scale: load, Run, decode, compress and decompress at ~25M, ~250M and ~600M+ parameters.

    bash bench/run.sh scale                          # all sizes (needs ~12 GB of disk, ~10 min once built)
    .venv/bin/python bench/scale.py --sizes 25m      # one size

Models are transformer-like stacks with weights in external data (built here, deterministic, tensor
by tensor, so building never holds the model in memory): an embedding table read by Gather
(V x d), then L blocks of x + MatMul(Relu(MatMul(x, W1 [d, 4d])), W2 [4d, d]) over 16 tokens; the
600M model is over the 2 GB protobuf limit. Each is compressed data-free (`onnxcomp compress -p ptq`)
and decompressed (`onnxcomp decompress`). Every case runs in a fresh process; peak RSS is that
process's own (wait4's ru_maxrss for CLI runs, shown also above the runtime baseline: the peak of a
process that only imports the CLI's packages; VmHWM above the post-import baseline for loads).

Per size: wall time and peak RSS of compress and decompress; load time, peak RSS and Run latency
(batch 1, median) of plain onnxruntime on the float model, decode at load
(onnxcomp.runtime.InferenceSession), the native op (CustomOpSession(op="native")) and the Python op
(op="python", only where its per-Run copy through a Python list fits in memory), load time the
median of --load-repeats fresh processes (this VM's loads vary 2-3x run to run), decode at load
split into decoding / onnxruntime's session creation / the rest; decode throughput of the native
decoder alone (symbols/s on 1 thread and on every core) beside the machine's measured memory
bandwidth and its rate of fresh pages (first writes to a new mapping: what decoded weights cost
before a byte is decoded). Results: bench/out/scale/scale.json and scale.md (a table with the fitted growth
per parameter), copied into BENCHMARKS.md by hand with this command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PY = sys.executable
TOKENS = 16
# name -> (vocab, d, layers); params = V*d + 8*L*d^2 (+ 5*L*d biases)
SIZES = {
    "25m": (16384, 512, 8),
    "250m": (49152, 1024, 24),
    "600m": (32000, 1536, 30),
}
PYTHON_OP_MAX_PARAMS = 60_000_000  # above: its per-Run Python list of every weight does not fit (issue 13)


# ---- the models -----------------------------------------------------------------------------

def build_model(folder: Path, vocab: int, d: int, layers: int, seed: int = 0) -> dict:
    """model.onnx + model.onnx.data, one tensor at a time."""
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    path, data_name = folder / "model.onnx", "model.onnx.data"
    inits, nodes, offset = [], [], 0
    with open(folder / data_name, "wb") as data:
        def add(name: str, array: np.ndarray) -> None:
            nonlocal offset
            raw = np.ascontiguousarray(array, "<f4").tobytes()
            data.write(raw)
            t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(array.shape))
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
                entry = t.external_data.add()
                entry.key, entry.value = k, v
            offset += len(raw)
            pad = -offset % 4096  # page-aligned tensors, as onnx writes them for mapping
            data.write(b"\0" * pad)
            offset += pad
            inits.append(t)

        rng = np.random.default_rng(seed)
        add("embed", rng.standard_normal((vocab, d), np.float32) * np.float32(0.02))
        nodes.append(helper.make_node("Gather", ["embed", "tokens"], ["h0"], name="embed.gather"))
        x = "h0"
        for i in range(layers):
            add(f"l{i}.w1", rng.laplace(0, np.sqrt(1.0 / d), (d, 4 * d)).astype(np.float32))
            add(f"l{i}.b1", rng.standard_normal(4 * d, np.float32) * np.float32(0.01))
            add(f"l{i}.w2", rng.standard_normal((4 * d, d), np.float32) * np.float32(np.sqrt(0.5 / d)))
            add(f"l{i}.b2", rng.standard_normal(d, np.float32) * np.float32(0.01))
            nodes += [
                helper.make_node("MatMul", [x, f"l{i}.w1"], [f"l{i}.a"], name=f"l{i}.mm1"),
                helper.make_node("Add", [f"l{i}.a", f"l{i}.b1"], [f"l{i}.ab"], name=f"l{i}.add1"),
                helper.make_node("Relu", [f"l{i}.ab"], [f"l{i}.r"], name=f"l{i}.relu"),
                helper.make_node("MatMul", [f"l{i}.r", f"l{i}.w2"], [f"l{i}.m"], name=f"l{i}.mm2"),
                helper.make_node("Add", [f"l{i}.m", f"l{i}.b2"], [f"l{i}.mb"], name=f"l{i}.add2"),
                helper.make_node("Add", [x, f"l{i}.mb"], [f"h{i + 1}"], name=f"l{i}.residual"),
            ]
            x = f"h{i + 1}"
        nodes.append(helper.make_node("Identity", [x], ["output"], name="output"))
    graph = helper.make_graph(nodes, "scale", [helper.make_tensor_value_info("tokens", TensorProto.INT64, [1, TOKENS])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, TOKENS, d])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    params = sum(int(np.prod(t.dims)) for t in inits)
    return {"params": params, "float_weight_bytes": 4 * params}


# ---- measurements ---------------------------------------------------------------------------

def run_cli(args: list[str]) -> dict:
    """One CLI run in a child: wall seconds, the child's own peak RSS, exit status."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(args)} failed ({code}): {err[-2000:]}")
    return {"seconds": round(wall, 2), "peak_rss_bytes": usage.ru_maxrss * 1024}


def runtime_baseline() -> int:
    """Peak RSS of a process that only imports what the CLI runs on (Python, numpy, onnx, onnx-ir,
    onnxruntime, constriction, onnxcomp): the fixed runtime overhead the memory targets exclude."""
    code = "import onnxcomp.cli, onnxcomp.compile, onnxcomp.decompress, onnxruntime, onnx, onnx_ir, constriction"
    return run_cli([PY, "-c", code])["peak_rss_bytes"]


CHILD = r"""
import json, os, statistics, sys, time
import numpy as np
import onnxruntime as ort
import onnxcomp.runtime as rt

def kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])

case, path, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
so = ort.SessionOptions()
so.log_severity_level = 3
so.add_session_config_entry("session.intra_op.allow_spinning", "0")
base = kb("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
phases = {}
if case == "decode-at-load":  # where decode at load spends its time: the decoder, onnxruntime, the rest
    from onnxcomp.runtime import load as rt_load

    def timed(key, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[key] = phases.get(key, 0.0) + time.perf_counter() - t
        return wrapper
    rt_load.run_jobs = timed("decode_s", rt_load.run_jobs)
    ort.InferenceSession = timed("onnxruntime_s", ort.InferenceSession)
start = time.perf_counter()
if case in ("plain", "decompressed"):
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
elif case == "decode-at-load":
    sess = rt.InferenceSession(path, so)
else:
    sess = rt.CustomOpSession(path, so, op=case.split("-")[0])
load = time.perf_counter() - start
peak_load = kb("VmHWM")
feeds = {"tokens": (np.arange(16, dtype=np.int64) * 37 % 1000).reshape(1, 16)}
start = time.perf_counter()
out = sess.run(None, feeds)[0]
first = time.perf_counter() - start
times = []
for _ in range(runs):
    start = time.perf_counter()
    sess.run(None, feeds)
    times.append(time.perf_counter() - start)
np.save(sys.argv[4], out)
print(json.dumps({"load_s": load, "first_run_s": first, "median_run_s": statistics.median(times) if times else first,
                  "peak_load_bytes": (peak_load - base) * 1024, "peak_bytes": (kb("VmHWM") - base) * 1024, **phases}))
"""


def run_session(case: str, path: Path, out: Path, runs: int, repeats: int) -> dict:
    """The first process's figures, with load_s (and the decode-at-load phases) the median over
    ``repeats`` fresh processes: on this VM one load of the same file varies 2-3x run to run."""
    results = []
    scratch = out.with_name(out.stem + "-repeat.npy")  # the repeats' outputs: not compared, removed
    for i in range(repeats):
        r = subprocess.run([PY, "-c", CHILD, case, str(path), str(runs if i == 0 else 0), str(out if i == 0 else scratch)],
                           capture_output=True, text=True, cwd=REPO)
        if r.returncode != 0:
            raise SystemExit(f"session case {case} on {path} failed: {r.stderr[-2000:]}")
        results.append(json.loads(r.stdout.strip().splitlines()[-1]))
    scratch.unlink(missing_ok=True)
    row = dict(results[0])
    for key in ("load_s", "decode_s", "onnxruntime_s"):
        if key in row:
            row[key] = statistics.median(res[key] for res in results)
    row["load_s_all"] = [res["load_s"] for res in results]
    return row


DECODE_CHILD = r"""
import json, sys, time
import numpy as np
from onnxcomp.runtime import load, native
from onnxcomp.runtime.parallel_decode import Arena, Job, run_jobs

data = open(sys.argv[1], "rb").read()
checked = load.check_graph(data)
plans = [p for t in checked.tensors for p in t.plans]
symbols = sum(p.count for p in plans)
result = {"symbols": symbols, "coded_bytes": int(sum(p.words.nbytes for p in plans))}
for workers in (1, int(sys.argv[2])):
    arena = Arena([(p.shape, np.dtype(np.int32)) for p in plans], shared=False)
    jobs = [Job(p, a) for p, a in zip(plans, arena.arrays)]
    start = time.perf_counter()
    run_jobs(jobs, workers)
    result[f"seconds_{workers}"] = time.perf_counter() - start
    del jobs, arena
# fresh memory: the rate at which the machine hands out pages no process touched yet (one write
# per 4 KiB page of a new 1 GiB mapping); decode at load needs the decoded bytes as new pages
import mmap
fresh = mmap.mmap(-1, 1 << 30)
pages = np.frombuffer(fresh, np.uint8)
s = time.perf_counter(); pages[::4096] = 1; result["first_touch_bytes_per_s"] = (1 << 30) / (time.perf_counter() - s)
del pages; fresh.close()
# memory bandwidth: copy 512 MiB (read + write), best of 3
a = np.ones(1 << 27, np.float32); b = np.empty_like(a)
t = [0.0] * 3
for i in range(3):
    s = time.perf_counter(); np.copyto(b, a); t[i] = time.perf_counter() - s
result["copy_bandwidth_bytes_per_s"] = 2 * a.nbytes / min(t)
result["native"] = native.available()
print(json.dumps(result))
"""


def decode_throughput(path: Path, cores: int) -> dict:
    r = subprocess.run([PY, "-c", DECODE_CHILD, str(path), str(cores)], capture_output=True, text=True, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"decode throughput on {path} failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def measure(name: str, root: Path, runs: int, keep: bool, load_repeats: int) -> dict:
    vocab, d, layers = SIZES[name]
    folder = root / name
    float_model = folder / "model.onnx"
    info_file = folder / "model.json"
    if not info_file.exists():
        print(f"[{name}] building V={vocab} d={d} L={layers}", flush=True)
        info_file.write_text(json.dumps(build_model(folder, vocab, d, layers)))
    info = json.loads(info_file.read_text())
    compressed, decompressed = folder / "model.ptq.onnx", folder / "model.decompressed.onnx"
    cli = str(REPO / ".venv" / "bin" / "onnxcomp")
    print(f"[{name}] {info['params']:,} params: compress", flush=True)
    row = {"size": name, **info, "vocab": vocab, "d": d, "layers": layers}
    report = folder / "compress-report.json"
    row["compress"] = run_cli([cli, "compress", str(float_model), "-o", str(compressed), "-p", "ptq", "--quiet",
                               "--report", str(report)])
    search = json.loads(report.read_text()).get("search") or {}
    row["compress"]["search_seconds"], row["compress"]["search_evaluations"] = search.get("seconds"), search.get("evaluations")
    row["runtime_baseline_bytes"] = runtime_baseline()
    row["compressed_bytes"] = sum(f.stat().st_size for f in folder.glob("model.ptq.onnx*"))
    print(f"[{name}] decompress", flush=True)
    row["decompress"] = run_cli([cli, "decompress", str(compressed), "-o", str(decompressed)])
    cases = [("plain", float_model), ("decompressed", decompressed), ("decode-at-load", compressed),
             ("native-op", compressed)]
    if info["params"] <= PYTHON_OP_MAX_PARAMS:
        cases.append(("python-op", compressed))
    outputs = {}
    for case, path in cases:
        print(f"[{name}] session: {case}", flush=True)
        out = folder / f"out-{case}.npy"
        row[case] = run_session(case, path, out, runs, load_repeats)
        outputs[case] = np.load(out)
    # Same graph, same bytes: decode at load vs the decompressed file (weights folded alike), and the
    # native op vs the Python op (the decode graph run in onnxruntime). Across the two pairs
    # onnxruntime may pack constant and computed weights differently: a float difference, reported.
    row["decode_at_load_equals_decompressed"] = bool(np.array_equal(outputs["decode-at-load"], outputs["decompressed"]))
    if "python-op" in outputs:
        row["native_op_equals_python_op"] = bool(np.array_equal(outputs["native-op"], outputs["python-op"]))
    row["max_abs_diff_native_vs_decode_at_load"] = float(np.abs(outputs["native-op"] - outputs["decode-at-load"]).max())
    row["max_abs_diff_vs_float"] = float(np.abs(outputs["plain"] - outputs["decode-at-load"]).max())
    print(f"[{name}] decode throughput", flush=True)
    row["decode"] = decode_throughput(compressed, os.cpu_count() or 1)
    if not keep:
        for f in folder.glob("model.ptq.onnx*"):
            f.unlink()
        for f in folder.glob("model.decompressed.onnx*"):
            f.unlink()
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "scale"))
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--keep", action="store_true", help="keep the compressed and decompressed files")
    ap.add_argument("--load-repeats", type=int, default=3, help="fresh processes per session case (median load time)")
    args = ap.parse_args(argv)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.sizes.split(","):
        if name not in SIZES:
            ap.error(f"unknown size {name!r} (sizes: {', '.join(SIZES)})")
        rows.append(measure(name, root, args.runs, args.keep, args.load_repeats))
        (root / "scale.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    (root / "scale.md").write_text(table(rows))
    print(table(rows))
    return 0


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version()}


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares y = a + b x (b: growth per unit of x)."""
    if len(xs) < 2:
        return 0.0, ys[0] / xs[0]
    b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(a), float(b)


def table(rows: list[dict]) -> str:
    gib, mb = 1 << 30, 1e6
    sessions = [("plain", "plain onnxruntime (float, external data)"), ("decompressed", "plain onnxruntime (decompressed file)"),
                ("decode-at-load", "decode at load (InferenceSession)"), ("native-op", "native op (CustomOpSession op=native)"),
                ("python-op", "Python op (op=python)")]
    head = "| | " + " | ".join(f"{r['params'] / 1e6:.0f}M params ({r['float_weight_bytes'] / gib:.2f} GiB float)" for r in rows) + " |"
    lines = [head, "|---|" + "---|" * len(rows)]

    def line(label, cell):
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in rows) + " |")

    line("compressed file (-p ptq)", lambda r: f"{r['compressed_bytes'] / mb:.1f} MB ({8 * r['compressed_bytes'] / r['params']:.2f} bits/param)")
    for key, label in (("compress", "compress (data-free)"), ("decompress", "decompress")):
        line(f"{label}: wall / peak RSS / RSS over float bytes (above the runtime's own)", lambda r, k=key: (
            f"{r[k]['seconds']:.1f} s / {r[k]['peak_rss_bytes'] / gib:.2f} GiB / {r[k]['peak_rss_bytes'] / r['float_weight_bytes']:.2f}x "
            f"({(r[k]['peak_rss_bytes'] - r['runtime_baseline_bytes']) / r['float_weight_bytes']:.2f}x)"))
    line("compress: params/s; of the wall, the probe search (evaluations)", lambda r: (
        f"{r['params'] / r['compress']['seconds'] / 1e6:.1f} M/s; {r['compress']['search_seconds']:.1f} s "
        f"({r['compress']['search_evaluations']})"))
    line("runtime baseline (imports only, peak RSS)", lambda r: f"{r['runtime_baseline_bytes'] / gib:.2f} GiB")
    for key, label in sessions:
        line(f"{label}: load / first Run / median Run / peak over float", lambda r, k=key: (
            f"{r[k]['load_s']:.2f} s / {1e3 * r[k]['first_run_s']:.0f} ms / {1e3 * r[k]['median_run_s']:.1f} ms / "
            f"{r[k]['peak_bytes'] / r['float_weight_bytes']:.2f}x" if k in r else "not run (a Python list of every weight per Run)"))
    line("decode at load over plain load (median of the fresh processes)",
         lambda r: f"{r['decode-at-load']['load_s'] / r['plain']['load_s']:.2f}x")
    line("decode at load, of its load: decoding / onnxruntime on the decoded file / the rest", lambda r: (
        f"{r['decode-at-load']['decode_s']:.2f} / {r['decode-at-load']['onnxruntime_s']:.2f} / "
        f"{r['decode-at-load']['load_s'] - r['decode-at-load']['decode_s'] - r['decode-at-load']['onnxruntime_s']:.2f} s"))
    line("load times of every fresh process: plain; decode at load", lambda r: (
        f"{' '.join(f'{t:.2f}' for t in r['plain']['load_s_all'])}; "
        f"{' '.join(f'{t:.2f}' for t in r['decode-at-load']['load_s_all'])} s"))
    line("native decode alone: M symbols/s, 1 thread / all cores", lambda r: (
        f"{r['decode']['symbols'] / r['decode']['seconds_1'] / 1e6:.0f} / "
        f"{r['decode']['symbols'] / min(v for k, v in r['decode'].items() if k.startswith('seconds_')) / 1e6:.0f}"))
    line("memory bandwidth (numpy copy, read+write); fresh pages (first write to a new mapping)", lambda r: (
        f"{r['decode']['copy_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s; {r['decode']['first_touch_bytes_per_s'] / 1e9:.2f} GB/s"))
    line("outputs: decode at load = decompressed; native op = Python op", lambda r: (
        f"{r['decode_at_load_equals_decompressed']}; {r.get('native_op_equals_python_op', 'n/a')}"))
    out = ["\n".join(lines), "", "Fitted growth (least squares over the sizes; per million parameters):", ""]
    params = [r["params"] / 1e6 for r in rows]
    for label, ys, unit in (
        ("compress wall", [r["compress"]["seconds"] for r in rows], "s"),
        ("compress peak RSS", [r["compress"]["peak_rss_bytes"] / mb for r in rows], "MB"),
        ("decompress wall", [r["decompress"]["seconds"] for r in rows], "s"),
        ("decompress peak RSS", [r["decompress"]["peak_rss_bytes"] / mb for r in rows], "MB"),
        ("plain load", [r["plain"]["load_s"] for r in rows], "s"),
        ("decode-at-load load", [r["decode-at-load"]["load_s"] for r in rows], "s"),
        ("decode-at-load peak", [r["decode-at-load"]["peak_bytes"] / mb for r in rows], "MB"),
        ("native-op load", [r["native-op"]["load_s"] for r in rows], "s"),
        ("native-op median Run", [r["native-op"]["median_run_s"] * 1e3 for r in rows], "ms"),
    ):
        a, b = fit(params, ys)
        out.append(f"- {label}: {a:.2f} {unit} + {b:.4f} {unit} per M params")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
