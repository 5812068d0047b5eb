"""Peer baselines for one float ONNX model, measured side by side (runs in the PEERS venv).

Rows produced (each: file bytes, payload bytes, bits/param, task metric):
- float: the input file as is.
- zstd -19: the float file compressed by zstd level 19 (lossless, metric = float's). Payload
  = zstd -19 of all initializer bytes concatenated.
- int8 dynamic: `onnxruntime.quantization.quantize_dynamic`, weight_type QInt8, once per-tensor
  (ORT's default) and once per-channel. MatMul -> DynamicQuantizeLinear + MatMulInteger,
  Conv -> ConvInteger.
- int4 MatMulNBits: `MatMulNBitsQuantizer` (matmul_4bits_quantizer in older ORT), bits 4,
  block size 32 (option --block-size), asymmetric (ORT's default: uint4 + zero points + fp32
  scales per block), accuracy_level unset. It quantizes MatMul with a constant weight only;
  Conv and everything else stays float.
The 4-bit quantizer skips Gemm, so for it a model with Gemm is first rewritten exactly to
MatMul + Add (bench/gemm_to_matmul.py); the notes column says when. quantize_dynamic handles
Gemm itself (MatMulInteger + Add) and gets the original file.

Tasks: `mnist` (test error % on the 10k MNIST test split), `fashion-mnist` (the same on the 10k
Fashion-MNIST t10k split, Debian package dataset-fashion-mnist) and `ocr` (PP-OCR rec: % of
rendered lines whose text is identical to the float model's, see bench/ocr.py).

    python bench/peers.py --model models/lenet-300-100.onnx --task mnist --out bench/out/results/peers-lenet-300-100.json
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import traceback

import onnx

from gemm_to_matmul import gemm_to_matmul
from model_stats import bits_per_param, initializers, model_stats
from sessions import open_session, write_results

HERE = os.path.dirname(os.path.abspath(__file__))


def _metric(task: str, path: str, ctx: dict) -> dict:
    """{"metric_name", "metric", "detail"} for one model file; ctx carries the OCR reference."""
    if task in ("mnist", "fashion-mnist"):
        import mnist_task

        sess, _ = open_session(path)
        r = mnist_task.test_error(sess, task=task)
        return {"metric_name": mnist_task.metric_name(task), "metric": r["test_error_pct"], "detail": r}
    import ocr

    r = ocr.evaluate(path, reference=ctx.get("reference_path"), reference_rows=ctx.get("reference_rows"))
    if "reference_rows" not in ctx:
        ctx["reference_rows"] = r["rows"]
    detail = {k: r[k] for k in ("identical_to_truth", "identical_to_reference", "frame_agreement",
                                "mean_confidence", "dictionary", "mismatches_vs_truth")}
    detail["mismatches_vs_reference"] = r.get("mismatches_vs_reference", [])
    metric = r["identical_to_reference"] if r["identical_to_reference"] is not None else 1.0
    return {"metric_name": "OCR identical lines % (vs float)", "metric": 100.0 * metric, "detail": detail}


def _row(model_name: str, method: str, path: str, params: int, **extra) -> dict:
    st = model_stats(path)
    row = {"model": model_name, "method": method, "path": os.path.relpath(path),
           "file_bytes": st["file_bytes"], "payload_bytes": st["payload_bytes"],
           "constant_bytes": st["constant_bytes"], "params": params,
           "bits_per_param": bits_per_param(st["payload_bytes"], params), "ops": st["ops"]}
    row.update(extra)
    return row


def _measure(row: dict, task: str, path: str, ctx: dict) -> dict:
    """Attach the task metric; a runtime failure becomes the row's error, not a crash."""
    try:
        t0 = time.perf_counter()
        row.update(_metric(task, path, ctx))
        row["eval_seconds"] = round(time.perf_counter() - t0, 2)
    except Exception as e:  # noqa: BLE001 - a failing peer is a result worth recording
        row.update({"metric": None, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"})
        traceback.print_exc()
    return row


def zstd_row(model_name: str, path: str, workdir: str, params: int, float_row: dict) -> dict:
    import zstandard

    raw = open(path, "rb").read()
    z = zstandard.ZstdCompressor(level=19).compress(raw)
    assert zstandard.ZstdDecompressor().decompress(z) == raw
    out = os.path.join(workdir, os.path.basename(path) + ".zst")
    with open(out, "wb") as f:
        f.write(z)
    model = onnx.load(path)
    blob = b"".join(onnx.numpy_helper.to_array(t).tobytes() for t in initializers(model))
    payload = len(zstandard.ZstdCompressor(level=19).compress(blob))
    return {"model": model_name, "method": "zstd -19", "path": os.path.relpath(out),
            "file_bytes": len(z), "payload_bytes": payload, "params": params,
            "bits_per_param": bits_per_param(payload, params),
            "metric_name": float_row.get("metric_name"), "metric": float_row.get("metric"),
            "notes": "lossless (round trip checked); payload = zstd -19 of the initializer bytes"}


def run(model_path: str, task: str, name: str, workdir: str, block_size: int) -> list[dict]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    os.makedirs(workdir, exist_ok=True)
    params = model_stats(model_path)["float_params"]
    ctx = {"reference_path": model_path}
    rows = []

    float_row = _measure(_row(name, "float", model_path, params, notes="as exported"),
                         task, model_path, ctx)
    rows.append(float_row)
    rows.append(zstd_row(name, model_path, workdir, params, float_row))

    # MatMulNBits ignores Gemm: feed it the exact MatMul + Add rewrite.
    src = model_path
    rewritten, n_gemm = gemm_to_matmul(onnx.load(model_path))
    if n_gemm:
        src = os.path.join(workdir, f"{name}.matmul.onnx")
        onnx.save(rewritten, src)
    pre = f"{n_gemm} Gemm rewritten to MatMul+Add first; " if n_gemm else ""

    for per_channel in (False, True):
        kind = "per-channel" if per_channel else "per-tensor"
        method = f"int8 dynamic {kind} (quantize_dynamic)"
        q8 = os.path.join(workdir, f"{name}.int8-{kind}.onnx")
        try:
            quantize_dynamic(model_path, q8, weight_type=QuantType.QInt8, per_channel=per_channel)
        except Exception as e:  # noqa: BLE001
            rows.append({"model": name, "method": method, "metric": None,
                         "error": f"quantize_dynamic: {type(e).__name__}: {e}"})
            continue
        row = _row(name, method, q8, params,
                   notes=f"QInt8 weights {kind}, activations uint8 quantized at run time")
        rows.append(_measure(row, task, q8, ctx))

    q4 = os.path.join(workdir, f"{name}.int4-b{block_size}.onnx")
    try:
        if importlib.util.find_spec("onnxruntime.quantization.matmul_nbits_quantizer"):
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer as Q
        else:  # ORT < 1.20 named it after 4 bits
            from onnxruntime.quantization.matmul_4bits_quantizer import MatMul4BitsQuantizer as Q
        quant = Q(onnx.load(src), block_size=block_size, is_symmetric=False)
        quant.process()
        quant.model.save_model_to_file(q4, use_external_data_format=False)
        row = _row(name, f"int4 MatMulNBits (block {block_size})", q4, params,
                   notes=pre + f"asymmetric uint4 + fp32 scale + uint4 zero point per {block_size} "
                         "weights; MatMul only, Conv stays float")
        rows.append(_measure(row, task, q4, ctx))
    except Exception as e:  # noqa: BLE001
        rows.append({"model": name, "method": f"int4 MatMulNBits (block {block_size})", "metric": None,
                     "error": f"MatMulNBitsQuantizer: {type(e).__name__}: {e}"})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="float .onnx")
    ap.add_argument("--task", required=True, choices=["mnist", "fashion-mnist", "ocr"])
    ap.add_argument("--name", help="model name in the table (default: file stem)")
    ap.add_argument("--block-size", type=int, default=32, help="MatMulNBits block size (default 32)")
    ap.add_argument("--workdir", help="where quantized files go (default bench/out/peers/NAME)")
    ap.add_argument("--out", help="JSON rows file (default bench/out/results/peers-NAME.json)")
    args = ap.parse_args(argv)
    name = args.name or os.path.splitext(os.path.basename(args.model))[0]
    workdir = args.workdir or os.path.join(HERE, "out", "peers", name)
    out = args.out or os.path.join(HERE, "out", "results", f"peers-{name}.json")
    if not os.path.exists(args.model):
        raise SystemExit(f"{args.model}: no such model")
    rows = run(args.model, args.task, name, workdir, args.block_size)
    write_results(rows, out)
    for r in rows:
        print(f"{r['method']:<36} file {r.get('file_bytes', '-'):>10} payload {r.get('payload_bytes', '-'):>10} "
              f"bits/param {r.get('bits_per_param', float('nan')):6.3f} metric {r.get('metric')} {r.get('error', '')}")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
