"""The multitalker ASR model (cache-aware FastConformer RNNT with speaker kernels): build and export.

Graphs written here:
- `encoder.onnx`: one cache-aware streaming step for N (stream, speaker) instances. The speaker
  target and background masks are graph inputs. NeMo applies them through forward hooks that read
  `model.spk_targets`; its own `export()` traces those attributes as constants. The wrapper sets
  them from its forward arguments, so the hooks see traced inputs and the masks stay inputs. Its
  channel cache holds projected keys and values by default (`export.kv_cache`), NeMo's layer inputs
  on request.
- `decoder.onnx`: one prediction-network step (last token + LSTM state -> output + next state).
- `joint.onnx`: the joint network for one encoder frame and one prediction output per instance.
  Split from the prediction network so greedy decoding re-runs only the joint on blank frames.

All caches and states are batch-first in the graphs (Triton batches on the first dimension), while
NeMo's `get_initial_cache_state` is layer-first.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from mtasr.export.kv_cache import INPUT_CACHE, KV_CACHE, channel_cache_width, project_channel_cache, projected_kv_cache
from mtasr.export.onnx_io import GraphSpec, export_onnx
from mtasr.graph_io import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER_INPUTS,
    ENCODER_LAYER_INPUTS,
    ENCODER_OUTPUTS,
    JOINT_INPUTS,
    JOINT_OUTPUTS,
    PRE_ENCODE_MODES,
    PRE_ENCODE_PER_STREAM,
    PRE_ENCODER_INPUTS,
    PRE_ENCODER_OUTPUTS,
)

# The right contexts (lookahead encoder frames) the released checkpoint is trained for.
RELEASED_ATT_CONTEXTS = [[70, 13], [70, 6], [70, 1], [70, 0]]


@dataclass(frozen=True)
class AsrSize:
    """Architecture knobs that differ between the tiny test model and the released geometry."""

    n_layers: int
    d_model: int
    n_heads: int
    subsampling_conv_channels: int
    pred_hidden: int
    joint_hidden: int
    pred_rnn_layers: int
    vocab_size: int


ASR_SIZES = {
    "tiny": AsrSize(2, 64, 4, 64, 64, 64, 2, 64),
    # the project's trained default (mtasr.training): fits the 60 MB repository budget, trains on CPU.
    # 512 pieces: about one piece per word of the training grammar. With 8x subsampling (12.5 encoder
    # frames a second) 128 pieces gave fewer than 2 frames per token, which RNNT and CTC learn badly.
    "small": AsrSize(6, 160, 4, 64, 192, 192, 1, 512),
    # multitalker-parakeet-streaming-0.6b-v1
    "full": AsrSize(24, 1024, 8, 256, 640, 640, 2, 1024),
    # the released geometry with one of its 24 layers: every width, head count and vocabulary as released, small
    # enough for the suite to run the full export -> serve -> parity path on it (tests/test_released_geometry.py)
    "shrunk": AsrSize(1, 1024, 8, 256, 640, 640, 2, 1024),
}


def asr_config(size: str, tokenizer_dir: Path, n_mels: int = 128) -> DictConfig:
    """A multitalker RNNT config at `size`, following NeMo's cache-aware FastConformer recipe."""
    s = ASR_SIZES[size]
    cfg = {
        "sample_rate": 16000,
        "spk_kernel_type": "ff",
        "spk_kernel_layers": [0],
        "add_bg_spk_kernel": True,
        "model_defaults": {
            "enc_hidden": s.d_model,
            "pred_hidden": s.pred_hidden,
            "joint_hidden": s.joint_hidden,
        },
        "tokenizer": {"dir": str(tokenizer_dir), "type": "bpe"},
        "train_ds": None,
        "validation_ds": None,
        "test_ds": None,
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": 16000,
            "normalize": "NA",
            "window_size": 0.025,
            "window_stride": 0.01,
            "window": "hann",
            "features": n_mels,
            "n_fft": 512,
            "frame_splicing": 1,
            "dither": 1e-5,
            "pad_to": 0,
        },
        "spec_augment": None,
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": n_mels,
            "feat_out": -1,
            "n_layers": s.n_layers,
            "d_model": s.d_model,
            "use_bias": True,
            "subsampling": "dw_striding",
            "subsampling_factor": 8,
            "subsampling_conv_channels": s.subsampling_conv_channels,
            "causal_downsampling": True,
            "ff_expansion_factor": 4,
            "self_attention_model": "rel_pos",
            "n_heads": s.n_heads,
            "att_context_size": RELEASED_ATT_CONTEXTS,
            "att_context_probs": None,
            "att_context_style": "chunked_limited",
            "xscaling": True,
            "pos_emb_max_len": 5000,
            "conv_kernel_size": 9,
            "conv_norm_type": "layer_norm",
            "conv_context_size": "causal",
            "dropout": 0.1,
            "dropout_pre_encoder": 0.1,
            "dropout_emb": 0.0,
            "dropout_att": 0.1,
        },
        "decoder": {
            "_target_": "nemo.collections.asr.modules.RNNTDecoder",
            "normalization_mode": None,
            "random_state_sampling": False,
            "blank_as_pad": True,
            "prednet": {"pred_hidden": s.pred_hidden, "pred_rnn_layers": s.pred_rnn_layers, "dropout": 0.2},
        },
        "joint": {
            "_target_": "nemo.collections.asr.modules.RNNTJoint",
            "log_softmax": None,
            "preserve_memory": False,
            "fuse_loss_wer": False,
            "jointnet": {"joint_hidden": s.joint_hidden, "activation": "relu", "dropout": 0.2},
        },
        "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 10}},
        "loss": {"loss_name": "default"},
        "optim": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.98], "weight_decay": 1e-3},
    }
    return OmegaConf.create(cfg)


