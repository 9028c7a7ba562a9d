"""The trace-time rewrites (`export.graph_rewrites`) compute NeMo's values, in PyTorch itself: bit for bit, or within
float rounding where another kernel sums in another order."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from mtasr.export import asr
from mtasr.export.graph_rewrites import (
    depthwise_convolutions_as_2d,
    layer_caches_stacked_batch_first,
    lean_attention_masks,
    lean_subsampling_masks,
)
from mtasr.export.sortformer import build_sortformer


@pytest.fixture(scope="module")
def models(tiny_tokenizer_dir):
    return {
        "asr": asr.build_asr("tiny", tiny_tokenizer_dir, seed=3).eval(),
        "diarizer": build_sortformer("tiny", seed=4).eval(),
    }


@pytest.mark.parametrize("name", ["asr", "diarizer"])
@pytest.mark.parametrize("frames", [9, 17, 121])
def test_subsampling_with_lean_masks_equals_nemos_for_every_length(models, name, frames):
    """Rows of full, one-short, half, one and no valid frames: the same encodings and lengths, bit for bit."""
    pre_encode = models[name].encoder.pre_encode
    torch.manual_seed(frames)
    x = torch.randn(5, frames, models[name].cfg.preprocessor.features) * 3
    lengths = torch.tensor([frames, frames - 1, frames // 2, 1, 0])
    with torch.no_grad():
        want, want_lengths = pre_encode(x=x, lengths=lengths)
        with lean_subsampling_masks():
            got, got_lengths = pre_encode(x=x, lengths=lengths)
    assert torch.equal(got_lengths, want_lengths)
    assert torch.equal(got, want)


def test_attention_with_lean_masks_equals_nemos_with_padded_rows_and_keys(models):
    """Padded keys get no weight and padded queries come out as NeMo writes them: the same outputs, bit for bit."""
    attention = models["asr"].encoder.layers[0].self_attn
    torch.manual_seed(0)
    batch, frames = 3, 12
    x = torch.randn(batch, frames, attention.h * attention.d_k)
    valid = torch.tensor([12, 7, 0])
    padded = torch.arange(frames)[None, :] >= valid[:, None]
    mask = padded[:, None, :] | padded[:, :, None]  # NeMo's: True where a query or a key is padding
    pos_emb = torch.randn(1, 2 * frames - 1, attention.h * attention.d_k)
    nemos = type(attention).forward_attention
    with torch.no_grad():
        want = attention(x, x, x, mask, pos_emb=pos_emb)
        with lean_attention_masks():
            assert type(attention).forward_attention is not nemos
            got = attention(x, x, x, mask, pos_emb=pos_emb)
    assert torch.equal(got, want)
    assert type(attention).forward_attention is nemos  # NeMo's again after the block


@pytest.mark.parametrize("name", ["asr", "diarizer"])
def test_depthwise_convolutions_as_2d_equal_nemos_within_float_rounding(models, name):
    """The conformer convolution module with its depthwise convolution over [B, C, 1, T]: NeMo's outputs within
    1e-6; the model's other convolutions (pointwise, the front end's) are not touched."""
    module = models[name].encoder.layers[0].conv
    torch.manual_seed(1)
    x = torch.randn(3, 23, module.pointwise_conv1.in_channels)
    pad_mask = torch.arange(23)[None, :] >= torch.tensor([23, 15, 4])[:, None]
    conv2d = torch.nn.functional.conv2d
    with torch.no_grad(), mock.patch("torch.nn.functional.conv2d", wraps=conv2d) as conv2d_calls:
        want = module(x, pad_mask=pad_mask)
        assert conv2d_calls.call_count == 0
        with depthwise_convolutions_as_2d():
            got = module(x, pad_mask=pad_mask)
            assert conv2d_calls.call_count == 1  # the depthwise convolution, and only it
    assert (got - want).abs().max() <= 1e-6


def test_layer_caches_stacked_batch_first_give_the_same_encoder_step(models):
    """One cache-aware encoder step with the layers' next caches stacked along dim 1 and viewed layer-first:
    every output, the caches included, bit for bit."""
    model = models["asr"]
    inputs = asr.example_encoder_inputs(model, 3, first_chunk=False, seed=5)
    step = asr.EncoderStep(model).eval()
    args = [inputs[name] for name in asr.ENCODER_SPEC.inputs]
    with torch.no_grad():
        want = step(*args)
        with layer_caches_stacked_batch_first():
            got = step(*args)
    for name, g, w in zip(asr.ENCODER_SPEC.outputs, got, want, strict=True):
        assert torch.equal(g, w), name
