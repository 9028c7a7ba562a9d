"""int8 dynamic quantisation of exported graphs (`mtasr export --int8`).

ONNX Runtime's ``quantize_dynamic``: the weights of every MatMul with a constant right-hand side
become int8 (symmetric, one scale per output channel, 7-bit range); activations are quantised to uint8 per
tensor at run time (DynamicQuantizeLinear -> MatMulInteger, which ONNX Runtime fuses into
DynamicQuantizeMatMul). Conv stays fp32: with ConvInteger the trained default encoder ran 1.5x
slower than fp32 and its error doubled. Only the encoder and the diarizer are quantised so far; the
prediction network (LSTM) and joint stay fp32, although greedy decoding calls them many times a chunk
and an int8 LSTM call was measured 5.3x faster than fp32 (0.7 % output drift): not yet done.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

QUANTIZATION = "int8-dynamic"
QUANTIZED_GRAPHS = ("encoder", "diarizer")
OP_TYPES = ("MatMul",)
PER_CHANNEL = True
REDUCE_RANGE = True


def quantization_settings() -> dict[str, Any]:
    """What the manifest records about an int8 export."""
    return {
        "scheme": QUANTIZATION,
        "graphs": list(QUANTIZED_GRAPHS),
        "op_types": list(OP_TYPES),
        "weights": f"int8 ({7 if REDUCE_RANGE else 8}-bit range), symmetric, "
        + ("per channel" if PER_CHANNEL else "per tensor"),
        "activations": "uint8, per tensor, computed at run time",
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
        if target != source:
            # quantize_dynamic writes its shape-inferred copy beside its input: keep the source's folder untouched.
            shutil.copy2(source, work / source.name)
            if external_data:
                shutil.copy2(source.parent / external_data, work / external_data)
            source = work / source.name
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
        if external_data and target == source:
            (target.parent / external_data).unlink(missing_ok=True)
        new_external = save_onnx(proto, target)
        del proto
    size = target.stat().st_size + ((target.parent / new_external).stat().st_size if new_external else 0)
    return {"external_data": new_external, "bytes": size, "quantization": QUANTIZATION}


def quantized_op_counts(path: Path) -> dict[str, int]:
    """How many nodes of each integer op type the graph at `path` holds (load without weights)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    kinds = ("DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul")
    return {kind: sum(node.op_type == kind for node in proto.graph.node) for kind in kinds}