def build_asr(size: str, tokenizer_dir: Path, seed: int = 0):
    """A randomly initialised multitalker ASR model (EncDecMultiTalkerRNNTBPEModel) in eval mode."""
    from nemo.collections.asr.models.multitalker_asr_models import EncDecMultiTalkerRNNTBPEModel

    torch.manual_seed(seed)
    model = EncDecMultiTalkerRNNTBPEModel(cfg=asr_config(size, tokenizer_dir))
    return model.eval()


def supported_right_contexts(model) -> list[int]:
    """Right contexts (lookahead frames) that the checkpoint's encoder was trained for."""
    return sorted({int(ctx[1]) for ctx in model.encoder.att_context_size_all})


def set_right_context(model, right_context: int) -> None:
    """Select the encoder's attention context for `right_context` and recompute its streaming geometry."""
    contexts = [list(map(int, c)) for c in model.encoder.att_context_size_all]
    matching = [c for c in contexts if c[1] == right_context]
    if not matching:
        raise ValueError(
            f"right context {right_context} is not supported by this checkpoint "
            f"(it supports {supported_right_contexts(model)})"
        )
    model.encoder.set_default_att_context_size(matching[0])
    model.encoder.setup_streaming_params()


class PreEncodeStep(torch.nn.Module):
    """The encoder's subsampling front end for one streaming chunk, the pre-encode cache's frames dropped.

    Features always come at the later chunks' length. A stream's first chunk has no pre-encode cache: it
    is right-padded (causal subsampling never looks at the padding) and drops nothing, so the drop is per
    row and every row yields the same number of frames.
    """

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        features: torch.Tensor,  # [N, n_mels, T_feat]
        feature_lengths: torch.Tensor,  # [N] int64
        drop_extra_pre_encoded: torch.Tensor,  # [N] int64: 0 on a stream's first chunk
    ):
        encoder = self.model.encoder
        x, lengths = encoder.pre_encode(x=features.transpose(1, 2), lengths=feature_lengths)
        n_out = x.shape[1] - encoder.streaming_cfg.drop_extra_pre_encoded
        index = torch.arange(n_out, device=x.device)[None, :] + drop_extra_pre_encoded[:, None]
        x = torch.gather(x, 1, index[:, :, None].expand(-1, -1, x.shape[2]))
        return x, (lengths.to(torch.int64) - drop_extra_pre_encoded).clamp(min=0)


