"""Small onnx-ir helpers shared by passes: constants as numpy, initializer surgery, naming."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The numpy value of an initializer (or other constant value), else None."""
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def all_names(model: ir.Model) -> set[str]:
    names: set[str] = set(model.graph.initializers)
    for v in model.graph.inputs:
        names.add(v.name)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for v in node.outputs:
            if v.name:
                names.add(v.name)
        if node.name:
            names.add(node.name)
    return names


def unique_name(model: ir.Model, base: str, taken: set[str] | None = None) -> str:
    taken = all_names(model) if taken is None else taken
    name, i = base, 1
    while name in taken:
        name = f"{base}_{i}"
        i += 1
    taken.add(name)
    return name


def new_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    array = np.asarray(array)  # not ascontiguousarray: that turns a 0-d scalar into shape [1]
    if not array.flags.c_contiguous:
        array = array.copy(order="C")
    tensor = ir.tensor(array, name=name)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def set_initializer(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, name: str) -> ir.Value:
    """Make input ``index`` of ``node`` an initializer holding ``array`` under ``name``.

    An existing initializer of that name used only by this node is updated; otherwise a new one
    is registered (the caller passes a fresh name in that case).
    """
    old = node.inputs[index] if index < len(node.inputs) else None
    if old is not None and old.is_initializer() and old.name == name and len(old.uses()) == 1:
        old.const_value = ir.tensor(np.ascontiguousarray(array), name=name)
        old.shape = ir.Shape(array.shape)
        return old
    value = new_initializer(graph, name, array)
    if index >= len(node.inputs):
        node.resize_inputs(index + 1)
    node.replace_input_with(index, value)
    return value


def replace_initializer(graph: ir.Graph, initializer: ir.Value, by: ir.Value) -> None:
    """Every reader of ``initializer`` reads ``by`` (a node output) instead, and ``by`` takes over
    the initializer's name, which is removed: the way every pass turns a weight into a decode
    subgraph, so graph outputs, subgraph readers and reports still find the weight by its name."""
    name = initializer.name
    initializer.replace_all_uses_with(by)
    del graph.initializers[name]
    by.name = name


def remove_unused_initializers(graph: ir.Graph) -> None:
    for name, value in list(graph.initializers.items()):
        if not value.uses() and not value.is_graph_output():
            del graph.initializers[name]


class NodeBuilder:
    """Appends nodes to a list with unique, readable names (``<prefix>/<Op>_<n>``).

    Passes that build whole subgraphs (epr-reparam's decode and rate paths) use it so that every
    node carries a ``role`` tag in its metadata (``onnxcomp.role``), by which the method's own
    finalizing step finds and strips training-only nodes. Constants become initializers of ``graph``.
    """

    ROLE_KEY = "onnxcomp.role"

    def __init__(self, model: ir.Model, taken: set[str]) -> None:
        self.model = model
        self.taken = taken
        self.nodes: list[ir.Node] = []

    def name(self, base: str) -> str:
        return unique_name(self.model, base, self.taken)

    @property
    def opset(self) -> int:
        """The model's default-domain opset: nodes whose form changed between opsets follow it."""
        return self.model.opset_imports.get("", 1)

    def split(self, x: ir.Value, sizes: list[int], prefix: str, role: str, *, axis: int) -> tuple[ir.Value, ...]:
        """Split ``x`` into parts of ``sizes`` along ``axis``: sizes are an input from opset 13,
        an attribute before (an opset-11 graph rejects the input form)."""
        if self.opset >= 13:
            return self.op("Split", [x, self.const(sizes, np.int64)], prefix, role, outputs=len(sizes), axis=axis)
        return self.op("Split", [x], prefix, role, outputs=len(sizes), axis=axis, split=list(sizes))

    def const(self, value, dtype=np.float32, name: str = "onnxcomp.const") -> ir.Value:
        return new_initializer(self.model.graph, self.name(name), np.asarray(value, dtype=dtype))

    def op(self, op_type: str, inputs: list[ir.Value | None], prefix: str, role: str, *,
           outputs: int = 1, output_names: list[str] | None = None, **attrs) -> ir.Value | tuple[ir.Value, ...]:
        node = ir.Node("", op_type, inputs, [ir.convenience.convert_attribute(k, v) for k, v in attrs.items()],
                       num_outputs=outputs, name=self.name(f"{prefix}/{op_type}"),
                       metadata_props={self.ROLE_KEY: role})
        for i, out in enumerate(node.outputs):
            out.name = output_names[i] if output_names else self.name(f"{prefix}/{op_type.lower()}")
        self.nodes.append(node)
        return node.outputs[0] if outputs == 1 else tuple(node.outputs)


def node_role(node: ir.Node) -> str | None:
    return node.metadata_props.get(NodeBuilder.ROLE_KEY)
