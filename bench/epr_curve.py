"""EPR rate-error curve of one model: a sweep over lambda (MAIN venv; each point is a full training).

For each lambda the model is compressed through the CLI, exactly as a user would:

    onnxcomp compress MODEL -o OUT -p "normalize,epr-reparam{OPTS},finetune{lambda=L epochs=E OPTS},pack" \\
        --data DATA --report OUT.report.json [FLAGS]

then measured with bench/model_stats.py (file and payload bytes, bits/param over the original's
float params) and evaluated on the test split (`--test-data`, default DATA:test, which compress
never reads) with `onnxcomp.runtime.InferenceSession` (decode at load) +
`onnxcomp.metrics.evaluate_session`. The val error is the compiler report's
(`metrics.val_error`: the packed model on the val split; else `training.val_error`).

Outputs (KB = 1000 bytes):
- bench/out/epr-curve-NAME.json   every point (written after each lambda: a crash keeps the done ones)
- bench/out/epr-curve-NAME.md     table: lambda, payload bytes, file bytes, bits/param, val error,
                                  test error, compile seconds (bench/report.py includes it)
- bench/out/epr-curve-NAME.png    payload KB vs test error %, the float model's error as a line,
                                  reference points (--ref) as markers; matplotlib, Agg backend

    python bench/epr_curve.py --model models/lenet-300-100.onnx --data mnist --lambdas 0.1,0.3,1 \\
        [--epochs 25] [--epr-options prior=logistic] [--finetune-options lr=0.002] \\
        [--ref "EPR paper:8.56:1.9"] [--keep-done] [--budget 0.0025]
    python bench/epr_curve.py --replot bench/out/epr-curve-lenet-300-100.json   # md + png again

--budget D adds one more run: finetune's lambda search for `--max-error-increase D` (no lambda
option; finetune's search=climb), reported beside the smallest fixed lambda within the same val
budget and the mean fixed run's compile time.

--replot needs only json + matplotlib (no onnxcomp, no onnx): any python with matplotlib can draw.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time

from machine_info import cpu_model

HERE = os.path.dirname(os.path.abspath(__file__))
KIND = "epr-curve"
KB = 1000.0


# -- the sweep (main venv) ----------------------------------------------------------------------

def pipeline_for(lam: float | None, epochs: float | None, epr_options: str, finetune_options: str) -> str:
    """The pipeline of one point; lam None: finetune's own lambda (the budget search starts from it)."""
    epr = f"epr-reparam{{{epr_options}}}" if epr_options.strip() else "epr-reparam"
    ft = ([] if lam is None else [f"lambda={lam:g}"]) + ([f"epochs={epochs:g}"] if epochs is not None else []) + finetune_options.split()
    return f"normalize,{epr},finetune{{{' '.join(ft)}}},pack" if ft else f"normalize,{epr},finetune,pack"


def test_error(path: str, split) -> float:
    import onnxcomp.runtime as rt
    from onnxcomp.metrics import evaluate_session

    return evaluate_session(rt.InferenceSession(path), split)


def float_baseline(model: str, split) -> dict:
    from model_stats import model_stats

    st = model_stats(model)
    return {"path": os.path.relpath(model), "file_bytes": st["file_bytes"], "payload_bytes": st["payload_bytes"],
            "params": st["float_params"], "test_error": test_error(model, split)}


def run_point(model: str, name: str, lam: float | None, args, split, params: int, budget: float | None = None) -> dict:
    """One compress + test evaluation: at a fixed ``lam``, or (``budget``) finetune's lambda search
    for ``--max-error-increase budget``."""
    from model_stats import bits_per_param, model_stats
    from onnxcomp_cli import CompilerUnavailable, compress

    pipeline = pipeline_for(lam, args.epochs, args.epr_options, args.finetune_options)
    flags = ["--data", args.data, *shlex.split(args.flags)]
    if budget is not None:
        flags += ["--max-error-increase", f"{budget:g}"]
    tag = f"lam{lam:g}" if budget is None else f"budget{budget:g}"
    out = os.path.join(args.workdir, f"{name}.{tag}.onnx")
    point = {"lambda": lam, "budget": budget, "pipeline": pipeline, "flags": flags, "path": os.path.relpath(out)}
    print(f"=== {tag}: {pipeline} {' '.join(flags)}", file=sys.stderr, flush=True)
    try:
        comp = compress(model, out, pipeline, flags)
    except CompilerUnavailable as e:
        point["error"] = str(e)
        return point
    rep = comp["report"]
    training = rep.get("training") or {}
    metrics = rep.get("metrics") or {}
    st = model_stats(out)
    point.update({
        "file_bytes": st["file_bytes"], "payload_bytes": st["payload_bytes"],
        "bits_per_param": bits_per_param(st["payload_bytes"], params),
        "val_error": metrics.get("val_error", training.get("val_error")),
        "training_val_error": training.get("val_error"), "val_error_original": metrics.get("val_error_original"),
        "compile_seconds": comp["compile_seconds"], "compile_command": comp["command"],
        "median_step_ms": training.get("median_step_ms"), "steps": training.get("steps"),
        "estimated_bytes": (training.get("history") or [{}])[-1].get("estimated_bytes"),
        "history": training.get("history"), "compiler_pipeline": rep.get("pipeline"),
    })
    if budget is not None:
        search = metrics.get("search") or {}
        point.update(lambda_chosen=search.get("chosen_lambda"), budget_val_error=search.get("budget"),
                     budget_met=search.get("met"), levels=search.get("runs"))
    t = time.perf_counter()
    point["test_error"] = test_error(out, split)
    point["eval_seconds"] = round(time.perf_counter() - t, 2)
    return point


