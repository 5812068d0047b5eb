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
    tensor = ir.tensor(np.ascontiguousarray(array), name=name)
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


def remove_unused_initializers(graph: ir.Graph) -> None:
    for name, value in list(graph.initializers.items()):
        if not value.uses() and not value.is_graph_output():
            del graph.initializers[name]
