"""Command line: ``onnxcomp compress|eval|inspect|decompress|passes``.

Every error a user can cause ends as one line on stderr (``onnxcomp: error: ...``) and a non-zero
exit code (see onnxcomp.errors); set ONNXCOMP_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from onnxcomp.errors import OnnxcompError

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    from onnxcomp import __version__

    p = argparse.ArgumentParser(prog="onnxcomp", description="Make trained ONNX models much smaller.")
    p.add_argument("--version", action="version", version=f"onnxcomp {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compress", help="run a pass pipeline and write the compressed model")
    c.add_argument("input", help="ONNX model")
    c.add_argument("-o", "--output", required=True, help="compressed ONNX file to write")
    c.add_argument("-p", "--pipeline", default="ptq", help="pipeline string or preset (default: ptq)")
    c.add_argument("--data", help="data spec: mnist, fashion-mnist, file.npz (train/val splits only)")
    c.add_argument("--max-error-increase", type=float, help="error budget on the validation split, a fraction (0.001 = 0.1 point)")
    c.add_argument("--max-error", type=float, help="absolute error budget on the validation split (epr searches lambda for it)")
    c.add_argument("--resume", action="store_true", help="continue an interrupted training run from its checkpoints (<output>.train/)")
    c.add_argument("--report", help="write the report as JSON here")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--quiet", action="store_true", help="no progress lines")

    e = sub.add_parser("eval", help="classification error of a model (compressed or plain) on data")
    e.add_argument("model")
    e.add_argument("--data", required=True, help="data spec; mnist evaluates its test split, mnist:val the validation split")
    e.add_argument("--json", action="store_true")

    i = sub.add_parser("inspect", help="what a model holds: tensors, codecs, bytes")
    i.add_argument("model")
    i.add_argument("--json", action="store_true")

    d = sub.add_parser("decompress", help="standard ONNX for runtimes without the custom ops")
    d.add_argument("input")
    d.add_argument("-o", "--output", required=True)
    d.add_argument("--keep-decode-graph", action="store_true", help="keep integer tensors + Cast/Mul instead of float weights")

    sub.add_parser("passes", help="list passes, their options and the presets")
    return p


def cmd_compress(args) -> int:
    from onnxcomp.compile import compress
    from onnxcomp.report import summary_table

    report = compress(args.input, args.output, args.pipeline, data=args.data,
                      max_error_increase=args.max_error_increase, max_error=args.max_error, resume=args.resume, seed=args.seed,
                      report_path=args.report, progress=not args.quiet)
    print(summary_table(report))
    print(f"\nwrote {args.output}" + (f" and {args.report}" if args.report else ""))
    return 0


def cmd_eval(args) -> int:
    from onnxcomp.data import load_data
    from onnxcomp.metrics import evaluate_session
    import onnxcomp.runtime as rt

    from onnxcomp.model_io import load_proto
    from onnxcomp.data import model_input_dtypes, model_input_shapes

    proto = load_proto(args.model)
    data = load_data(args.data, model_input_shapes(proto), model_input_dtypes(proto))
    split_name = "test" if data.test is not None else "val" if data.val is not None else "train"
    split = data.split(split_name)
    error = evaluate_session(rt.InferenceSession(args.model), split)
    result = {"model": args.model, "data": args.data, "split": split_name, "samples": len(split), "error": error}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.model}: {split_name} error {100 * error:.2f}% on {len(split)} samples of {args.data}")
    return 0


def cmd_inspect(args) -> int:
    from onnxcomp.inspection import format_inspection, inspect_model

    info = inspect_model(args.model)
    print(json.dumps(info, indent=2) if args.json else format_inspection(info))
    return 0


def cmd_decompress(args) -> int:
    from onnxcomp.decompress import decompress

    size = decompress(args.input, args.output, fold=not args.keep_decode_graph)
    print(f"wrote {args.output} ({size:,} bytes, standard ONNX)")
    return 0


def cmd_passes(args) -> int:
    from onnxcomp.pass_base import format_value, option_name, registered_passes
    from onnxcomp.pipeline import PRESETS

    for name, cls in registered_passes().items():
        print(f"{name}: {cls.summary}")
        for f in cls.options():
            print(f"    {option_name(f) + '=' + format_value(f.default):<28} {f.metadata.get('help', '')}")
    print("\npresets:")
    for name, spec in PRESETS.items():
        print(f"    {name} = {spec}")
    return 0


COMMANDS = {"compress": cmd_compress, "eval": cmd_eval, "inspect": cmd_inspect,
            "decompress": cmd_decompress, "passes": cmd_passes}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except OnnxcompError as exc:
        print(f"onnxcomp: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        hint = ""
        if args.command == "compress" and os.path.exists(args.output + ".train"):
            hint = f"; training checkpoints are kept in {args.output}.train: run the same command with --resume"
        print(f"onnxcomp: interrupted; no output was written{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug in onnxcomp, not in the user's input
        if os.environ.get("ONNXCOMP_DEBUG"):
            traceback.print_exc()
        print(f"onnxcomp: internal error: {type(exc).__name__}: {exc} (set ONNXCOMP_DEBUG=1 for a traceback)", file=sys.stderr)
        return EXIT_INTERNAL
