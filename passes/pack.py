"""``pack``: entropy-code integer latents into ``ai.onnxcomp::EntropyDecode`` nodes (FORMAT.md).

``pack`` reads the intermediate form every method ends in (``onnxcomp.graph.forms``) and knows
no method: a model still in a training form is refused, naming the pass that ends it.
Every integer initializer whose readers all take it as data (Cast, or Gather's indices) is coded
with ANS under an integer table built from its own histogram, and replaced by an EntropyDecode
node of the same output name, so the decode subgraph after it is unchanged. A tensor is stored
raw instead, in the narrowest integer type, when that is smaller than bitstream + table (tiny
tensors such as biases of a few values); readers other than Cast (Gather indices, which must be
int32/int64) then read it through a Cast back to its type.
Each coded tensor is decoded again right away and compared: pack never writes what it cannot read.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from onnxcomp.coding import FLOAT_CODES, EncodedTensor, encode_floats, encode_tensor, narrowest_int_dtype, value_stats
from onnxcomp.errors import PassError, PipelineError
from onnxcomp.graph.edit import all_names, new_initializer, replace_initializer, unique_name
from onnxcomp.graph.forms import training_form
from onnxcomp.graph.weights import is_quantized_use
from onnxcomp.pass_base import CompressionPass, register_pass
from onnxcomp.runtime import format as fmt
from onnxcomp.runtime.byteplane_decode import plan_byte_plane_decode
from onnxcomp.runtime.entropy_decode import entropy_decode

INT_TYPES = (ir.DataType.INT8, ir.DataType.INT16, ir.DataType.INT32, ir.DataType.INT64,
             ir.DataType.UINT8, ir.DataType.UINT16, ir.DataType.UINT32)


def is_data_use(use: ir.Usage) -> bool:
    """``use`` reads integers as weight data: a Cast (latents -> float), or the indices of a
    Gather into a constant table (weight fixing's codebook). A Gather index into anything else
    is shape arithmetic (``Shape -> Gather(0)``) and stays as the exporter wrote it."""
    node = use.node
    if node.domain != "":
        return False
    if node.op_type == "Gather" and use.idx == 1:
        table = node.inputs[0]
        return table is not None and table.is_initializer()
    return node.op_type == "Cast"


FLOAT_MODES = ("keep", "exact")


@register_pass
@dataclass
class PackPass(CompressionPass):
    name = "pack"
    summary = "entropy-code integer latents into ai.onnxcomp::EntropyDecode nodes"

    min_elements: int = field(default=16, metadata={"help": "smaller integer tensors are stored raw (narrowest type), not coded"})
    floats: str = field(default="keep", metadata={"help": "float initializers: keep (as they are), or exact (coded losslessly by byte planes where that is smaller)"})
    min_float_elements: int = field(default=1024, metadata={"help": "with floats=exact, smaller float tensors stay as they are"})
    stream_symbols: int = field(default=1 << 22, metadata={"help": "larger tensors are coded as several streams (row blocks + Concat) that decode in parallel"})

    def validate_options(self) -> None:
        if self.min_elements < 1:
            raise PipelineError(f"pass 'pack': option min_elements={self.min_elements} must be >= 1")
        if self.stream_symbols < 1024:
            raise PipelineError(f"pass 'pack': option stream_symbols={self.stream_symbols} must be >= 1024")
        if self.floats not in FLOAT_MODES:
            raise self.option_error("floats", self.floats, f"one of {', '.join(FLOAT_MODES)}")
        if self.min_float_elements < 1:
            raise self.option_error("min_float_elements", self.min_float_elements, ">= 1")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        finalizer = training_form(model)
        if finalizer is not None:
            raise PassError(f"pack: the model is still in a training form; end it with {finalizer!r} before pack "
                            f"(a training pass such as finetune ends it when it finishes)")
        modified = False
        graph = model.graph
        taken = all_names(model)
        coded = self._code_in_parallel(model)
        for name, value in list(graph.initializers.items()):
            tensor = value.const_value
            if tensor is None or value.is_graph_output() or value.is_graph_input() or not value.uses():
                continue
            if self.floats == "exact" and tensor.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16):
                modified |= self._code_floats(model, value, taken)
                continue
            if tensor.dtype not in INT_TYPES or not tensor.shape.dims:
                continue
            uses = list(value.uses())
            if all(is_quantized_use(u) for u in uses):
                modified |= self._code_quantized(model, value, taken, coded.get(name))
                continue
            if not all(is_data_use(u) for u in uses):
                continue
            array = tensor.numpy()
            if array.size and (int(array.min()) < -(2**31) or int(array.max()) >= 2**31):
                continue  # does not fit EntropyDecode's int32 output
            cast_only = all(u.node.op_type == "Cast" for u in uses)
            raw_dtype = narrowest_int_dtype(int(array.min()), int(array.max())) if array.size else np.dtype(np.int8)
            raw_bytes = array.size * raw_dtype.itemsize
            encoded, stats = coded.get(name, (None, None))
            coded_bytes = sum(e.payload_bytes for e in encoded) if encoded else 0
            if encoded is None or raw_bytes <= coded_bytes:
                if raw_dtype != array.dtype:
                    if cast_only:  # a Cast reads any integer type
                        value.const_value = ir.tensor(array.astype(raw_dtype), name=name)
                        value.dtype = ir.DataType.from_numpy(raw_dtype)
                    else:  # Gather indices must be int32/int64: narrow storage, Cast back
                        value = self._narrow_behind_cast(model, value, array, raw_dtype, taken)
                    modified = True
                stored = value.const_value.dtype.name.lower()
                self.context.note(name, codec=f"raw-{stored}", coded_bytes=int(value.const_value.nbytes))
                continue
            self._write_ans(model, value, encoded, taken, stats)
            modified = True
        # The domain is declared only when a node of it exists (every tensor may have been
        # cheaper raw), at version 3: the file is sealed when it is written (FORMAT.md section 8,
        # onnxcomp.model_io.serialize).
        if any(n.domain == fmt.DOMAIN for n in graph):
            model.opset_imports[fmt.DOMAIN] = fmt.SEALED_DOMAIN_VERSION
        return ir.passes.PassResult(model, modified)

    def _code_in_parallel(self, model: ir.Model) -> dict[str, tuple[list[EncodedTensor], tuple[int, float]]]:
        """(the checked encodings of its row blocks, its values' ``value_stats``) of every integer
        initializer pack may code, by name: the per-tensor work, on every core (the native decoder
        that checks each stream releases the GIL, and so do the histograms); the graph is edited
        afterwards, in order."""
        jobs = []
        for name, value in model.graph.initializers.items():
            tensor = value.const_value
            if tensor is None or tensor.dtype not in INT_TYPES or not tensor.shape.dims or \
                    value.is_graph_output() or value.is_graph_input() or not value.uses():
                continue
            uses = list(value.uses())
            if not (all(is_quantized_use(u) for u in uses) or all(is_data_use(u) for u in uses)):
                continue
            array = tensor.numpy()
            if array.size < self.min_elements or int(array.min()) < -(2**31) or int(array.max()) >= 2**31:
                continue
            jobs.append((name, array))

        def code(job):
            name, array = job
            parts = split_rows(array, self.stream_symbols)
            encoded = [encode_tensor(p) for p in parts]
            for part, enc in zip(parts, encoded):
                self._check_round_trip(name, part, enc)
            return name, (encoded, value_stats(array))

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            return dict(pool.map(code, jobs))

    def _code_quantized(self, model: ir.Model, value: ir.Value, taken: set[str], coded) -> bool:
        """An already quantized graph's integer weight: ANS-coded when smaller, read through a
        Cast back to its own type (exact); else left as it is."""
        name, array = value.name, value.const_value.numpy()
        if coded is None:  # too small, or outside EntropyDecode's int32 output
            return False
        encoded, stats = coded
        coded_bytes = sum(e.payload_bytes for e in encoded)
        if coded_bytes >= array.nbytes:
            self.context.note(name, codec=f"raw-{value.const_value.dtype.name.lower()}", coded_bytes=int(array.nbytes))
            return False
        self._write_ans(model, value, encoded, taken, stats, cast_back=value.const_value.dtype, method="exact")
        return True

    def _write_ans(self, model: ir.Model, value: ir.Value, encoded: list[EncodedTensor], taken: set[str],
                   stats: tuple[int, float], cast_back: ir.DataType | None = None, **facts) -> None:
        """Put the EntropyDecode node(s) (each stream checked to decode to its part) in place of
        ``value`` and note the figures the report reads (``stats``: the values' distinct count
        and entropy per value, as ``onnxcomp.coding.value_stats`` gives them)."""
        name = value.name
        self._replace(model, value, encoded, taken, cast_back=cast_back)
        self.context.note(name, codec="ans", streams=len(encoded), coded_bytes=sum(e.payload_bytes for e in encoded),
                          bitstream_bytes=sum(e.bitstream.nbytes for e in encoded),
                          ideal_bits=sum(e.ideal_bits for e in encoded),
                          entropy_bits=sum(e.empirical_entropy_bits for e in encoded),
                          unique_values=stats[0], value_entropy_bits=stats[1], **facts)

    def _code_floats(self, model: ir.Model, value: ir.Value, taken: set[str]) -> bool:
        """A float tensor coded exactly (BytePlaneDecode) when that is smaller than storing it."""
        name, array = value.name, value.const_value.numpy()
        if array.size < self.min_float_elements or np.dtype(array.dtype) not in FLOAT_CODES:
            return False
        enc = encode_floats(array)
        if enc.payload_bytes >= array.nbytes:
            return False
        back = plan_byte_plane_decode([enc.bitstream, enc.stream_bytes, enc.frequencies, np.array(enc.shape, np.int64)],
                                      {"format_version": fmt.BYTE_PLANE_DECODE_VERSION, "to": enc.to, "crc32": enc.crc32},
                                      name).decode()
        if back.tobytes() != np.ascontiguousarray(array).tobytes():
            raise PassError(f"pack: tensor {name!r} does not decode to itself exactly (coder bug)")
        graph = model.graph
        inputs = [
            new_initializer(graph, unique_name(model, f"{name}.bitstream", taken), enc.bitstream),
            new_initializer(graph, unique_name(model, f"{name}.stream_bytes", taken), enc.stream_bytes),
            new_initializer(graph, unique_name(model, f"{name}.frequencies", taken), enc.frequencies),
            new_initializer(graph, unique_name(model, f"{name}.shape", taken), np.array(enc.shape, np.int64)),
        ]
        node = ir.Node(fmt.DOMAIN, fmt.BYTE_PLANE_DECODE, inputs,
                       {"format_version": ir.AttrInt64("format_version", fmt.BYTE_PLANE_DECODE_VERSION),
                        "to": ir.AttrInt64("to", enc.to), "crc32": ir.AttrInt64("crc32", enc.crc32)},
                       name=unique_name(model, f"{name}/BytePlaneDecode", taken))
        out = node.outputs[0]
        out.dtype, out.shape = value.const_value.dtype, ir.Shape(array.shape)
        graph.insert_before(graph[0], [node])
        replace_initializer(graph, value, out)
        self.context.note(name, codec="exact-float", coded_bytes=enc.payload_bytes, ideal_bits=enc.ideal_bits,
                          bitstream_bytes=int(enc.bitstream.nbytes))
        return True

    @staticmethod
    def _narrow_behind_cast(model: ir.Model, value: ir.Value, array: np.ndarray, dtype: np.dtype, taken: set[str]) -> ir.Value:
        """Store ``value`` as ``dtype`` under a new name; a Cast back to its type keeps the name."""
        graph = model.graph
        name = value.name
        stored = new_initializer(graph, unique_name(model, f"{name}.raw", taken), array.astype(dtype))
        cast = ir.Node("", "Cast", [stored], {"to": ir.AttrInt64("to", value.const_value.dtype.value)},
                       name=unique_name(model, f"{name}/cast", taken))
        out = cast.outputs[0]
        out.dtype = value.const_value.dtype
        out.shape = ir.Shape(array.shape)
        graph.insert_before(graph[0], [cast])
        replace_initializer(graph, value, out)
        return stored

    @staticmethod
    def _check_round_trip(name: str, array: np.ndarray, enc: EncodedTensor) -> None:
        back = entropy_decode(enc.bitstream, enc.frequencies, np.int32(enc.offset),
                              np.array(enc.shape, np.int64), crc32=enc.crc32, where=name)
        if not np.array_equal(back, array.astype(np.int32)):
            raise PassError(f"pack: tensor {name!r} does not decode to itself (coder bug)")

    @staticmethod
    def _replace(model: ir.Model, value: ir.Value, parts: list[EncodedTensor], taken: set[str],
                 cast_back: ir.DataType | None = None) -> None:
        """EntropyDecode node(s) producing ``value``'s name: one per stream, Concat'ed on axis 0,
        then (``cast_back``) a Cast from int32 to the tensor's own integer type."""
        graph = model.graph
        name = value.name
        nodes, outputs = [], []
        for i, enc in enumerate(parts):
            stem = name if len(parts) == 1 else f"{name}.part{i}"
            inputs = [
                new_initializer(graph, unique_name(model, f"{stem}.bitstream", taken), enc.bitstream),
                new_initializer(graph, unique_name(model, f"{stem}.frequencies", taken), enc.frequencies),
                new_initializer(graph, unique_name(model, f"{stem}.offset", taken), np.array(enc.offset, np.int32)),
                new_initializer(graph, unique_name(model, f"{stem}.shape", taken), np.array(enc.shape, np.int64)),
            ]
            node = ir.Node(
                fmt.DOMAIN, fmt.ENTROPY_DECODE, inputs,
                {"format_version": ir.AttrInt64("format_version", fmt.ENTROPY_DECODE_VERSION),
                 "crc32": ir.AttrInt64("crc32", enc.crc32)},
                name=unique_name(model, f"{stem}/EntropyDecode", taken),
            )
            node.outputs[0].dtype = ir.DataType.INT32
            node.outputs[0].shape = ir.Shape(enc.shape)
            if len(parts) > 1:
                node.outputs[0].name = unique_name(model, stem, taken)
            nodes.append(node)
            outputs.append(node.outputs[0])
        if len(parts) > 1:
            concat = ir.Node("", "Concat", outputs, {"axis": ir.AttrInt64("axis", 0)},
                             name=unique_name(model, f"{name}/concat_streams", taken))
            concat.outputs[0].dtype = ir.DataType.INT32
            nodes.append(concat)
        if cast_back is not None and cast_back != ir.DataType.INT32:
            decoded = nodes[-1].outputs[0]
            decoded.name = unique_name(model, f"{name}.decoded", taken)
            decoded.shape = ir.Shape(value.const_value.shape)
            cast = ir.Node("", "Cast", [decoded], {"to": ir.AttrInt64("to", int(cast_back))},
                           name=unique_name(model, f"{name}/cast_back", taken))
            cast.outputs[0].dtype = cast_back
            nodes.append(cast)
        out = nodes[-1].outputs[0]
        out.shape = ir.Shape(value.const_value.shape)
        graph.insert_before(graph[0], nodes)
        replace_initializer(graph, value, out)


def split_rows(array: np.ndarray, max_symbols: int) -> list[np.ndarray]:
    """Row blocks (axis 0) of at most ~max_symbols values each; the tensor whole if it is small
    or has no rows to split."""
    if array.size <= max_symbols or array.ndim == 0 or array.shape[0] < 2:
        return [array]
    parts = min(array.shape[0], -(-array.size // max_symbols))
    return [np.ascontiguousarray(p) for p in np.array_split(array, parts, axis=0)]
