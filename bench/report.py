"""Merge bench/out/results/*.json into one markdown report (to paste into BENCHMARKS.md).

Sections: the machine (nproc, CPU model, RAM, onnxruntime/onnx versions of each venv), the exact
command, one table per model (method, file bytes, payload bytes, bits/param, metric, notes; EPR
rows add lambda, val error, median training step and compile time), the ANS coding table, the
EPR training-step cost table (results/epr-step-time.json), the EPR rate-error curves
(bench/out/epr-curve-*.md, made by the optional `curve` step, included when present), and the
decode-at-load table with its targets. Runs with any python3 that has no extra packages.

    python3 bench/report.py [--results bench/out/results] [--out bench/out/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import subprocess
import sys
from machine_info import cpu_model

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
VENVS = {"main": os.path.join(REPO, ".venv"), "peers": os.path.join(HERE, ".venv-peers")}
METHOD_ORDER = ["float", "zstd -19", "int8 dynamic per-tensor", "int8 dynamic per-channel", "int4",
                "onnxcomp -p ptq", "onnxcomp"]
MODEL_ORDER = ["lenet-300-100", "lenet5-caffe", "lenet-300-100-fashion", "pp-ocrv6-rec"]


def machine() -> list[str]:
    cpu = cpu_model()
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    lines = [f"- machine: {os.cpu_count()} CPUs (nproc), {cpu}, {mem_kb / 2**20:.1f} GiB RAM, "
             f"{platform.system()} {platform.release()}"]
    probe = ("import sys, importlib.metadata as m; import onnxruntime, onnx, numpy; "
             "d = {x.metadata['Name'].lower() for x in m.distributions()}; "
             "b = 'onnxruntime-training-cpu' if 'onnxruntime-training-cpu' in d else 'onnxruntime'; "
             "print(f'python {sys.version.split()[0]}, {b} {onnxruntime.__version__}, "
             "onnx {onnx.__version__}, numpy {numpy.__version__}')")
    for name, venv in VENVS.items():
        py = os.path.join(venv, "bin", "python")
        if not os.path.exists(py):
            lines.append(f"- {name} venv ({os.path.relpath(venv, REPO)}): missing")
            continue
        r = subprocess.run([py, "-c", probe], capture_output=True, text=True)
        lines.append(f"- {name} venv ({os.path.relpath(venv, REPO)}): "
                     + (r.stdout.strip() or f"probe failed: {r.stderr.strip()[-200:]}"))
    return lines


def _rank(method: str) -> int:
    for i, prefix in enumerate(METHOD_ORDER):
        if method.startswith(prefix):
            return i
    return len(METHOD_ORDER)


def _fmt_metric(r: dict) -> str:
    if r.get("metric") is None:
        return "FAILED"
    d = r.get("detail") or {}
    if r.get("metric_name", "").startswith("OCR"):
        truth = d.get("identical_to_truth")
        frames = d.get("frame_agreement")
        s = f"{r['metric']:.1f}%"
        if truth is not None:
            s += f" (truth {100 * truth:.1f}%"
            s += f", frames {100 * frames:.1f}%)" if frames is not None else ")"
        return s
    return f"{r['metric']:.2f}%"


def model_table(name: str, rows: list[dict]) -> list[str]:
    rows = sorted(rows, key=lambda r: (_rank(r["method"]), r["method"]))
    metric_name = next((r["metric_name"] for r in rows if r.get("metric_name")), "metric")
    float_row = next((r for r in rows if r["method"] == "float"), None)
    params = rows[0].get("params")
    out = [f"### {name}", "", f"params (float elements of the original): {params:,}" if params else "", "",
           f"| method | file bytes | payload bytes | bits/param | {metric_name} | notes |",
           "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        notes = [r.get("notes", "")]
        if float_row and r.get("file_bytes") and r is not float_row:
            notes.append(f"file {float_row['file_bytes'] / r['file_bytes']:.1f}x smaller")
        if r.get("median_step_ms") is not None:  # a training pipeline (epr): the report's training figures
            val = f"val error {100 * r['val_error']:.2f}%, " if r.get("val_error") is not None else ""
            notes.append(f"lambda {r.get('lambda'):g}, {val}{r.get('training_steps')} steps of median "
                         f"{r['median_step_ms']:.1f} ms, compile {r.get('compile_seconds', 0):.0f} s")
        if r.get("wfn"):  # weight fixing: details in the WFN table
            notes.append(f"{r['wfn']['unique']} values network-wide, {r['wfn']['entropy_bits']:.3f} bits/weight pooled, "
                         f"compile {r.get('compile_seconds', 0):.0f} s")
        if r.get("error"):
            notes.append(f"error: {r['error'].splitlines()[0]}")
        if r.get("venv"):
            notes.append(f"ORT {r['venv'].get('onnxruntime')}")
        fb = f"{r['file_bytes']:,}" if r.get("file_bytes") else "-"
        pb = f"{r['payload_bytes']:,}" if r.get("payload_bytes") else "-"
        bpp = f"{r['bits_per_param']:.3f}" if r.get("bits_per_param") else "-"
        notes_s = "; ".join(n for n in notes if n).replace("|", "/")
        out.append(f"| {r['method']} | {fb} | {pb} | {bpp} | {_fmt_metric(r)} | {notes_s} |")
    commands = sorted({r["command"] for r in rows if r.get("command")})
    commands += sorted({r["compile_command"] for r in rows if r.get("compile_command")})
    out += ["", "commands:", ""] + [f"    {c}" for c in commands] + [""]
    return out


def wfn_table(by_model: dict[str, list[dict]]) -> list[str]:
    """Weight-fixing rows of every model: the figures issue 4 asks for, beside the float error."""
    rows = [(name, r) for name, rs in by_model.items() for r in rs if r.get("wfn")]
    if not rows:
        return []
    out = ["### Weight fixing (WFN): whole-network codebooks", "",
           "unique = distinct weight values in the whole network; pow2 / sum of two = share of the nonzero "
           "weights that are a signed power of two / a sum of two; H = Shannon entropy of the pooled weight "
           "histogram (all weights / nonzero only); payload = what pack wrote (entropy-coded indices + "
           "tables + codebook + the uncompressed rest); d test = test error minus the float model's.", "",
           "| model | method | unique | zeros | pow2 | sum of two | H bits/w | H nonzero | payload bytes | test error | d test | val error (float) | gamma0 | compile s |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in sorted(rows, key=lambda nr: (MODEL_ORDER.index(nr[0]) if nr[0] in MODEL_ORDER else 99, nr[1]["method"])):
        w = r["wfn"]
        float_row = next((f for f in by_model[name] if f["method"] == "float"), None)
        d_test = (f"{r['metric'] - float_row['metric']:+.2f}" if float_row and r.get("metric") is not None
                  and float_row.get("metric") is not None else "-")
        m = (r.get("compiler_report") or {}).get("metrics") or {}
        val = (f"{100 * m['val_error']:.2f}% ({100 * m['val_error_original']:.2f}%)" if "val_error" in m else "-")
        out.append(f"| {name} | {r['method']} | {w['unique']} | {100 * w['zeros']:.1f}% | {100 * w['power_of_two']:.0f}% | "
                   f"{100 * w['sum_of_two']:.0f}% | {w['entropy_bits']:.3f} | {w['entropy_nonzero_bits']:.3f} | "
                   f"{r.get('payload_bytes', 0):,} | {_fmt_metric(r)} | {d_test} | {val} | {w['gamma0']:g} | "
                   f"{r.get('compile_seconds', 0):.0f} |")
    return out + [""]


def load_table(res: dict) -> list[str]:
    w = res["float_weight_bytes"]
    c = res["compressed"]
    out = ["### Decode at load: synthetic 25M-parameter MLP", "",
           f"{res['params']:,} float32 params ({w / 1e6:.1f} MB of weights, dims {res['dims']}); "
           f"compressed with `{c['command']}` to {c['file_bytes']:,} bytes "
           f"({c['bits_per_param']:.3f} bits/param, compile {c['compile_seconds']} s). "
           f"Each case in a fresh process; medians of {res['cases']['plain']['rounds']} alternating rounds; "
           f"peak = VmHWM above the RSS after imports."
           + (f" Machine load average (1 min) {res['loadavg_1min']['before']:.1f} before, "
              f"{res['loadavg_1min']['after']:.1f} after: timings on a busy 2-core machine are noisy."
              if "loadavg_1min" in res else ""), "",
           "| case | load s | peak MB over baseline | peak / float weights | batch 1 median ms | "
           "batch 64 median ms | first run (batch 1) ms |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in res["cases"].items():
        extra = ""
        if "decode_seconds" in r:
            extra = f" (decode {r['decode_seconds']:.3f} + session {r['session_from_bytes_seconds']:.3f})"
        out.append(f"| {name} | {r['load_seconds']:.3f}{extra} | {r['peak_delta_bytes'] / 1e6:.1f} | "
                   f"{r['peak_delta_bytes'] / w:.2f} | {r['b1_median_ms']:.2f} | {r['b64_median_ms']:.2f} | "
                   f"{r['b1_first_ms']:.1f} |")
    if "ab_latency" in res:
        ab = res["ab_latency"]
        out += ["", "Latency, both sessions in one process with Runs interleaved (medians; min in brackets):", "",
                "| session | batch 1 ms | batch 64 ms |", "|---|---:|---:|"]
        for k in ("plain", "decode"):
            out.append(f"| {k} | {ab[f'{k}_b1_median_ms']:.2f} ({ab[f'{k}_b1_min_ms']:.2f}) | "
                       f"{ab[f'{k}_b64_median_ms']:.2f} ({ab[f'{k}_b64_min_ms']:.2f}) |")
    ch, t = res["checks"], res["targets"]
    ok = {True: "PASS", False: "FAIL"}
    out += ["", f"- load time decode / plain: {ch['load_ratio']:.2f}x (target <= {t['load_ratio_max']}x): "
                f"{ok[ch['pass_load']]}",
            f"- peak memory decode / float weights: {ch['peak_over_weights']:.2f}x (target <= "
            f"{t['peak_over_weights_max']}x; plain session itself: {ch['plain_peak_over_weights']:.2f}x): "
            f"{ok[ch['pass_peak']]}",
            f"- latency decode / plain: batch 1 {ch['latency_ratio_b1']:.2f}x, batch 64 "
            f"{ch['latency_ratio_b64']:.2f}x (target <= {t['latency_ratio_max']}x): {ok[ch['pass_latency']]}",
            f"- output relative error vs float (ptq quantization): {ch['output_rel_err_vs_float']:.4f}"]
    if "custom_op_rel_err_vs_decode" in ch:
        out.append(f"- custom-op path vs decode at load, relative difference: {ch['custom_op_rel_err_vs_decode']:.2e}")
    out += ["", "command:", "", f"    {res['command']}", ""]
    return out


def coding_table(out_dir: str) -> list[str]:
    """Coded bitstream bytes vs the ideal code length under the stored tables (compiler reports)."""
    rows = []
    for path in sorted(glob.glob(os.path.join(out_dir, "ours", "*", "*.report.json"))
                       + glob.glob(os.path.join(out_dir, "decode_at_load", "*.report.json"))):
        with open(path) as f:
            r = json.load(f)
        coded, ideal = r.get("ans_bitstream_bytes"), r.get("ans_ideal_bytes")
        if not coded or not ideal:
            continue
        rows.append(f"| {os.path.basename(r['output'])} | {coded:,} | {ideal:,.0f} | {100 * (coded / ideal - 1):.3f}% |")
    if not rows:
        return []
    return ["### Entropy coding: ANS bitstreams vs the ideal code length of the stored tables", "",
            "ideal = sum over coded values of -log2(f[s] / 2^24) with the integer tables in the file "
            "(target: within 1%). Tables, steps and graph are counted in the payloads above, not here.", "",
            "| output | coded bytes | ideal bytes | overhead |", "|---|---:|---:|---:|", *rows, ""]


def step_time_table(res: dict) -> list[str]:
    """EPR training-step cost (bench/epr_step_time.py): plain vs logistic vs factorized prior."""
    st, m = res["settings"], res["machine"]
    la0, la1 = res.get("loadavg_start", ["?"]), res.get("loadavg_end", ["?"])
    out = ["### EPR training step: cost against plain training", "",
           f"Median wall time of one ONNX Runtime training step (forward + backward + AdamW) over {st['steps']} steps "
           f"after {st['warmup']} warm-up, batch {st['batch']} of random MNIST-shaped inputs, {st['threads']} ORT "
           f"thread(s); eval = one forward of the eval graph on the same batch (median of {st['eval_runs']}). EPR graphs "
           "are built as `-p epr` builds them (normalize, epr-reparam, finetune's loss graph); plain = the model with "
           "a softmax cross-entropy, all float initializers trainable. nodes = model + loss, training nodes = the "
           f"generated training graph. Machine: {m['cpus']} CPUs ({m.get('cpus_usable', '?')} usable), {m['cpu']}; "
           f"load average (1/5/15 min) {la0} at start, {la1} at end: on a busy 2-core machine the times grow.", "",
           "| model | variant | step median ms (p10-p90) | x plain | eval ms | nodes | training nodes | "
           "trainable elements |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    plain = {r["model"]: r["step_median_ms"] for r in res["rows"] if r["variant"] == "plain"}
    for r in res["rows"]:
        ratio = f"{r['step_median_ms'] / plain[r['model']]:.1f}x" if r["model"] in plain else "-"
        out.append(f"| {r['model']} | {r['variant']} | {r['step_median_ms']:.2f} ({r['step_p10_ms']:.2f}-"
                   f"{r['step_p90_ms']:.2f}) | {ratio} | {r['eval_median_ms']:.2f} | {r['nodes']:,} | "
                   f"{r['training_nodes']:,} | {r['trainable_elements']:,} |")
    feed = [r["feed_median_ms"] for r in res["rows"] if r["variant"].startswith("epr")]
    if feed:
        out += ["", f"Not in these step times: making each step's noise input, median {min(feed):.2f}-"
                    f"{max(feed):.2f} ms per step (finetune's own median_step_ms, in the EPR rows, includes it)."]
    out += ["", "command:", "", f"    {res['command']}", ""]
    return out


def curve_sections(out_dir: str) -> list[str]:
    """The EPR rate-error tables bench/epr_curve.py wrote (optional `curve` step), as they are."""
    lines = []
    for path in sorted(glob.glob(os.path.join(out_dir, "epr-curve-*.md"))):
        with open(path) as f:
            lines += f.read().rstrip("\n").splitlines() + [""]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=os.path.join(HERE, "out", "results"))
    ap.add_argument("--out", default=os.path.join(HERE, "out", "BENCHMARKS.md"))
    ap.add_argument("--command", default="bash bench/run.sh", help="the command that produced the results")
    args = ap.parse_args(argv)
    by_model: dict[str, list[dict]] = {}
    load = step_time = None
    for path in sorted(glob.glob(os.path.join(args.results, "*.json"))):
        with open(path) as f:
            data = json.load(f)
        if isinstance(data, dict) and "cases" in data:
            load = data
            continue
        if isinstance(data, dict) and data.get("kind") == "epr-step-time":
            step_time = data
            continue
        for r in data:
            by_model.setdefault(r["model"], []).append(r)
    lines = ["## Benchmarks", "", *machine(), f"- command: `{args.command}` (from the repository root)", "",
             "bits/param = 8 x payload bytes / float params of the original model; payload = stored bytes of "
             "all initializers (dims x dtype width, int4 = 4 bits); file = the .onnx on disk (the zstd row: "
             "the .zst). Metric: MNIST (Fashion-MNIST) test error on the 10k test split (t10k); OCR: % of 30 "
             "rendered lines whose "
             "text is identical to the float model's (truth = identical to the rendered text, frames = CTC "
             "frames with the same argmax).", ""]
    names = sorted(by_model, key=lambda n: (MODEL_ORDER.index(n) if n in MODEL_ORDER else 99, n))
    for name in names:
        lines += model_table(name, by_model[name])
    lines += wfn_table(by_model)
    lines += coding_table(os.path.dirname(args.results))
    if step_time:
        lines += step_time_table(step_time)
    lines += curve_sections(os.path.dirname(args.results))
    if load:
        lines += load_table(load)
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