class EncoderLayersStep(torch.nn.Module):
    """The conformer layers of one cache-aware streaming step, on pre-encoded frames, with the speaker
    kernels applied to the layer inputs (`x * mask` through the kernel, added as a residual)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        pre_encoded: torch.Tensor,  # [N, T_enc, d_model]
        pre_encoded_lengths: torch.Tensor,  # [N] int64
        cache_last_channel: torch.Tensor,  # [N, layers, cache, d_model]
        cache_last_time: torch.Tensor,  # [N, layers, d_model, conv_cache]
        cache_last_channel_len: torch.Tensor,  # [N] int64
        speaker_mask: torch.Tensor,  # [N, T_enc] target speaker activity
        background_mask: torch.Tensor,  # [N, T_enc] any other speaker active
    ):
        encoder = self.model.encoder
        self.model.set_speaker_targets(speaker_mask, background_mask)
        try:
            encoded, encoded_len, channel, time, channel_len = encoder.forward_internal(
                pre_encoded,
                pre_encoded_lengths,
                cache_last_channel=cache_last_channel.transpose(0, 1),
                cache_last_time=cache_last_time.transpose(0, 1),
                cache_last_channel_len=cache_last_channel_len,
                bypass_pre_encode=True,
            )
        finally:
            self.model.clear_speaker_targets()
        # NeMo's post-processing keeps the channel cache's last `last_channel_cache_size` frames; the
        # cache comes out of the layers that long already, and the graph would copy it whole for nothing.
        keep = encoder.streaming_cfg.last_channel_cache_size
        if keep > 0 and channel.shape[2] != keep:
            channel = channel[:, :, -keep:]
        encoded, encoded_len, _, time, channel_len = encoder.streaming_post_process(
            (encoded, encoded_len, None, time, channel_len), keep_all_outputs=False
        )
        return encoded, encoded_len, channel.transpose(0, 1), time.transpose(0, 1), channel_len


class EncoderStep(torch.nn.Module):
    """One cache-aware streaming step of the multitalker encoder, speaker masks as inputs: the front end
    and the layers in one graph, as NeMo's parallel multitalker streaming path runs them."""

    def __init__(self, model) -> None:
        super().__init__()
        self.pre_encode = PreEncodeStep(model)
        self.layers = EncoderLayersStep(model)

    def forward(
        self,
        features: torch.Tensor,
        feature_lengths: torch.Tensor,
        cache_last_channel: torch.Tensor,
        cache_last_time: torch.Tensor,
        cache_last_channel_len: torch.Tensor,
        speaker_mask: torch.Tensor,
        background_mask: torch.Tensor,
        drop_extra_pre_encoded: torch.Tensor,
    ):
        x, lengths = self.pre_encode(features, feature_lengths, drop_extra_pre_encoded)
        return self.layers(
            x, lengths, cache_last_channel, cache_last_time, cache_last_channel_len, speaker_mask, background_mask
        )


class PredictionStep(torch.nn.Module):
    """One step of the RNNT prediction network; LSTM states batch-first."""

    def __init__(self, decoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, targets: torch.Tensor, state_h: torch.Tensor, state_c: torch.Tensor):
        # targets [N, 1] int64; states [N, layers, hidden]
        state = [state_h.transpose(0, 1).contiguous(), state_c.transpose(0, 1).contiguous()]
        g, (h, c) = self.decoder.predict(targets, state=state, add_sos=False, batch_size=None)
        return g[:, 0, :], h.transpose(0, 1), c.transpose(0, 1)


