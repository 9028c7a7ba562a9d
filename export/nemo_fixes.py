"""Corrections to NeMo 3.0 that the project's NeMo runs need (training, the NeMo reference loop).

Fixed feature normalisation (`preprocessor.normalize: {fixed_mean: [...], fixed_std: [...]}`, one
value per mel bin) is the streaming-safe normalisation: it does not look at the rest of the
utterance. NeMo's `normalize_batch` reshapes the per-bin mean to `[batch, bins]`, which fails for
any batch of more than one utterance. `patch_fixed_normalization` makes it broadcast the same
values over the batch; results for a batch of one are unchanged, and so is every other mode.
"""

from __future__ import annotations

import torch

__all__ = ["patch_fixed_normalization"]


def patch_fixed_normalization() -> None:
    """Make NeMo's fixed-mean/std feature normalisation work for batches (idempotent)."""
    from nemo.collections.asr.parts.preprocessing import features

    original = features.normalize_batch
    if getattr(original, "_mtasr_fixed_batches", False):
        return

    def normalize_batch(x, seq_len, normalize_type):
        if isinstance(normalize_type, dict) or hasattr(normalize_type, "keys"):
            if "fixed_mean" in normalize_type and "fixed_std" in normalize_type:
                mean = torch.as_tensor(list(normalize_type["fixed_mean"]), dtype=x.dtype, device=x.device)
                std = torch.as_tensor(list(normalize_type["fixed_std"]), dtype=x.dtype, device=x.device)
                return (x - mean.view(1, -1, 1)) / std.view(1, -1, 1), mean, std
        return original(x, seq_len, normalize_type)

    normalize_batch._mtasr_fixed_batches = True
    features.normalize_batch = normalize_batch
