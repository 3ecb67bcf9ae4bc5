"""Small helpers over ONNX graphs shared by :mod:`.export` and :mod:`.profile`."""

from __future__ import annotations

import os
from typing import Any

from .errors import DeployError, require

# Nodes whose outputs describe a tensor (shape/size) rather than carry its data.
METADATA_OPS = frozenset({"Shape", "Size"})


def load_onnx(model_or_path: Any) -> Any:
    """An ``onnx.ModelProto`` from a proto, a path or serialized bytes."""
    onnx = require("onnx")
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    if isinstance(model_or_path, (bytes, bytearray)):
        try:
            return onnx.load_from_string(bytes(model_or_path))
        except Exception as e:
            raise DeployError(f"not an ONNX model, or truncated ({_first_line(e)})") from e
    if isinstance(model_or_path, (str, os.PathLike)):
        if not os.path.isfile(model_or_path):
            raise DeployError(f"ONNX file not found: {model_or_path}")
        try:
            model = onnx.load(os.fspath(model_or_path))
        except PermissionError as e:
            raise DeployError(f"cannot read {model_or_path}: permission denied; make the file "
                              "readable (chmod a+r) or use a copy you may read") from e
        except Exception as e:  # a truncated file, or external data onnx refuses to read
            raise DeployError(f"cannot read {model_or_path}: not an ONNX model, truncated, or "
                              f"its external data is refused ({_first_line(e)}); export it "
                              "again") from e
        if not model.HasField("graph") or not model.graph.node:
            raise DeployError(f"{model_or_path} is not an ONNX model (no graph); export it "
                              "again")
        return model
    raise DeployError(f"expected an ONNX model or a path, got {type(model_or_path).__name__}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line if len(line) <= 200 else line[:200] + " ..."


def graph_inputs(model: Any) -> list[Any]:
    """Graph inputs that are real inputs (not initializers listed as inputs)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def activation_names(model: Any) -> set[str]:
    """Names of tensors computed from the graph inputs: the activations (feature maps, logits).

    Initializers, ``Constant`` outputs and anything computed only from them are weights, and
    the outputs of ``Shape``/``Size`` are metadata; neither counts as an activation.
    """
    live = {i.name for i in graph_inputs(model)}
    for node in model.graph.node:
        if node.op_type in METADATA_OPS:
            continue
        if any(name in live for name in node.input if name):
            live.update(o for o in node.output if o)
    return live


def value_shapes(model: Any) -> dict[str, tuple[list[int | str | None] | None, int]]:
    """``name -> (dims, elem_type)`` for every typed value (inputs, outputs, value_info,
    initializers); unknown dims are ``None``, symbolic ones their name, an unknown rank
    gives ``None`` instead of a list."""
    out: dict[str, tuple[list[int | str | None] | None, int]] = {}
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            out[vi.name] = (None, tt.elem_type)
            continue
        dims: list[int | str | None] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        out[vi.name] = (dims, tt.elem_type)
    for init in g.initializer:
        out[init.name] = (list(init.dims), init.data_type)
    return out


FLOAT_TYPES = frozenset({1, 10, 11, 16})  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def without_weights(model: Any) -> Any:
    """Copy of ``model`` whose float initializers keep their dims but not their data: enough
    for shape inference (which never reads float weights) and much cheaper for large models."""
    onnx = require("onnx")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for init in m.graph.initializer:
        if init.data_type in FLOAT_TYPES:
            for f in ("raw_data", "float_data", "double_data", "int32_data"):
                init.ClearField(f)
    return m


def infer_shapes(model: Any) -> Any:
    """Model with ``value_info`` filled in by ONNX shape inference (with data propagation)."""
    onnx = require("onnx")
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as e:
        raise DeployError(f"ONNX shape inference failed: {e}") from e