class JointStep(torch.nn.Module):
    """The joint network for one encoder frame and one prediction output per instance."""

    def __init__(self, joint) -> None:
        super().__init__()
        self.joint = joint

    def forward(self, encoder_frame: torch.Tensor, prediction: torch.Tensor):
        # encoder_frame [N, d_model], prediction [N, pred_hidden] -> logits [N, vocab + 1]
        logits = self.joint.joint(encoder_frame[:, None, :], prediction[:, None, :])
        return logits[:, 0, 0, :]


def encoder_frames_table(model, max_feature_frames: int) -> list[int]:
    """Encoder frames (before any drop) that 0..max_feature_frames feature frames subsample to.

    NeMo's own length rule, so a runtime knows a chunk's valid encoder frames before running it.
    """
    from nemo.collections.asr.parts.submodules.subsampling import calc_length

    pre = model.encoder.pre_encode
    lengths = calc_length(
        torch.arange(max_feature_frames + 1),
        all_paddings=pre._left_padding + pre._right_padding,
        kernel_size=pre._kernel_size,
        stride=pre._stride,
        ceil_mode=pre._ceil_mode,
        repeat_num=pre._sampling_num,
    )
    return [max(0, int(n)) if f else 0 for f, n in enumerate(lengths.tolist())]


def streaming_geometry(model) -> dict[str, Any]:
    """Everything a streaming runtime needs to chunk features and size caches, read off the model."""
    encoder = model.encoder
    cfg = encoder.streaming_cfg

    def as_pair(value) -> list[int]:
        return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value), int(value)]

    return {
        "att_context_size": [int(v) for v in encoder.att_context_size],
        "right_context": int(encoder.att_context_size[1]),
        "supported_right_contexts": supported_right_contexts(model),
        "chunk_feature_frames": as_pair(cfg.chunk_size),  # [first chunk, later chunks]
        "shift_feature_frames": as_pair(cfg.shift_size),
        "pre_encode_cache_frames": as_pair(cfg.pre_encode_cache_size),
        "drop_extra_pre_encoded": int(cfg.drop_extra_pre_encoded),
        "valid_out_len": int(cfg.valid_out_len),
        "encoder_frames_per_chunk": int(cfg.valid_out_len),
        "last_channel_cache_size": int(cfg.last_channel_cache_size),
        "conv_cache_size": int(encoder.conv_context_size[0]),
        "n_layers": len(encoder.layers),
        "d_model": int(encoder.d_model),
        "subsampling_factor": int(encoder.subsampling_factor),
        "feature_stride_s": float(model.cfg.preprocessor.window_stride),
        "encoder_frame_s": float(model.cfg.preprocessor.window_stride) * int(encoder.subsampling_factor),
        "encoder_frames_by_feature_frames": encoder_frames_table(
            model, as_pair(cfg.chunk_size)[1] + as_pair(cfg.pre_encode_cache_size)[1]
        ),
    }


def decoder_geometry(model) -> dict[str, Any]:
    decoder = model.decoder
    return {
        "blank_id": int(decoder.blank_idx),
        "vocab_size": int(decoder.vocab_size),
        "pred_hidden": int(decoder.pred_hidden),
        "pred_rnn_layers": int(decoder.pred_rnn_layers),
        "max_symbols_per_step": int(model.cfg.decoding.greedy.get("max_symbols", 10) or 10),
        "speaker_kernel_layers": [int(i) for i in model.spk_kernel_layers],
    }


