"""Trace-time rewrites of NeMo modules: the same values (or within float rounding) in a graph that does less work.

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
  The ASR front end's graph: 0.65x the time.
- `lean_attention_masks`: NeMo's attention masks scores with two `masked_fill`s (-10000 before the
  softmax, 0 after), which ONNX Runtime runs as broadcasting `Where`s, its slowest element-wise path.
  Adding -10000 and multiplying by the kept positions gives the same probabilities: a masked
  score's exponent lies 10000 below the row's maximum and underflows to exactly 0 either way, the
  unmasked ones are untouched, and rows with every position masked (padded queries) come out 0 as
  before. Only a masked score some 9,900 above its row's maximum could differ; none comes near.
- `depthwise_convolutions_as_2d`: the conformer convolution module's depthwise `Conv1d` traced as the
  same convolution over [B, C, 1, T]. ONNX Runtime has a fast depthwise kernel for 2-D convolutions
  only; a 1-D one runs channel by channel (9 taps over 160 channels and 22 frames: 0.78 ms as 1-D,
  0.085 ms as 2-D). Not bit for bit (another kernel sums the taps in another order): within 5e-7.
- `layer_caches_stacked_batch_first`: NeMo stacks its layers' next caches layer-first and the graph hands
  them out batch-first; stacked along dim 1 instead (and viewed layer-first, the same tensor), the export's
  transpose back cancels and the whole cache is copied once, not twice. Bit for bit.
Together, on the default pair's encoder graph (21 speaker rows): 0.87x the time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = [
    "depthwise_convolutions_as_2d",
    "exportable_conv_lengths",
    "graph_rewrites",
    "layer_caches_stacked_batch_first",
    "lean_attention_masks",
    "lean_subsampling_masks",
]


@contextlib.contextmanager
def _replaced(owner: object, name: str, value: object) -> Iterator[None]:
    """`owner.name` is `value` within the block, and what it was again after it."""
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _floor_lengths(input_size: torch.Tensor, kernel_size: int, stride: int, padding: tuple[int, int]):
    return torch.floor((input_size + padding[0] + padding[1] - kernel_size) / stride) + 1


def exportable_conv_lengths() -> contextlib.AbstractContextManager[None]:
    """Trace NeMo's subsampling length rule with a true floor (PyTorch results are unchanged)."""
    from nemo.collections.asr.parts.submodules import subsampling

    return _replaced(subsampling, "calculate_conv_output_size", _floor_lengths)


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


def lean_subsampling_masks() -> contextlib.AbstractContextManager[None]:
    """Within the block, every `MaskedConvSequential` masks only where it changes a valid output."""
    from nemo.collections.asr.parts.submodules.subsampling import MaskedConvSequential

    return _replaced(MaskedConvSequential, "forward", _lean_subsampling_forward)


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


def lean_attention_masks() -> contextlib.AbstractContextManager[None]:
    """Within the block, NeMo's conformer attention (and the subclasses that inherit it) masks by arithmetic."""
    from nemo.collections.asr.parts.submodules.multi_head_attention import MultiHeadAttention

    return _replaced(MultiHeadAttention, "forward_attention", _lean_forward_attention)


def _depthwise_conv1d_as_2d(original):
    def conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.groups == 1 or self.groups != self.in_channels or self.padding_mode != "zeros":
            return original(self, x, weight, bias)
        padding = self.padding if isinstance(self.padding, str) else (0, self.padding[0])
        stride, dilation = (1, self.stride[0]), (1, self.dilation[0])
        y = torch.nn.functional.conv2d(
            x.unsqueeze(2), weight.unsqueeze(2), bias, stride, padding, dilation, self.groups
        )
        return y.squeeze(2)

    return conv_forward


def depthwise_convolutions_as_2d() -> contextlib.AbstractContextManager[None]:
    """Within the block, a depthwise `Conv1d` runs as the same convolution over [B, C, 1, T]."""
    return _replaced(torch.nn.Conv1d, "_conv_forward", _depthwise_conv1d_as_2d(torch.nn.Conv1d._conv_forward))


class _TorchStackingBatchFirst:
    """`torch` for NeMo's conformer encoder module, but `stack(tensors, dim=0)` built as `stack(tensors, 1)`
    seen through `transpose(0, 1)`: the same tensor (a view of it)."""

    def __getattr__(self, name: str):
        return getattr(torch, name)

    @staticmethod
    def stack(tensors, dim: int = 0, *, out=None):
        if dim != 0 or out is not None or tensors[0].dim() == 0:
            return torch.stack(tensors, dim, out=out)
        return torch.stack(tensors, 1).transpose(0, 1)


def layer_caches_stacked_batch_first() -> contextlib.AbstractContextManager[None]:
    """Within the block, the conformer encoder stacks its layers' next caches along a second dimension.

    NeMo stacks them layer-first ([layers, N, ...]) and the graph hands them out batch-first, so the export
    traced a stack and then a transpose of the whole cache. Stacked along dim 1 and viewed layer-first,
    the export's own transpose back cancels out: one copy of the cache instead of two."""
    from nemo.collections.asr.modules import conformer_encoder

    return _replaced(conformer_encoder, "torch", _TorchStackingBatchFirst())


@contextlib.contextmanager
def graph_rewrites() -> Iterator[None]:
    """Every rewrite above: what each graph export traces inside."""
    with (
        exportable_conv_lengths(),
        lean_subsampling_masks(),
        lean_attention_masks(),
        depthwise_convolutions_as_2d(),
        layer_caches_stacked_batch_first(),
    ):
        yield
