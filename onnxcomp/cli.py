"""Command line: ``onnxcomp compress|eval|inspect|decompress|passes``.

Every error a user can cause ends as one line on stderr (``onnxcomp: error: ...``) and a non-zero
exit code (EXIT_CODES below, printed by ``--help``); set ONNXCOMP_DEBUG=1 to see tracebacks.
``inspect``, ``decompress`` and ``eval`` work in the deploy-only install (``onnxcomp[deploy]``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from onnxcomp.errors import OnnxcompError, UsageError

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
# Documented in --help and the README; the numbers of onnxcomp.errors' classes.
EXIT_CODES = {
    0: "success",
    1: "other onnxcomp error (OnnxcompError)",
    2: "bad command line: unknown pass, option or value, or a usage error (PipelineError, UsageError)",
    3: "the model file is missing, not ONNX, truncated, or its external data cannot be read (ModelLoadError)",
    4: "the model cannot be processed, or a pass failed (ModelError, PassError)",
    5: "the data spec cannot be resolved or does not fit the model (DataError)",
    6: "a compressed file breaks FORMAT.md: seal, sizes, streams, CRCs, versions (FormatError)",
    7: "ONNX Runtime training could not be set up or diverged (TrainingError)",
    EXIT_INTERNAL: "internal error: a bug in onnxcomp (please report it with ONNXCOMP_DEBUG=1's traceback)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); no output was written",
}


def build_parser() -> argparse.ArgumentParser:
    from onnxcomp import __version__

    epilog = "exit codes:\n" + "\n".join(f"  {code:>3}  {what}" for code, what in EXIT_CODES.items())
    p = argparse.ArgumentParser(prog="onnxcomp", description="Make trained ONNX models much smaller.", epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"onnxcomp {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compress", help="run a pass pipeline and write the compressed model")
    c.add_argument("input", help="ONNX model")
    c.add_argument("-o", "--output", required=True, help="compressed ONNX file to write")
    c.add_argument("-p", "--pipeline", default="ptq", help="pipeline string or preset (default: ptq)")
    c.add_argument("--data", help="data spec: mnist, fashion-mnist, or file.npz with one array per model input "
                                  "(training passes hold every 5th sample out for validation; train/<input> and "
                                  "val/<input> keys choose the splits yourself)")
    c.add_argument("--max-error-increase", type=float, help="error budget on the validation split, a fraction (0.001 = 0.1 point)")
    c.add_argument("--max-error", type=float, help="absolute error budget on the validation split (epr searches lambda for it)")
    c.add_argument("--resume", action="store_true", help="continue an interrupted training run from its checkpoints (<output>.train/)")
    c.add_argument("--report", help="write the report as JSON here")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--quiet", action="store_true", help="print nothing but errors (no progress, no tables)")

    e = sub.add_parser("eval", help="classification error of a model (compressed or plain) on data")
    e.add_argument("model")
    e.add_argument("--data", required=True, help="data spec; mnist evaluates its test split, mnist:val the validation split")
    e.add_argument("--json", action="store_true")

    i = sub.add_parser("inspect", help="what a model holds: tensors, codecs, bytes")
    i.add_argument("model")
    i.add_argument("--json", action="store_true")
    i.add_argument("--no-verify", action="store_true", help="skip the seal check (a compressed file you edited yourself)")

    d = sub.add_parser("decompress", help="standard ONNX for runtimes without the custom ops")
    d.add_argument("input")
    d.add_argument("-o", "--output", required=True)
    d.add_argument("--keep-decode-graph", action="store_true", help="keep integer tensors + Cast/Mul instead of float weights")
    d.add_argument("--no-verify", action="store_true", help="skip the seal check (a compressed file you edited yourself)")
    d.add_argument("--max-decoded-bytes", type=int, help="raise the decode budget (FORMAT.md section 8) for a file you trust")

    sub.add_parser("passes", help="list passes, their options and the presets")
    return p


def check_output_path(path: str, flag: str = "-o") -> None:
    """Refuse, before any work, an output that cannot be written as a file."""
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path!r} is a directory; give the file to write (e.g. {os.path.join(path, 'model.onnx')!r})")
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise UsageError(f"{flag} {path!r}: {parent!r} is not a directory")


def cmd_compress(args) -> int:
    from onnxcomp.compile import compress
    from onnxcomp.report import summary_table

    check_output_path(args.output)
    if args.report:
        check_output_path(args.report, "--report")
    import onnxruntime as ort

    # onnxruntime's warnings about the user's graph (VerifyOutputSizes on symbolic dims, ...) are
    # noise in a compile; errors still show. The CLI owns the process, so it sets the default.
    ort.set_default_logger_severity(3)
    report = compress(args.input, args.output, args.pipeline, data=args.data,
                      max_error_increase=args.max_error_increase, max_error=args.max_error, resume=args.resume, seed=args.seed,
                      report_path=args.report, progress=not args.quiet)
    if not args.quiet:
        print(summary_table(report))
        print(f"\nwrote {args.output}" + (f" and {args.report}" if args.report else ""))
    return 0


ORT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
             "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
             "tensor(bool)": "bool"}


def cmd_eval(args) -> int:
    import numpy as np

    import onnxcomp.runtime as rt
    from onnxcomp.data import load_data
    from onnxcomp.metrics import evaluate_session

    # Shapes and types from the session itself: no onnx needed (the deploy-only install).
    session = rt.InferenceSession(args.model)
    inputs = session.get_inputs()
    data = load_data(args.data, {i.name: tuple(i.shape) for i in inputs},
                     {i.name: np.dtype(ORT_TYPES.get(i.type, "float32")) for i in inputs})
    split_name = "test" if data.test is not None else "val" if data.val is not None else "train"
    split = data.split(split_name)
    error = evaluate_session(session, split)
    result = {"model": args.model, "data": args.data, "split": split_name, "samples": len(split), "error": error}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.model}: {split_name} error {100 * error:.2f}% on {len(split)} samples of {args.data}")
    return 0


def cmd_inspect(args) -> int:
    from onnxcomp.inspection import format_inspection, inspect_model

    info = inspect_model(args.model, verify=not args.no_verify)
    print(json.dumps(info, indent=2) if args.json else format_inspection(info))
    return 0


def cmd_decompress(args) -> int:
    check_output_path(args.output)
    fold = not args.keep_decode_graph
    try:
        from onnxcomp.decompress import decompress
    except ImportError:  # the deploy-only install: no onnx/onnx-ir to fold decode graphs with
        decompress = None
    if decompress is not None:
        size = decompress(args.input, args.output, fold=fold, verify=not args.no_verify,
                          max_decoded_bytes=args.max_decoded_bytes)
        print(f"wrote {args.output} ({size:,} bytes, standard ONNX)")
        return 0
    from pathlib import Path

    import onnxcomp.runtime as rt
    from onnxcomp.runtime.load import write_atomic

    data = rt.decode_model(args.input, verify=not args.no_verify, max_decoded_bytes=args.max_decoded_bytes)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(Path(args.output), data)
    note = "; decode graphs kept (folding them into float weights needs onnxcomp[compile])" if fold else ""
    print(f"wrote {args.output} ({len(data):,} bytes, standard ONNX{note})")
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
    except BrokenPipeError:  # `onnxcomp ... | head`: the reader left; nothing went wrong here
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush stays quiet
        return 0
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