def example_encoder_inputs(
    model, batch: int, first_chunk: bool, seed: int = 0, channel_cache: str = INPUT_CACHE
) -> dict[str, torch.Tensor]:
    """Random but well-formed encoder inputs (caches partly filled) for tracing and parity checks.

    Features have the later chunks' length; a first chunk is right-padded, its true length in
    `feature_lengths`, as the server feeds it. With `channel_cache` "kv", the same random channel cache
    projected into keys and values (`export.kv_cache`).
    """
    g = torch.Generator().manual_seed(seed)
    geo = streaming_geometry(model)
    idx = 0 if first_chunk else 1
    n_feat = geo["chunk_feature_frames"][idx] + geo["pre_encode_cache_frames"][idx]
    n_padded = geo["chunk_feature_frames"][1] + geo["pre_encode_cache_frames"][1]
    t_enc = geo["encoder_frames_per_chunk"]
    n_mels = int(model.cfg.preprocessor.features)
    channel, time, channel_len = model.encoder.get_initial_cache_state(batch_size=batch)
    channel_len = torch.randint(0, geo["last_channel_cache_size"] + 1, (batch,), generator=g)
    channel = torch.randn(channel.shape, generator=g).transpose(0, 1).contiguous()
    time = torch.randn(time.shape, generator=g).transpose(0, 1).contiguous()
    if channel_cache == KV_CACHE:
        channel = project_channel_cache(model, channel)
    return {
        "features": torch.nn.functional.pad(
            torch.randn(batch, n_mels, n_feat, generator=g) * 2 - 8, (0, n_padded - n_feat), value=0.0
        ),
        "feature_lengths": torch.full((batch,), n_feat, dtype=torch.int64),
        "cache_last_channel": channel,
        "cache_last_time": time,
        "cache_last_channel_len": channel_len,
        "speaker_mask": torch.rand(batch, t_enc, generator=g),
        "background_mask": (torch.rand(batch, t_enc, generator=g) > 0.5).float(),
        "drop_extra_pre_encoded": torch.full((batch,), 0 if first_chunk else geo["drop_extra_pre_encoded"]),
    }


_INSTANCE_AXES = {
    "cache_last_channel": {0: "N"},
    "cache_last_time": {0: "N"},
    "cache_last_channel_len": {0: "N"},
    "speaker_mask": {0: "N", 1: "T_enc"},
    "background_mask": {0: "N", 1: "T_enc"},
    "encoded": {0: "N", 2: "T_out"},
    "encoded_lengths": {0: "N"},
    "next_cache_last_channel": {0: "N"},
    "next_cache_last_time": {0: "N"},
    "next_cache_last_channel_len": {0: "N"},
}
_FEATURE_AXES = {"features": {0: "N", 2: "T_feat"}, "feature_lengths": {0: "N"}, "drop_extra_pre_encoded": {0: "N"}}
_PRE_ENCODED_AXES = {"pre_encoded": {0: "N", 1: "T_enc"}, "pre_encoded_lengths": {0: "N"}}
ENCODER_SPEC = GraphSpec(
    file="encoder.onnx",
    inputs=list(ENCODER_INPUTS),
    outputs=list(ENCODER_OUTPUTS),
    dynamic_axes={**_FEATURE_AXES, **_INSTANCE_AXES},
)
PRE_ENCODER_SPEC = GraphSpec(
    file="pre_encoder.onnx",
    inputs=list(PRE_ENCODER_INPUTS),
    outputs=list(PRE_ENCODER_OUTPUTS),
    dynamic_axes={**_FEATURE_AXES, **_PRE_ENCODED_AXES},
)
ENCODER_LAYERS_SPEC = GraphSpec(
    file="encoder.onnx",
    inputs=list(ENCODER_LAYER_INPUTS),
    outputs=list(ENCODER_OUTPUTS),
    dynamic_axes={**_PRE_ENCODED_AXES, **_INSTANCE_AXES},
)

DECODER_SPEC = GraphSpec(
    file="decoder.onnx",
    inputs=list(DECODER_INPUTS),
    outputs=list(DECODER_OUTPUTS),
    dynamic_axes={name: {0: "N"} for name in DECODER_INPUTS + DECODER_OUTPUTS},
)

