"""Rebuild `.nemo` checkpoints from an exported model repository's ONNX graphs.

The exported graphs hold every weight inference uses, so a repository whose checkpoints were lost
can give them back: build the model from the same config (the small configs of `mtasr train`),
then load each ONNX initializer into the parameter it came from. The TorchScript exporter renamed
some of them while folding constants, and this undoes those folds:

- `MatMul` weights are the transposed `Linear.weight` (found by the node's module scope);
- depthwise `Conv`s are 2-D over [B, C, 1, T] (`export.graph_rewrites`), their weights [C, 1, 1, K];
- the Sortformer's depthwise `Conv` absorbed the `BatchNorm` after it: the convolution takes the
  fused weights and the norm becomes the identity (mean 0, variance 1 - eps, scale 1, shift 0);
- `LSTM` weights are split W/R/B with ONNX's gate order (i, o, f, c) instead of PyTorch's (i, f, g, o).

The result computes what the repository computes (`mtasr export` of it reproduces the graphs; the
recovery checks it on example inputs), but it is not the training checkpoint: the norm statistics
are folded, and optimizer state is gone. `python -m mtasr.training.recover REPO OUT_DIR`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

GRAPH_ROOTS = {  # graph -> (model, prefix of its named initializers within that model's state dict)
    "pre_encoder": ("asr", "model."),  # absent from repositories whose encoder graph holds its front end
    "encoder": ("asr", "model."),
    "decoder": ("asr", ""),
    "joint": ("asr", ""),
    "diarizer": ("diarizer", "model."),
}
_ONNX_TO_TORCH_GATES = (0, 2, 3, 1)  # ONNX (i, o, f, c) blocks in PyTorch's (i, f, g, o) order


def _scope(node_name: str) -> list[str]:
    """'/encoder/layers.0/conv/depthwise_conv/Conv' -> ['encoder', 'layers.0', 'conv', 'depthwise_conv']."""
    return [s for s in node_name.split("/") if s][:-1]


def _at_boundary(name: str, part: str, start: int = 0, end: bool = False) -> int:
    """Where `part` occurs in the dotted `name` as whole components, from `start` (-1: nowhere)."""
    found = name.find(part, start)
    while found >= 0:
        before_ok = found == 0 or name[found - 1] == "."
        after = found + len(part)
        if before_ok and (after == len(name) if end else after == len(name) or name[after] == "."):
            return found
        found = name.find(part, found + 1)
    return -1


def _in_order(name: str, parts: list[str]) -> bool:
    """Every part occurs in `name` as whole components, in order (a scope part may repeat its parent's)."""
    position = 0
    for part in parts:
        position = _at_boundary(name, part, position)
        if position < 0:
            return False
    return True


def _module_for(model, scope: list[str], kind: type):
    """The one `kind` module whose qualified name ends with the scope's last part and contains the others in order."""
    matches = []
    for name, module in model.named_modules():
        if isinstance(module, kind) and _at_boundary(name, scope[-1], end=True) >= 0 and _in_order(name, scope[:-1]):
            matches.append((name, module))
    if len(matches) != 1:
        raise ValueError(f"scope {'/'.join(scope)} matches {len(matches)} {kind.__name__} modules: {matches[:3]}")
    return matches[0]


def _torch_gate_order(x: np.ndarray, hidden: int) -> np.ndarray:
    """LSTM gate blocks (rows of `hidden`) from ONNX's order to PyTorch's."""
    return np.concatenate([x[g * hidden : (g + 1) * hidden] for g in _ONNX_TO_TORCH_GATES])


def load_graph_weights(model, onnx_path: Path, prefix: str) -> set[str]:
    """Copy every initializer of the graph into `model`; return the state-dict keys it set."""
    import onnx
    import torch
    from onnx import numpy_helper

    proto = onnx.load(str(onnx_path), load_external_data=True)
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    state = model.state_dict()
    assigned: set[str] = set()

    def put(key: str, value: np.ndarray) -> None:
        if key not in state:
            raise KeyError(f"{onnx_path.name}: no parameter {key} in the model")
        if tuple(state[key].shape) != value.shape:
            raise ValueError(f"{onnx_path.name}: {key} is {tuple(state[key].shape)} in the model, {value.shape} here")
        state[key].copy_(torch.from_numpy(np.ascontiguousarray(value)))
        assigned.add(key)

    for name, value in inits.items():
        if not name.startswith("onnx::") and name.removeprefix(prefix) in state:
            put(name.removeprefix(prefix), value)
    for node in proto.graph.node:
        folded = [(i, x) for i, x in enumerate(node.input) if x.startswith("onnx::") and x in inits]
        if not folded:
            continue
        scope = _scope(node.name)
        if node.op_type == "MatMul":
            ((_, weight),) = folded
            name, _ = _module_for(model, scope, torch.nn.Linear)
            put(f"{name}.weight", inits[weight].T)
        elif node.op_type == "Conv":
            name, _ = _module_for(model, scope, torch.nn.Conv1d)
            weight = inits[node.input[1]]
            # A depthwise Conv1d is exported as a 2-D convolution over [B, C, 1, T] (export.graph_rewrites).
            put(f"{name}.weight", weight[:, :, 0, :] if weight.ndim == 4 else weight)
            if node.input[2] not in {x for _, x in folded}:
                continue  # its own bias, loaded by name: no norm was folded into it
            put(f"{name}.bias", inits[node.input[2]])
            norm = name.rsplit(".", 1)[0] + ".batch_norm"
            eps = dict(model.named_modules())[norm].eps
            size = inits[node.input[2]].shape[0]
            for key, value in (("running_mean", 0.0), ("running_var", 1.0 - eps), ("weight", 1.0), ("bias", 0.0)):
                put(f"{norm}.{key}", np.full(size, value, np.float32))
            assigned.add(f"{norm}.num_batches_tracked")
        elif node.op_type == "LSTM":
            name, lstm = _module_for(model, scope, torch.nn.LSTM)
            if lstm.num_layers != 1:
                raise ValueError("only single-layer LSTM graphs are recovered")
            w, r, b = (inits[node.input[i]][0] for i in (1, 2, 3))
            hidden = lstm.hidden_size
            put(f"{name}.weight_ih_l0", _torch_gate_order(w, hidden))
            put(f"{name}.weight_hh_l0", _torch_gate_order(r, hidden))
            put(f"{name}.bias_ih_l0", _torch_gate_order(b[: 4 * hidden], hidden))
            put(f"{name}.bias_hh_l0", _torch_gate_order(b[4 * hidden :], hidden))
        else:
            raise ValueError(f"{onnx_path.name}: no rule for a folded {node.op_type} input ({node.name})")
    model.load_state_dict(state)
    return assigned


def rebuild_models(repo: Path, tokenizer_dir: Path):
    """The (ASR, diarizer) models of the small configs with the repository's weights, in eval mode."""
    import json

    from omegaconf import open_dict

    from mtasr.export.sortformer import build_sortformer
    from mtasr.training.asr import ALL_ATT_CONTEXTS

    manifest = json.loads((repo / "manifest.json").read_text())
    asr = _build_small_asr(tokenizer_dir, _joint_has_dropout(repo / manifest["graphs"]["joint"]["file"]))
    with open_dict(asr.cfg):
        asr.cfg.encoder.att_context_size = ALL_ATT_CONTEXTS  # what the recipe trains (and the checkpoint records)
        features = manifest["asr"]["features"]
        if features.get("normalize") == "fixed":  # the statistics the recipe measured on its corpus
            normalize = {"fixed_mean": list(features["fixed_mean"]), "fixed_std": list(features["fixed_std"])}
            asr.cfg.preprocessor.normalize = normalize
            asr.preprocessor.featurizer.normalize = normalize
    diarizer = build_sortformer(
        "small", conv_norm_type=_diarizer_conv_norm(repo / manifest["graphs"]["diarizer"]["file"])
    )
    if features.get("normalize") == "fixed":  # trained on the ASR's features (training/normalization.py)
        from mtasr.training.normalization import set_normalization

        set_normalization(diarizer, normalize)
    models = {"asr": asr, "diarizer": diarizer}
    assigned: dict[str, set[str]] = {"asr": set(), "diarizer": set()}
    for graph, (which, prefix) in GRAPH_ROOTS.items():
        if graph not in manifest["graphs"]:
            continue
        entry = manifest["graphs"][graph]
        assigned[which] |= load_graph_weights(models[which], repo / entry["file"], prefix)
    for which, model in models.items():
        missing = [k for k in model.state_dict() if k not in assigned[which] and not _computed(k)]
        if missing:
            raise ValueError(f"{which}: {len(missing)} weights are in no graph: {missing[:5]}")
    return asr.eval(), diarizer.eval()


def _build_small_asr(tokenizer_dir: Path, joint_dropout: bool):
    """The small ASR model; without dropout its joint network has no Dropout module, which shifts the index of
    the joint's Linear layer that the graph's node names refer to."""
    from nemo.collections.asr.models.multitalker_asr_models import EncDecMultiTalkerRNNTBPEModel
    from omegaconf import open_dict

    from mtasr.export.asr import asr_config

    cfg = asr_config("small", tokenizer_dir)
    if not joint_dropout:
        with open_dict(cfg):
            cfg.joint.jointnet.dropout = 0.0
    return EncDecMultiTalkerRNNTBPEModel(cfg=cfg).eval()


def _joint_has_dropout(onnx_path: Path) -> bool:
    """Whether the joint network was built with a Dropout (its Linear is then `joint_net.2`, else `joint_net.1`)."""
    import onnx

    return any("joint_net.2" in node.name for node in onnx.load(str(onnx_path), load_external_data=False).graph.node)


def _diarizer_conv_norm(onnx_path: Path) -> str:
    """The norm of the diarizer's convolution modules: layer norm keeps its named weights in the graph, batch
    norm is folded into the depthwise convolution before it (earlier default pairs were trained with it)."""
    import onnx

    names = {t.name for t in onnx.load(str(onnx_path), load_external_data=False).graph.initializer}
    return "layer_norm" if any(n.endswith("conv.batch_norm.weight") for n in names) else "batch_norm"


# Defined by NeMo's SortformerModules but used by no forward pass: no graph holds it (kept as initialised).
UNUSED_WEIGHTS = ("sortformer_modules.hidden_to_spks.",)


def _computed(key: str) -> bool:
    """Buffers the model derives from its config (mel filterbank, window, position table), or unused weights."""
    return key.startswith(("preprocessor.", *UNUSED_WEIGHTS)) or key.endswith(".pe")


def recover(repo: Path, out_dir: Path) -> tuple[Path, Path]:
    """Write `out_dir/asr.nemo` and `out_dir/diarizer.nemo` rebuilt from `repo`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_dir = Path(tmp)
        for name in ("tokenizer.model", "vocab.txt"):
            (tokenizer_dir / name).write_bytes((repo / name).read_bytes())
        asr, diarizer = rebuild_models(repo, tokenizer_dir)
        asr.save_to(str(out_dir / "asr.nemo"))
    diarizer.save_to(str(out_dir / "diarizer.nemo"))
    return out_dir / "asr.nemo", out_dir / "diarizer.nemo"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtasr.training.recover", description=__doc__.splitlines()[0])
    parser.add_argument("repository", type=Path, help="an exported model repository (manifest.json and graphs)")
    parser.add_argument("output", type=Path, help="folder for asr.nemo and diarizer.nemo")
    args = parser.parse_args(argv)
    if not (args.repository / "manifest.json").is_file():
        print(f"error: {args.repository} is not an exported model repository (no manifest.json)", file=sys.stderr)
        return 2
    for path in recover(args.repository, args.output):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
