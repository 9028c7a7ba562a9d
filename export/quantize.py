"""int8 dynamic quantisation of exported graphs (`mtasr export --int8`).

ONNX Runtime's ``quantize_dynamic``: the weights of every MatMul with a constant right-hand side
become int8 (symmetric, one scale per output channel, 7-bit range); activations are quantised to uint8 per
tensor at run time (DynamicQuantizeLinear -> MatMulInteger, which ONNX Runtime fuses into
DynamicQuantizeMatMul). Every graph is quantised: encoder, diarizer, and the prediction network (its
LSTM becomes DynamicQuantizeLSTM) and joint, which greedy decoding calls many times a chunk.

Convolutions with a kernel of one (the conformer's pointwise convolutions, the subsampling's 1x1
ones) are rewritten as MatMul first (`pointwise_convs_as_matmul`: the same product, channels moved
last and back), so they quantise like the rest. Other convolutions (depthwise, the first 3x3) stay
fp32: with ConvInteger the trained default encoder ran 1.5x slower than fp32 and its error doubled.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

QUANTIZATION = "int8-dynamic"
QUANTIZED_GRAPHS = ("pre_encoder", "encoder", "diarizer", "decoder", "joint")  # those an export has
OP_TYPES = ("MatMul", "LSTM")
PER_CHANNEL = True
REDUCE_RANGE = True


def quantization_settings(graphs: list[str]) -> dict[str, Any]:
    """What the manifest records about an int8 export of `graphs`."""
    return {
        "scheme": QUANTIZATION,
        "graphs": list(graphs),
        "op_types": list(OP_TYPES),
        "weights": f"int8 ({7 if REDUCE_RANGE else 8}-bit range), symmetric, "
        + ("per channel" if PER_CHANNEL else "per tensor"),
        "activations": "uint8, per tensor, computed at run time",
        "pointwise_convolutions": "rewritten as MatMul, then quantised",
        "tool": "onnxruntime.quantization.quantize_dynamic",
    }


def quantize_int8(source: Path, target: Path | None = None, external_data: str | None = None) -> dict[str, Any]:
    """Quantise the graph at `source` into `target` (default: in place).

    `external_data` names the weights file beside `source`, if it has one. The result keeps its
    weights inline unless protobuf cannot hold them. Returns the target's new manifest fields:
    ``external_data``, ``bytes`` and ``quantization``.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from mtasr.export.onnx_io import save_onnx

    source = Path(source)
    target = Path(target) if target is not None else source
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".quantize-") as tmp:
        work = Path(tmp)
        # quantize_dynamic writes its shape-inferred copy beside its input: work on a copy, with the
        # pointwise convolutions rewritten as MatMul.
        proto = onnx.load(str(source), load_external_data=True)
        pointwise_convs_as_matmul(proto)
        rewritten = work / "rewritten.onnx"
        onnx.save(proto, str(rewritten), save_as_external_data=True, location="rewritten.onnx.data")
        del proto
        if external_data and target == source:
            (target.parent / external_data).unlink(missing_ok=True)
        source = rewritten
        quantized = work / "quantized.onnx"
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(max(quiet, logging.ERROR))  # its advice to pre-process, once per graph
        try:
            quantize_dynamic(
                source,
                quantized,
                op_types_to_quantize=list(OP_TYPES),
                per_channel=PER_CHANNEL,
                weight_type=QuantType.QInt8,
                # 7-bit weights: CPUs without VNNI (AVX2, AVX-512F) multiply uint8 x int8 pairs into saturating
                # int16 sums, and full-range weights overflow them (seen here on AVX2: 12 % encoder error, 1 %
                # with 7 bits). VNNI CPUs lose a bit of weight precision, nothing more.
                reduce_range=REDUCE_RANGE,
                use_external_data_format=True,  # always safe; save_onnx below inlines what fits
                extra_options={"MatMulConstBOnly": True},
            )
        finally:
            logging.getLogger().setLevel(quiet)
        proto = onnx.load(str(quantized), load_external_data=True)
        new_external = save_onnx(proto, target)
        del proto
    size = target.stat().st_size + ((target.parent / new_external).stat().st_size if new_external else 0)
    return {"external_data": new_external, "bytes": size, "quantization": QUANTIZATION}


def pointwise_convs_as_matmul(proto) -> int:
    """Rewrite every Conv whose kernel is all ones (group 1, stride 1, no padding or dilation, constant
    weight) as Transpose -> MatMul -> Add -> Transpose: channels moved last, multiplied, moved back.
    The same product, in a form `quantize_dynamic` quantises. Returns how many were rewritten."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = proto.graph
    weights = {init.name: init for init in graph.initializer}
    nodes, rewritten = [], 0
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        dims = list(weight.dims) if weight is not None else []
        pointwise = (
            weight is not None
            and len(dims) >= 3
            and all(d == 1 for d in dims[2:])
            and attrs.get("group", 1) == 1
            and all(v == 1 for v in attrs.get("strides", [1]))
            and all(v == 1 for v in attrs.get("dilations", [1]))
            and all(v == 0 for v in attrs.get("pads", [0]))
            and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET", b"VALID", "VALID")
        )
        if not pointwise:
            nodes.append(node)
            continue
        rank = len(dims)  # the input's rank: [batch, channels, *spatial]
        last = [0, *range(2, rank), 1]
        back = [0, rank - 1, *range(1, rank - 1)]
        name = node.name or node.output[0]
        matrix = numpy_helper.to_array(weight).reshape(dims[0], dims[1]).T.astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(matrix), f"{name}/pointwise_matrix"))
        product = f"{name}/pointwise_product"
        nodes.append(helper.make_node("Transpose", [node.input[0]], [f"{name}/channels_last"], perm=last))
        nodes.append(helper.make_node("MatMul", [f"{name}/channels_last", f"{name}/pointwise_matrix"], [product]))
        if len(node.input) > 2 and node.input[2]:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [f"{name}/pointwise_biased"]))
            product = f"{name}/pointwise_biased"
        nodes.append(helper.make_node("Transpose", [product], [node.output[0]], perm=back))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return rewritten


def quantized_op_counts(path: Path) -> dict[str, int]:
    """How many nodes of each integer op type the graph at `path` holds (load without weights)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    kinds = ("DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM")
    return {kind: sum(node.op_type == kind for node in proto.graph.node) for kind in kinds}