def sweep(args) -> dict:
    import onnx

    from onnxcomp.data import load_data, model_input_shapes
    from sessions import versions

    name = args.name or os.path.splitext(os.path.basename(args.model))[0]
    args.workdir = args.workdir or os.path.join(HERE, "out", "epr-curve", name)
    os.makedirs(args.workdir, exist_ok=True)
    json_path = os.path.join(args.out_dir, f"{KIND}-{name}.json")
    test_spec = args.test_data or f"{args.data}:test"
    split = load_data(test_spec, model_input_shapes(onnx.load(args.model, load_external_data=False))).test
    base = float_baseline(args.model, split)
    done: dict[float, dict] = {}
    if args.keep_done and os.path.exists(json_path):
        with open(json_path) as f:
            old = json.load(f)
        for p in old.get("points", []):
            same = (p.get("pipeline") == pipeline_for(p["lambda"], args.epochs, args.epr_options, args.finetune_options)
                    and p.get("flags") == ["--data", args.data, *shlex.split(args.flags)])
            if same and "error" not in p and os.path.exists(p.get("path", "")):
                done[p["lambda"]] = p
    result = {
        "kind": KIND, "model": name, "model_path": os.path.relpath(args.model), "data": args.data,
        "test_data": test_spec, "epochs": args.epochs, "epr_options": args.epr_options,
        "finetune_options": args.finetune_options, "flags": args.flags,
        "pipeline_template": pipeline_for(0.0, args.epochs, args.epr_options, args.finetune_options).replace(
            "lambda=0", "lambda=L"),
        "float": base, "refs": [parse_ref(r) for r in args.ref or []],
        "machine": f"{os.cpu_count()} CPUs, {cpu_model()}, {platform.system()} {platform.release()}",
        "versions": versions(), "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "command": " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable), *sys.argv]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "points": [],
    }
    for lam in args.lambdas:
        if lam in done:
            print(f"=== lambda {lam:g}: kept from {json_path}", file=sys.stderr)
            point = done[lam]
        else:
            point = run_point(args.model, name, lam, args, split, base["params"])
        result["points"].append(point)
        result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        write_json(result, json_path)  # after every point: a long sweep that dies keeps what it did
        if "error" in point:
            print(f"lambda {lam:g}: FAILED {point['error']}", file=sys.stderr)
        else:
            print(f"lambda {lam:g}: payload {point['payload_bytes']:,} B ({point['bits_per_param']:.3f} bits/param), "
                  f"val {_pct(point['val_error'])}, test {_pct(point['test_error'])}, "
                  f"compile {point['compile_seconds']} s, step {point['median_step_ms']} ms", flush=True)
    if args.budget is not None:
        point = run_point(args.model, name, None, args, split, base["params"], budget=args.budget)
        result["budgeted"] = point
        write_json(result, json_path)
        if "error" not in point:
            print(f"budget {args.budget:g}: lambda {point['lambda_chosen']}, payload {point['payload_bytes']:,} B, "
                  f"val {_pct(point['val_error'])}, test {_pct(point['test_error'])}, compile {point['compile_seconds']} s",
                  flush=True)
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_json(result, json_path)
    return result


# -- outputs (json only: runs in any venv) ---------------------------------------------------------

def parse_ref(text: str) -> dict:
    """'LABEL:KB:ERROR%' (label may contain colons) -> {"label", "kb", "error_pct"}."""
    try:
        label, kb, err = text.rsplit(":", 2)
        return {"label": label.strip(), "kb": float(kb), "error_pct": float(err)}
    except ValueError:
        raise SystemExit(f"--ref {text!r}: write LABEL:KB:ERROR_PERCENT, e.g. 'EPR paper:8.56:1.9'") from None


