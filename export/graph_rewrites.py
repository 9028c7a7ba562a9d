"""Trace-time rewrites of NeMo modules: the same values in a graph that does less work.

Active only while `export_onnx` traces a graph (`graph_rewrites()`); the PyTorch model is restored
afterwards. Each rewrite was measured in ONNX Runtime on the default pair (one thread, batch 8):

- `exportable_conv_lengths`: the subsampling length rule with a true floor. The TorchScript exporter
  turns float `//` into truncating division, so an empty chunk would come out with length 1, not 0.
- `lean_subsampling_masks`: NeMo's `MaskedConvSequential` multiplies the activations by a time mask,
  expanded to every channel and feature, before *each* layer and after the last. A mask changes a
  valid output only before a layer that mixes time steps (a convolution or pooling wider than one
  step in time) and at the end: element-wise layers and 1x1 convolutions compute each step on its
  own, and what they write into padded steps is zeroed before anything reads it. Masking there
  alone, broadcast over channels and features, gives the same values bit for bit (`x * 1 == x`).
  The ASR front end's graph: 0.67x the time.
- `lean_attention_masks`: NeMo's attention masks scores with two `masked_fill`s (-10000 before the
  softmax, 0 after), which ONNX Runtime runs as broadcasting `Where`s, its slowest element-wise path.
  Adding -10000 and multiplying by the kept positions gives the same probabilities: a masked
  score's exponent lies 10000 below the row's maximum and underflows to exactly 0 either way, the
  unmasked ones are untouched, and rows with every position masked (padded queries) come out 0 as
  before. Only a masked score some 9,900 above its row's maximum could differ; none comes near.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["exportable_conv_lengths", "graph_rewrites", "lean_attention_masks", "lean_subsampling_masks"]


@contextlib.contextmanager
def exportable_conv_lengths() -> Iterator[None]:
    """Trace NeMo's subsampling length rule with a true floor (PyTorch results are unchanged)."""
    from nemo.collections.asr.parts.submodules import subsampling

    original = subsampling.calculate_conv_output_size

    def floor_lengths(input_size: torch.Tensor, kernel_size: int, stride: int, padding: tuple[int, int]):
        return torch.floor((input_size + padding[0] + padding[1] - kernel_size) / stride) + 1

    subsampling.calculate_conv_output_size = floor_lengths
    try:
        yield
    finally:
        subsampling.calculate_conv_output_size = original


_ELEMENTWISE = (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.SiLU, torch.nn.GELU, torch.nn.Identity)


def _mixes_time(layer: torch.nn.Module) -> bool:
    """Whether an output time step of `layer` reads other input time steps (dim 2 of [B, C, T, F])."""
    if isinstance(layer, torch.nn.Conv2d):
        causal = hasattr(layer, "_left_padding")  # NeMo's CausalConv2D pads time itself
        return causal or (layer.kernel_size[0], layer.stride[0], layer.padding[0]) != (1, 1, 0)
    # Anything but a known element-wise activation (pooling, unknown modules) is masked before, as NeMo does.
    return not isinstance(layer, _ELEMENTWISE)


def _time_mask(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, 1]: 1 for the valid time steps of each row of `x` [B, C, T, F]."""
    steps = torch.arange(x.shape[2], device=x.device)
    return (steps[None, :] < lengths[:, None]).to(x.dtype)[:, None, :, None]


def _lean_subsampling_forward(self, x: torch.Tensor, lengths: torch.Tensor):
    """`MaskedConvSequential.forward` without the masks that change nothing (same outputs)."""
    from nemo.collections.asr.parts.submodules import subsampling

    x = x.unsqueeze(1)  # (batch, 1, time, features)
    current_lengths = lengths.clone().float()
    for layer in self:
        if _mixes_time(layer):
            # Built from the tensor it masks: a strided convolution's output then feeds its activation
            # alone, and ONNX Runtime fuses the two (a mask built right after it kept them apart).
            x = x * _time_mask(x, current_lengths.long())
        x = layer(x)
        if hasattr(layer, "stride") and layer.stride != (1, 1):
            padding = (layer._left_padding, layer._right_padding) if hasattr(layer, "_left_padding") else layer.padding
            current_lengths = subsampling.calculate_conv_output_size(
                current_lengths, layer.kernel_size[0], layer.stride[0], padding
            )
    return x * _time_mask(x, current_lengths.long()), current_lengths.long()


@contextlib.contextmanager
def lean_subsampling_masks() -> Iterator[None]:
    """Within the block, every `MaskedConvSequential` masks only where it changes a valid output."""
    from nemo.collections.asr.parts.submodules.subsampling import MaskedConvSequential

    original = MaskedConvSequential.forward
    MaskedConvSequential.forward = _lean_subsampling_forward
    try:
        yield
    finally:
        MaskedConvSequential.forward = original


def _lean_forward_attention(self, value: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor | None):
    """NeMo's `MultiHeadAttention.forward_attention` with the masks added and multiplied, not filled."""
    from nemo.collections.asr.parts.submodules.multi_head_attention import INF_VAL

    n_batch = value.size(0)
    if mask is not None:
        mask = mask.unsqueeze(1)  # (batch, 1, time1, time2)
        attn = torch.softmax(scores + mask.to(scores.dtype) * -INF_VAL, dim=-1) * (~mask).to(scores.dtype)
    else:
        attn = torch.softmax(scores, dim=-1)
    x = torch.matmul(self.dropout(attn), value)  # (batch, head, time1, d_k)
    x = x.transpose(1, 2).reshape(n_batch, -1, self.h * self.d_k)
    return self.linear_out(x)


@contextlib.contextmanager
def lean_attention_masks() -> Iterator[None]:
    """Within the block, NeMo's conformer attention (and the subclasses that inherit it) masks by arithmetic."""
    from nemo.collections.asr.parts.submodules.multi_head_attention import MultiHeadAttention

    original = MultiHeadAttention.forward_attention
    MultiHeadAttention.forward_attention = _lean_forward_attention
    try:
        yield
    finally:
        MultiHeadAttention.forward_attention = original


@contextlib.contextmanager
def graph_rewrites() -> Iterator[None]:
    """Every rewrite above: what each graph export traces inside."""
    with exportable_conv_lengths(), lean_subsampling_masks(), lean_attention_masks():
        yield
