"""The trace-time rewrites (`export.graph_rewrites`) compute NeMo's values bit for bit, in PyTorch itself."""

from __future__ import annotations

import pytest
import torch

from mtasr.export import asr
from mtasr.export.graph_rewrites import lean_attention_masks, lean_subsampling_masks
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
