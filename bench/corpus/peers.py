"""Peer baselines for every corpus model (runs in the PEERS venv, bench/.venv-peers).

Per model, into bench/out/corpus/<name>/:
- model.onnx.zst  zstd -19 of the file (bench/peers.py zstd_row; for the external-data entry the
                  .data file is compressed too and both are counted)
- int8.onnx       onnxruntime.quantization.quantize_dynamic, weight_type QInt8, per_channel=True
                  (falls back to per-tensor when per-channel fails; the row says which)
- int4.onnx       MatMulNBits, 4 bits, block 32, asymmetric (ORT's default), after bench/
                  gemm_to_matmul's exact Gemm -> MatMul + Add rewrite; only when the model has
                  MatMul/Gemm weights (otherwise the row says "skipped")
and a summary bench/out/corpus/<name>/peers.json (file / payload bytes, ops, errors). Task
metrics of these files: bench/corpus/measure.py (main venv, with a peers-venv fallback).

    bench/.venv-peers/bin/python bench/corpus/peers.py [--only NAME ...] [--block-size 32]
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import sys
import time
import traceback

import onnx

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, BENCH)

import models as M  # noqa: E402
from gemm_to_matmul import gemm_to_matmul  # noqa: E402
from model_stats import all_graphs, bits_per_param, model_stats  # noqa: E402
from sessions import versions  # noqa: E402


def _bench_peers():
    """bench/peers.py under another module name (this file is also called peers.py)."""
    spec = importlib.util.spec_from_file_location("bench_peers", os.path.join(BENCH, "peers.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(name: str, method: str, path: str, params: int, **extra) -> dict:
    st = model_stats(path)
    data = path + ".data"
    file_bytes = st["file_bytes"] + (os.path.getsize(data) if os.path.exists(data) else 0)
    row = {"model": name, "method": method, "path": os.path.relpath(path, M.REPO), "file_bytes": file_bytes,
           "payload_bytes": st["payload_bytes"], "constant_bytes": st["constant_bytes"], "params": params,
           "bits_per_param": bits_per_param(st["payload_bytes"], params), "ops": st["ops"]}
    row.update(extra)
    return row


def matmul_weights(model: onnx.ModelProto) -> int:
    """MatMul nodes of the main graph whose B input is an initializer (what MatMulNBits takes)."""
    inits = {t.name for t in model.graph.initializer}
    return sum(1 for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in inits)


QUANT_OPS = {"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "DynamicQuantizeLSTM",
             "DynamicQuantizeMatMul", "QLinearMatMul", "QLinearConv", "MatMulNBits"}


def quantized_op_counts(path: str) -> dict:
    m = onnx.load(path, load_external_data=False)
    out: dict[str, int] = {}
    for g in all_graphs(m.graph):
        for n in g.node:
            if n.op_type in QUANT_OPS:
                out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


def run(name: str, block_size: int) -> list[dict]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    bp = _bench_peers()
    d = M.out_dir(name)
    src = M.model_path(name)
    if not os.path.exists(src):
        raise SystemExit(f"{src} missing: run bash bench/corpus/setup.sh first")
    params = model_stats(src)["float_params"]
    rows = [_row(name, "original", src, params, notes="as shipped (see meta.json)")]

    # zstd -19, reusing bench/peers.py (its payload = zstd of the initializer bytes)
    z = bp.zstd_row(name, src, d, params, {"metric_name": None, "metric": None})
    z["path"] = os.path.relpath(os.path.join(d, os.path.basename(src) + ".zst"), M.REPO)
    if os.path.exists(src + ".data"):
        import zstandard

        raw = open(src + ".data", "rb").read()
        zd = zstandard.ZstdCompressor(level=19).compress(raw)
        with open(src + ".data.zst", "wb") as f:
            f.write(zd)
        z["file_bytes"] += len(zd)
        z["notes"] += "; model.onnx.data compressed too (file_bytes = both .zst files)"
    z.pop("metric_name", None)
    z.pop("metric", None)
    rows.append(z)

    # int8 dynamic, per-channel where possible
    q8 = os.path.join(d, "int8.onnx")
    for f in glob.glob(q8 + "*"):
        os.remove(f)
    err = None
    for per_channel in (True, False):
        try:
            t0 = time.perf_counter()
            quantize_dynamic(src, q8, weight_type=QuantType.QInt8, per_channel=per_channel)
            new_q = quantized_op_counts(q8)
            old_q = quantized_op_counts(src)
            quantized = {k: v - old_q.get(k, 0) for k, v in new_q.items() if v > old_q.get(k, 0)}
            rows.append(_row(name, "int8 dynamic (quantize_dynamic QInt8)", q8, params,
                             per_channel=per_channel, quantize_seconds=round(time.perf_counter() - t0, 2),
                             notes=("per-channel" if per_channel else f"per-tensor (per-channel failed: {err})")
                             + f"; quantized ops added: {quantized or 'none (nothing quantized)'}"))
            break
        except Exception as e:  # noqa: BLE001 - a failing quantizer is a result
            err = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            traceback.print_exc()
    else:
        rows.append({"model": name, "method": "int8 dynamic (quantize_dynamic QInt8)", "error": err})

    # int4 MatMulNBits
    q4 = os.path.join(d, "int4.onnx")
    for f in glob.glob(q4 + "*"):
        os.remove(f)
    method = f"int4 MatMulNBits (block {block_size})"
    try:
        rewritten, n_gemm = gemm_to_matmul(onnx.load(src))
        n_mm = matmul_weights(rewritten)
        if n_mm == 0:
            rows.append({"model": name, "method": method, "skipped": True,
                         "notes": "no MatMul/Gemm with a constant weight in the main graph: nothing for MatMulNBits"})
        else:
            if importlib.util.find_spec("onnxruntime.quantization.matmul_nbits_quantizer"):
                from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer as Q
            else:  # ORT < 1.20
                from onnxruntime.quantization.matmul_4bits_quantizer import MatMul4BitsQuantizer as Q
            t0 = time.perf_counter()
            quant = Q(rewritten, block_size=block_size, is_symmetric=False)
            quant.process()
            quant.model.save_model_to_file(q4, use_external_data_format=False)
            m4 = onnx.load(q4, load_external_data=False)
            n_nbits = sum(n.op_type == "MatMulNBits" for n in m4.graph.node)
            rows.append(_row(name, method, q4, params, quantize_seconds=round(time.perf_counter() - t0, 2),
                             notes=(f"{n_gemm} Gemm rewritten to MatMul+Add first; " if n_gemm else "")
                             + f"{n_nbits} of {n_mm} weight MatMuls became MatMulNBits (K below the block "
                               "size or not a multiple stay float); Conv and the rest stay float"))
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        rows.append({"model": name, "method": method, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="corpus names (default: all)")
    ap.add_argument("--block-size", type=int, default=32)
    args = ap.parse_args(argv)
    env = versions()
    for name in args.only or list(M.CORPUS):
        rows = run(name, args.block_size)
        for r in rows:
            r["venv"] = env
        out = os.path.join(M.out_dir(name), "peers.json")
        with open(out + ".tmp", "w") as f:
            json.dump(rows, f, indent=1, default=str)
        os.replace(out + ".tmp", out)
        for r in rows:
            print(f"{name:<20} {r['method']:<40} file {r.get('file_bytes', '-'):>10} payload "
                  f"{r.get('payload_bytes', '-'):>10} {r.get('error', '') or ('skipped' if r.get('skipped') else '')}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
