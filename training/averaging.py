"""Weight averaging of fine-tuned models of one lineage (a "model soup").

Two stages fine-tuned from the same start, on different draws, err in different places; the mean of their
weights is one model of the same size and cost that errs less than either (see `training.asr.ASR_RESULT`).
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["average_models"]


def average_models(paths: list[Path], out: Path) -> Path:
    """`out`: a `.nemo` whose floating-point weights are the mean of those of `paths` (one architecture); its
    config, tokenizer, integer buffers and the tensors equal in all models are the first model's. An `out` already
    written is kept (as a finished training stage is), so a rerun of the curriculum does not redo it."""
    import torch
    from nemo.core.classes.modelPT import ModelPT

    from mtasr.export.nemo_fixes import patch_fixed_normalization

    if out.is_file():
        return out
    if len(paths) < 2:
        raise ValueError(f"averaging needs at least two models, got {len(paths)}")
    patch_fixed_normalization()
    models = [ModelPT.restore_from(str(p), map_location="cpu") for p in paths]
    states = [m.state_dict() for m in models]
    for path, state in zip(paths[1:], states[1:], strict=True):
        if state.keys() != states[0].keys() or any(state[k].shape != v.shape for k, v in states[0].items()):
            raise ValueError(f"{path} is not the architecture of {paths[0]}: its weights cannot be averaged")

    def mean_of(key: str, value: torch.Tensor) -> torch.Tensor:
        # A tensor all models share (a feature window, a fixed normalisation) is kept bit for bit: the mean of
        # equal floats is not always that float.
        if not value.is_floating_point() or all(torch.equal(s[key], value) for s in states[1:]):
            return value
        return torch.stack([s[key] for s in states]).mean(dim=0)

    mean = {k: mean_of(k, v) for k, v in states[0].items()}
    models[0].load_state_dict(mean)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    models[0].save_to(str(partial))
    partial.replace(out)  # never a half-written model where a finished one is expected
    logger.info("averaged %s into %s", ", ".join(map(str, paths)), out)
    return out
