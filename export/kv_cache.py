"""An encoder channel cache of projected keys and values instead of NeMo's layer inputs.

NeMo's cache-aware attention caches each layer's *input* (the normalised frames) and, every chunk,
projects the cache and the new frames together into keys and values: with 70 cached frames and 14
new ones, five sixths of the key/value projection repeats work done on earlier chunks. Here the
cache holds the projections themselves (keys and values side by side, twice NeMo's width), so a
chunk projects only its own frames. The attention then sees the same keys and values: the same math,
in a different order of float operations.

`projected_kv_cache(model)` switches every layer's attention to this cache for the duration (the
export traces the encoder inside it); the rest of NeMo's attention code runs unchanged, only its two
helpers `update_cache` and `forward_qkv` are replaced on the instances, and restored afterwards.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Manifest values of asr.streaming.channel_cache.
INPUT_CACHE = "input"  # NeMo's: each layer's normalised input frames, d_model wide
KV_CACHE = "kv"  # each layer's projected keys and values, 2 x d_model wide
CHANNEL_CACHES = (KV_CACHE, INPUT_CACHE)


def channel_cache_width(d_model: int, channel_cache: str) -> int:
    if channel_cache not in CHANNEL_CACHES:
        raise ValueError(f"channel cache must be one of {', '.join(CHANNEL_CACHES)}, got {channel_cache!r}")
    return 2 * d_model if channel_cache == KV_CACHE else d_model


def _attention_modules(model) -> list[torch.nn.Module]:
    from nemo.collections.asr.parts.submodules.multi_head_attention import (
        MultiHeadAttention,
        RelPositionMultiHeadAttentionLongformer,
    )

    modules = [layer.self_attn for layer in model.encoder.layers]
    for attn in modules:
        # Longformer's local attention does not go through update_cache/forward_qkv.
        if not isinstance(attn, MultiHeadAttention) or isinstance(attn, RelPositionMultiHeadAttentionLongformer):
            raise ValueError(f"a projected key/value cache needs NeMo's (rel_pos) attention, not {type(attn).__name__}")
    return modules


def _update_cache(self, key, value, query, cache):
    """NeMo's `update_cache` on a cache of projected keys|values: project only the new frames."""
    import torch

    if cache is None:
        raise ValueError("the projected key/value cache is for cache-aware streaming steps only")
    d = self.h * self.d_k
    new_keys, new_values = self.linear_k(key), self.linear_v(value)
    keep = query.shape[1] - self.cache_drop_size
    next_cache = torch.cat([cache[:, keep:], torch.cat([new_keys, new_values], dim=-1)[:, :keep]], dim=1)
    keys = torch.cat([cache[:, :, :d], new_keys], dim=1)
    values = torch.cat([cache[:, :, d:], new_values], dim=1)
    return keys, values, query, next_cache


def _forward_qkv(self, query, key, value):
    """NeMo's `forward_qkv` for keys and values that are already projected."""
    n_batch = query.size(0)
    q = self.linear_q(query).view(n_batch, -1, self.h, self.d_k)
    k = key.view(n_batch, -1, self.h, self.d_k)
    v = value.view(n_batch, -1, self.h, self.d_k)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


@contextmanager
def projected_kv_cache(model) -> Iterator[None]:
    """Within the block, `model.encoder`'s channel cache is [.., 2 x d_model] of projected keys|values."""
    modules = _attention_modules(model)
    for attn in modules:
        attn.update_cache = types.MethodType(_update_cache, attn)
        attn.forward_qkv = types.MethodType(_forward_qkv, attn)
    try:
        yield
    finally:
        for attn in modules:
            del attn.update_cache, attn.forward_qkv


def project_channel_cache(model, cache: torch.Tensor) -> torch.Tensor:
    """NeMo's channel cache [N, layers, frames, d] as this module's [N, layers, frames, 2d]: each layer's
    cached inputs through its key and value projections (for tests, and to carry a stream across)."""
    import torch

    layers = []
    with torch.no_grad():
        for i, attn in enumerate(_attention_modules(model)):
            layers.append(torch.cat([attn.linear_k(cache[:, i]), attn.linear_v(cache[:, i])], dim=-1))
    return torch.stack(layers, dim=1)