JOINT_SPEC = GraphSpec(
    file="joint.onnx",
    inputs=list(JOINT_INPUTS),
    outputs=list(JOINT_OUTPUTS),
    dynamic_axes={"encoder_frame": {0: "N"}, "prediction": {0: "N"}, "logits": {0: "N"}},
)


def example_decoder_inputs(model, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    geo = decoder_geometry(model)
    shape = (batch, geo["pred_rnn_layers"], geo["pred_hidden"])
    return {
        # blank doubles as the start-of-sequence token (blank_as_pad): include it
        "targets": torch.tensor([[geo["blank_id"]]] + [[i % geo["vocab_size"]] for i in range(batch - 1)]),
        "state_h": torch.randn(shape, generator=g) * 0.5,
        "state_c": torch.randn(shape, generator=g) * 0.5,
    }


def example_joint_inputs(model, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "encoder_frame": torch.randn(batch, int(model.encoder.d_model), generator=g),
        "prediction": torch.randn(batch, int(model.decoder.pred_hidden), generator=g),
    }


def pre_encoded_example(model, example: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder layers' inputs for an `example_encoder_inputs` example: its features pre-encoded."""
    with torch.no_grad():
        pre_encoded = PreEncodeStep(model).eval()(*(example[name] for name in PRE_ENCODER_INPUTS))
    return {**dict(zip(PRE_ENCODER_OUTPUTS, pre_encoded, strict=True)), **example}


def export_asr(
    model,
    out_dir: Path,
    right_context: int,
    opset: int = 17,
    channel_cache: str = KV_CACHE,
    pre_encode: str = PRE_ENCODE_PER_STREAM,
    graph_rewrites: bool = True,
) -> dict[str, Any]:
    """Export the encoder, prediction network and joint for `right_context`; return their manifest entries.

    `channel_cache`: "kv" (projected keys and values, `export.kv_cache`) or "input" (NeMo's).
    `pre_encode`: "stream" (a `pre_encoder` graph for the subsampling front end, run once per stream, and the
    layers in `encoder`) or "speaker" (both in `encoder`, run per speaker instance, as NeMo runs them).
    `graph_rewrites`: trace with `export.graph_rewrites` (False: NeMo's modules as they are, for comparisons)."""
    if pre_encode not in PRE_ENCODE_MODES:
        raise ValueError(f"pre_encode must be one of {', '.join(PRE_ENCODE_MODES)}, got {pre_encode!r}")
    set_right_context(model, right_context)
    model.eval()
    example = example_encoder_inputs(model, 2, False, channel_cache=channel_cache)
    graphs = {}
    export = partial(export_onnx, out_dir=out_dir, opset=opset, rewrites=graph_rewrites)
    with projected_kv_cache(model) if channel_cache == KV_CACHE else nullcontext():
        if pre_encode == PRE_ENCODE_PER_STREAM:
            graphs["pre_encoder"] = export(PreEncodeStep(model).eval(), example, PRE_ENCODER_SPEC)
            layers_example = pre_encoded_example(model, example)
            graphs["encoder"] = export(EncoderLayersStep(model).eval(), layers_example, ENCODER_LAYERS_SPEC)
        else:
            graphs["encoder"] = export(EncoderStep(model).eval(), example, ENCODER_SPEC)
    streaming = streaming_geometry(model)
    streaming["channel_cache"] = channel_cache
    streaming["channel_cache_width"] = channel_cache_width(streaming["d_model"], channel_cache)
    graphs["decoder"] = export(PredictionStep(model.decoder).eval(), example_decoder_inputs(model, 2), DECODER_SPEC)
    graphs["joint"] = export(JointStep(model.joint).eval(), example_joint_inputs(model, 2), JOINT_SPEC)
    return {"graphs": graphs, "streaming": streaming, "decoding": decoder_geometry(model)}