def write_json(obj: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(path + ".tmp", path)


def _pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def markdown(res: dict, png: str | None) -> str:
    f = res["float"]
    pts = sorted((p for p in res["points"] if "error" not in p), key=lambda p: p["lambda"])
    failed = [p for p in res["points"] if "error" in p]
    lines = [f"### EPR rate-error curve: {res['model']}", "",
             f"Pipeline `{res['pipeline_template']}` with `--data {res['data']}`"
             + (f" {res['flags']}" if res.get("flags") else "")
             + f"; test error on `{res['test_data']}` after decode at load (onnxcomp.runtime); val error from the "
               f"compiler report. Float model: {f['payload_bytes']:,} B payload, test error {_pct(f['test_error'])}"
             + (f", val error {_pct(pts[0]['val_error_original'])}" if pts and pts[0].get("val_error_original") is not None
                else "") + ".", "",
             "| lambda | payload bytes | file bytes | bits/param | val error | test error | compile s |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for p in pts:
        lines.append(f"| {p['lambda']:g} | {p['payload_bytes']:,} | {p['file_bytes']:,} | {p['bits_per_param']:.3f} | "
                     f"{_pct(p['val_error'])} | {_pct(p['test_error'])} | {p['compile_seconds']:.{0 if p['compile_seconds'] >= 10 else 1}f} |")
    for p in failed:
        why = p["error"].strip().splitlines()[-1].strip().replace("|", "/")[:160]
        lines.append(f"| {p['lambda']:g} | FAILED: {why} | | | | | |")
    lines.append("")
    steps = [p["median_step_ms"] for p in pts if p.get("median_step_ms") is not None]
    if steps:
        lines.append(f"Median training step {min(steps):.1f}-{max(steps):.1f} ms; {pts[0].get('steps')} steps per run; "
                     f"load average {res.get('loadavg_start')} at start, {res.get('loadavg_end')} at end; "
                     f"{res.get('machine')}.")
    for r in res.get("refs", []):
        lines.append(f"Reference: {r['label']}: {r['kb']:g} KB at {r['error_pct']:g}% error.")
    if png:
        lines.append(f"Plot: `{os.path.relpath(png, os.path.dirname(HERE))}`.")
    lines += budget_lines(res, pts)
    lines += ["", "command:", "", f"    {res['command']}", ""]
    return "\n".join(lines)


def budget_lines(res: dict, pts: list[dict]) -> list[str]:
    """The budgeted run beside the fixed lambdas: the smallest fixed point within the same val
    budget, and the time against one fixed training."""
    b = res.get("budgeted")
    if not b:
        return []
    if "error" in b:
        return ["", f"Budget search (`--max-error-increase {b['budget']:g}`): FAILED: {b['error'].strip().splitlines()[-1][:200]}"]
    limit = b.get("budget_val_error")
    within = [p for p in pts if limit is not None and p.get("val_error") is not None and p["val_error"] <= limit]
    best = min(within, key=lambda p: p["payload_bytes"], default=None)
    fixed_s = [p["compile_seconds"] for p in pts]
    lines = ["", f"Budget search, `{b['pipeline']} {' '.join(b['flags'])}` (val error budget {_pct(limit)}): "
                 f"one run, {len(b.get('levels') or [])} lambda levels, kept lambda {b['lambda_chosen']:g}"
                 f"{'' if b.get('budget_met') else ' (no level met the budget)'}: **{b['payload_bytes']:,} B payload, "
                 f"val {_pct(b['val_error'])}, test {_pct(b['test_error'])}**, {b['compile_seconds']:.0f} s"
                 + (f" ({b['compile_seconds'] / (sum(fixed_s) / len(fixed_s)):.2f}x the mean fixed-lambda run)" if fixed_s else "")
                 + ". Smallest fixed lambda within the same val budget: "
                 + (f"lambda {best['lambda']:g}, {best['payload_bytes']:,} B (val {_pct(best['val_error'])}, "
                    f"test {_pct(best['test_error'])})." if best else "none.")]
    levels = b.get("levels") or []
    if levels:
        lines += ["", "| level epoch | lambda | estimated KB | val error |", "|---:|---:|---:|---:|"]
        lines += [f"| {r['epoch']} | {r['lambda']:.3g} | {r['estimated_bytes'] / KB:.1f} | {_pct(r['val_error'])} |" for r in levels]
    return lines


def plot(res: dict, path: str) -> str | None:
    """Payload KB vs test error % as a PNG; None (and a message) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print(f"matplotlib is not installed in {sys.executable}: no plot. Install the bench extra "
              "(pip install -e '.[bench]', or pip install 'matplotlib>=3.7'), then redraw with "
              f"python bench/epr_curve.py --replot {os.path.relpath(path[:-4] + '.json')}", file=sys.stderr)
        return None
    pts = sorted((p for p in res["points"] if "error" not in p), key=lambda p: p["payload_bytes"])
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    if pts:
        xs = [p["payload_bytes"] / KB for p in pts]
        ax.plot(xs, [100 * p["test_error"] for p in pts], "o-", color="C0", label="EPR (onnxcomp), test error")
        vals = [(x, 100 * p["val_error"]) for x, p in zip(xs, pts) if p.get("val_error") is not None]
        if vals:
            ax.plot(*zip(*vals), "o", mfc="none", color="C0", alpha=0.6, label="EPR (onnxcomp), val error")
        for x, p in zip(xs, pts):
            ax.annotate(f"λ={p['lambda']:g}", (x, 100 * p["test_error"]), textcoords="offset points",
                        xytext=(5, 5), fontsize=8)
    f = res["float"]
    ax.axhline(100 * f["test_error"], color="gray", ls="--", lw=1,
               label=f"float model, test error ({f['payload_bytes'] / KB:,.0f} KB)")
    for i, r in enumerate(res.get("refs", [])):
        ax.plot([r["kb"]], [r["error_pct"]], marker="*", ms=13, ls="none", color=f"C{i + 1}",
                label=f"{r['label']} ({r['kb']:g} KB, {r['error_pct']:g}%)")
    xs_all = [p["payload_bytes"] / KB for p in pts] + [r["kb"] for r in res.get("refs", [])]
    if xs_all and max(xs_all) / max(min(xs_all), 1e-9) > 4:
        ax.set_xscale("log")
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
            lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))
    ax.margins(x=0.12, y=0.15)
    ax.set_xlabel("payload KB (1 KB = 1000 bytes)")
    ax.set_ylabel("test error %")
    ax.set_title(f"EPR rate-error: {res['model']} ({res['test_data']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def render(res: dict, out_dir: str) -> None:
    base = os.path.join(out_dir, f"{KIND}-{res['model']}")
    png = plot(res, base + ".png")
    with open(base + ".md", "w") as f:
        f.write(markdown(res, png))
    print(base + ".md" + (f"\n{png}" if png else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="float .onnx")
    ap.add_argument("--name", help="name in file names and titles (default: the model's file stem)")
    ap.add_argument("--data", default="mnist", help="compress --data spec (train/val), default mnist")
    ap.add_argument("--test-data", help="data spec of the test split (default DATA:test)")
    ap.add_argument("--lambdas", default="0.1,0.3,1", help="comma list (default 0.1,0.3,1)")
    ap.add_argument("--epochs", type=float, help="finetune epochs (default: finetune's own, 25)")
    ap.add_argument("--epr-options", default="", help="epr-reparam options, e.g. 'prior=logistic conv_decoder=dct'")
    ap.add_argument("--finetune-options", default="", help="more finetune options, e.g. 'lr=0.002 batch=64'")
    ap.add_argument("--flags", default="", help="more compress flags, e.g. '--seed 1'")
    ap.add_argument("--budget", type=float, help="also run finetune's lambda search for --max-error-increase BUDGET")
    ap.add_argument("--ref", action="append", help="reference point LABEL:KB:ERROR%% for the plot (repeatable)")
    ap.add_argument("--keep-done", action="store_true",
                    help="reuse points of an earlier run in the JSON with the same pipeline and flags")
    ap.add_argument("--workdir", help="compressed files (default bench/out/epr-curve/NAME)")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "out"), help="where epr-curve-NAME.{json,md,png} go")
    ap.add_argument("--replot", metavar="JSON", help="only redraw the md and png from a curve JSON")
    args = ap.parse_args(argv)
    if args.replot:
        with open(args.replot) as f:
            res = json.load(f)
        render(res, os.path.dirname(os.path.abspath(args.replot)))
        return 0
    if not args.model:
        ap.error("--model is required (or --replot JSON)")
    if not os.path.exists(args.model):
        raise SystemExit(f"{args.model}: no such model")
    try:
        args.lambdas = [float(x) for x in args.lambdas.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--lambdas {args.lambdas!r}: want a comma list of numbers") from None
    res = sweep(args)
    render(res, args.out_dir)
    return 1 if any("error" in p for p in res["points"]) else 0


if __name__ == "__main__":
    sys.exit(main())
