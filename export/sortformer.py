"""Streaming Sortformer diarizer: NeMo model -> one ONNX "core" graph + the geometry for the numpy update.

The exported core is the model half of NeMo's ``forward_streaming_step`` as the multitalker streaming
inference calls it: pre-encode the chunk, drop its ``drop_extra_pre_encoded`` first frames, splice
[speaker cache | FIFO | chunk] per stream (each part with its own valid length), run the
FastConformer + Transformer and the sigmoid head. The cache/FIFO update between chunks lives in
numpy (:mod:`mtasr.sortformer_state`), so the graph is stateless and batches streams freely.

Chunks are the ASR encoder's: NeMo feeds the diarizer the ASR model's ``CacheAwareStreamingAudioBuffer``
chunks (first: ``chunk_size[0]`` frames, drop 0; later: ``pre_encode_cache_size[1]`` cached +
``chunk_size[1]`` new frames, drop ``streaming_cfg.drop_extra_pre_encoded``; no left/right offsets), so
the diarizer's own chunk_len/left/right context settings play no part. The graph takes every row at the
later-chunk width with a per-row drop, like the ASR encoder graph: a first chunk is right-padded (the
masked pre-encode never looks past a row's length) and drops nothing, so it batches with later chunks
and every row yields the same number of frames.

Facts learned:
- ``forward_streaming_step`` picks ``streaming_update_async`` when ``cfg.async_streaming`` is true and
  the sync ``streaming_update`` otherwise. NeMo's multitalker streaming inference initialises the
  diarizer state with ``init_streaming_state(batch_size)`` (the sync layout: no per-stream lengths), so
  it runs only with ``async_streaming`` false, the released checkpoints' setting; the configs here set
  it false too, and the geometry records it so the numpy update picks the matching variant. Per
  stream (unpadded chunks, no offsets) the two differ only at the first speaker-cache compression:
  sync scores the cached frames with that step's predictions over them, async with the predictions
  they had when they left the FIFO (its "first compression" branch is dead code: spkcache_preds start
  at 0, not negative).
- The TorchScript ONNX exporter turns float ``//`` into Div+Cast (truncation): NeMo's MaskedConvSequential
  length rule ``(L + 2 - 3) // 2 + 1`` then gives 1 instead of 0 for an empty chunk (a stream that has
  ended), so export patches that helper with an explicit floor (same values in PyTorch).
- The spliced sequence here is always S+F+T long (NeMo's is max(total length)); frames past a
  stream's total length are masked inside the encoders and come out as zero predictions, so the
  valid frames are the same and the output shape does not depend on data.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from mtasr.export.onnx_io import GraphSpec, export_onnx
from mtasr.sortformer_state import (
    CHUNK,
    CHUNK_LENGTHS,
    CHUNK_PRE_ENCODE_EMBS,
    CHUNK_PRE_ENCODE_LENGTHS,
    DROP_EXTRA_PRE_ENCODED,
    FIFO,
    FIFO_LENGTHS,
    SPKCACHE,
    SPKCACHE_FIFO_CHUNK_PREDS,
    SPKCACHE_LENGTHS,
)

ONNX_FILE = "sortformer.onnx"
INPUT_NAMES = (CHUNK, CHUNK_LENGTHS, SPKCACHE, SPKCACHE_LENGTHS, FIFO, FIFO_LENGTHS, DROP_EXTRA_PRE_ENCODED)
OUTPUT_NAMES = (SPKCACHE_FIFO_CHUNK_PREDS, CHUNK_PRE_ENCODE_EMBS, CHUNK_PRE_ENCODE_LENGTHS)

# The chunk width is fixed at export (the ASR's later-chunk length), so the chunk frames are too.
DYNAMIC_AXES = {
    CHUNK: {0: "batch"},
    CHUNK_LENGTHS: {0: "batch"},
    SPKCACHE: {0: "batch", 1: "spkcache_frames"},
    SPKCACHE_LENGTHS: {0: "batch"},
    FIFO: {0: "batch", 1: "fifo_frames"},
    FIFO_LENGTHS: {0: "batch"},
    DROP_EXTRA_PRE_ENCODED: {0: "batch"},
    SPKCACHE_FIFO_CHUNK_PREDS: {0: "batch", 1: "total_frames"},
    CHUNK_PRE_ENCODE_EMBS: {0: "batch"},
    CHUNK_PRE_ENCODE_LENGTHS: {0: "batch"},
}

# Streaming parameters copied from SortformerModules into the geometry dict (all used by the update).
# chunk_len and the chunk contexts are not: the chunks are the ASR's (NeMo's multitalker inference sets
# them to 0).
STREAMING_KEYS = (
    "spkcache_len",
    "fifo_len",
    "spkcache_update_period",
    "spkcache_sil_frames_per_spk",
    "pred_score_threshold",
    "max_index",
    "scores_boost_latest",
    "sil_threshold",
    "strong_boost_rate",
    "weak_boost_rate",
    "min_pos_scores_rate",
    "causal_attn_rc",
)

# Released diar_streaming_sortformer_4spk-v2 geometry (NeMo's streaming_sortformer_diarizer_4spk-v2.yaml),
# except fifo_len 188 instead of the training yaml's 0: the inference setting this project serves.
_SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "fc_d_model": 512,
        "tf_d_model": 192,
        "fc_layers": 17,
        "fc_heads": 8,
        "subsampling_conv_channels": 256,
        "tf_layers": 18,
        "tf_inner": 768,
        "tf_heads": 8,
        "streaming": {
            "spkcache_len": 188,
            "fifo_len": 188,
            "chunk_len": 188,
            "spkcache_update_period": 188,
            "chunk_left_context": 1,
            "chunk_right_context": 1,
        },
    },
    # The project's trained default (training.diarizer): 1.9 M parameters (~8 MB ONNX), trains on 2 CPU cores.
    # 32 subsampling channels: at 64 the full-resolution convolutions of the subsampling took ~40 % longer
    # per training step for 4 % more parameters. Streaming geometry: the released low-latency setting at half
    # size (spkcache = fifo, update period ~3/4 of the FIFO, here 5 chunks); chunk_len = the 1.12 s ASR chunk
    # (14 frames) it is served on.
    "small": {
        "fc_d_model": 128,
        "tf_d_model": 128,
        "fc_layers": 4,
        "fc_heads": 4,
        "subsampling_conv_channels": 32,
        "tf_layers": 2,
        "tf_inner": 256,
        "tf_heads": 4,
        # The relative-position table (2 L - 1 rows of d_model) is a constant of the ONNX graph: 5000 would add
        # 5 MB for a graph that only sees spkcache + fifo + chunk = 202 frames (NeMo extends it when needed).
        "pos_emb_max_len": 512,
        # Layer norm in the convolution modules: trained as served (chunk by chunk, the speaker cache and FIFO
        # spliced in front, padded), batch norm's running statistics include the padding and did not match
        # its batch statistics (a memorised mixture: F1 1.0 in training mode, 0.87-0.91 in eval mode).
        "conv_norm_type": "layer_norm",
        "streaming": {
            "spkcache_len": 94,
            "fifo_len": 94,
            "chunk_len": 14,
            "spkcache_update_period": 70,
            "chunk_left_context": 1,
            "chunk_right_context": 1,
        },
    },
    # Small enough for CPU tests; cache/FIFO small so a ~20 s stream compresses the cache many times.
    "tiny": {
        "fc_d_model": 64,
        "tf_d_model": 32,  # != fc_d_model, so the encoder_proj path of the full model is exercised
        "fc_layers": 2,
        "fc_heads": 4,
        "subsampling_conv_channels": 32,
        "tf_layers": 2,
        "tf_inner": 64,
        "tf_heads": 4,
        "streaming": {
            "spkcache_len": 24,
            "fifo_len": 24,
            "chunk_len": 8,
            "spkcache_update_period": 8,
            "chunk_left_context": 1,
            "chunk_right_context": 1,
        },
    },
}


# The released geometry with one layer of each stack: the suite's stand-in for the released checkpoint.
_SIZES["shrunk"] = {**_SIZES["full"], "fc_layers": 1, "tf_layers": 1}


def sortformer_config(
    size: str, streaming: dict[str, Any] | None = None, conv_norm_type: str | None = None
) -> DictConfig:
    """SortformerEncLabelModel config ("tiny", "small", "shrunk" or "full"); ``streaming`` overrides
    sortformer_modules keys, ``conv_norm_type`` the size's norm in the convolution modules."""
    if size not in _SIZES:
        raise ValueError(f"unknown Sortformer size {size!r}; expected one of {sorted(_SIZES)}")
    g = copy.deepcopy(_SIZES[size])
    stream = {**g["streaming"], **(streaming or {})}
    n_spk = 4
    cfg = {
        "sample_rate": 16000,
        "pil_weight": 0.5,
        "ats_weight": 0.5,
        "max_num_of_spks": n_spk,
        "streaming_mode": True,
        "async_streaming": False,  # as released; NeMo's multitalker inference needs the sync layout
        "model_defaults": {"fc_d_model": g["fc_d_model"], "tf_d_model": g["tf_d_model"]},
        "train_ds": None,
        "validation_ds": None,
        "test_ds": None,
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "normalize": "NA",
            "window_size": 0.025,
            "sample_rate": 16000,
            "window_stride": 0.01,
            "window": "hann",
            "features": 128,
            "n_fft": 512,
            "frame_splicing": 1,
            "dither": 0.00001,
        },
        "sortformer_modules": {
            "_target_": "nemo.collections.asr.modules.sortformer_modules.SortformerModules",
            "num_spks": n_spk,
            "dropout_rate": 0.5,
            "fc_d_model": g["fc_d_model"],
            "tf_d_model": g["tf_d_model"],
            **stream,
            "spkcache_sil_frames_per_spk": 3,
            "scores_add_rnd": 0,
            "pred_score_threshold": 0.25,
            "max_index": 99999,
            "scores_boost_latest": 0.05,
            "sil_threshold": 0.2,
            "strong_boost_rate": 0.75,
            "weak_boost_rate": 1.5,
            "min_pos_scores_rate": 0.5,
            "causal_attn_rate": 0.5,
            "causal_attn_rc": 7,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": 128,
            "feat_out": -1,
            "n_layers": g["fc_layers"],
            "d_model": g["fc_d_model"],
            "subsampling": "dw_striding",
            "subsampling_factor": 8,
            "subsampling_conv_channels": g["subsampling_conv_channels"],
            "causal_downsampling": False,
            "ff_expansion_factor": 4,
            "self_attention_model": "rel_pos",
            "n_heads": g["fc_heads"],
            "att_context_size": [-1, -1],
            "att_context_style": "regular",
            "xscaling": True,
            "untie_biases": True,
            "pos_emb_max_len": g.get("pos_emb_max_len", 5000),
            "conv_kernel_size": 9,
            "conv_norm_type": conv_norm_type or g.get("conv_norm_type", "batch_norm"),
            "conv_context_size": None,
            "dropout": 0.1,
            "dropout_pre_encoder": 0.1,
            "dropout_emb": 0.0,
            "dropout_att": 0.1,
            "stochastic_depth_drop_prob": 0.0,
            "stochastic_depth_mode": "linear",
            "stochastic_depth_start_layer": 1,
        },
        "transformer_encoder": {
            "_target_": "nemo.collections.asr.modules.transformer.transformer_encoders.TransformerEncoder",
            "num_layers": g["tf_layers"],
            "hidden_size": g["tf_d_model"],
            "inner_size": g["tf_inner"],
            "num_attention_heads": g["tf_heads"],
            "attn_score_dropout": 0.5,
            "attn_layer_dropout": 0.5,
            "ffn_dropout": 0.5,
            "hidden_act": "relu",
            "pre_ln": False,
            "pre_ln_final_layer_norm": True,
        },
        "loss": {
            "_target_": "nemo.collections.asr.losses.bce_loss.BCELoss",
            "weight": None,
            "reduction": "mean",
        },
        "optim": {"name": "adamw", "lr": 1e-4, "betas": [0.9, 0.98], "weight_decay": 1e-3},
    }
    return OmegaConf.create(cfg)


def build_sortformer(
    size: str, seed: int = 0, streaming: dict[str, Any] | None = None, conv_norm_type: str | None = None
) -> torch.nn.Module:
    """A randomly initialised SortformerEncLabelModel in eval mode (no datasets, no trainer)."""
    from nemo.collections.asr.models import SortformerEncLabelModel

    torch.manual_seed(seed)
    model = SortformerEncLabelModel(cfg=sortformer_config(size, streaming, conv_norm_type))
    return model.eval()


class SortformerCore(torch.nn.Module):
    """NeMo's ``forward_streaming_step`` up to the predictions, per-row drop, vectorised exportable splice.

    Inputs: chunk [B, T_feat, n_mels] (time-major, T_feat = ``chunk_feature_frames``, rows right-padded),
    chunk_lengths [B], spkcache [B, S, D], spkcache_lengths [B], fifo [B, F, D], fifo_lengths [B]
    (D = FastConformer d_model, i.e. pre-encode embeddings), drop_extra_pre_encoded [B] (0 on a stream's
    first chunk, the streaming drop on later ones). Outputs: preds [B, S+F+T, n_spk] (frame i of a stream
    is valid for i < its spkcache_len+fifo_len+chunk_len, zero after), chunk pre-encode embeddings
    [B, T, D] after the drop (T = pre-encoded frames of T_feat minus the streaming drop) and their lengths
    (valid frames, clamped to [0, T]; frames past them are meaningless).
    """

    def __init__(self, model: torch.nn.Module, drop_extra_pre_encoded: int) -> None:
        super().__init__()
        self.model = model
        self.streaming_drop = int(drop_extra_pre_encoded)
        self.eval()

    @staticmethod
    def splice(
        spkcache: torch.Tensor,
        spkcache_lengths: torch.Tensor,
        fifo: torch.Tensor,
        fifo_lengths: torch.Tensor,
        chunk: torch.Tensor,
        chunk_lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per stream: spkcache[:spkcache_len], fifo[:fifo_len], chunk[:chunk_len], then zeros."""
        s, f = spkcache.shape[1], fifo.shape[1]
        stacked = torch.cat([spkcache, fifo, chunk], dim=1)  # [B, N, D], N = S + F + T
        n = stacked.shape[1]
        pos = torch.arange(n, device=stacked.device).unsqueeze(0)  # [1, N]
        sl, fl, cl = spkcache_lengths.unsqueeze(1), fifo_lengths.unsqueeze(1), chunk_lengths.unsqueeze(1)
        in_fifo = pos >= sl
        in_chunk = pos >= sl + fl
        total = sl + fl + cl
        # Source index into `stacked` for each output position (spkcache part: itself).
        src = torch.where(in_chunk, pos - sl - fl + (s + f), torch.where(in_fifo, pos - sl + s, pos))
        valid = pos < total
        src = torch.where(valid, src, torch.zeros_like(src))
        out = torch.gather(stacked, 1, src.unsqueeze(-1).expand(-1, -1, stacked.shape[2]))
        out = out * valid.unsqueeze(-1).to(out.dtype)
        return out, total.squeeze(1)

    def pre_encode(
        self, chunk: torch.Tensor, chunk_lengths: torch.Tensor, drop_extra_pre_encoded: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-encode, then drop each row's first drop_extra_pre_encoded frames (same width for every row)."""
        embs, lengths = self.model.encoder.pre_encode(x=chunk, lengths=chunk_lengths)
        n_out = embs.shape[1] - self.streaming_drop
        drop = drop_extra_pre_encoded.to(torch.int64)
        index = torch.arange(n_out, device=embs.device)[None, :] + drop[:, None]
        embs = torch.gather(embs, 1, index[:, :, None].expand(-1, -1, embs.shape[2]))
        lengths = (lengths.to(torch.int64) - drop).clamp(min=0, max=n_out)
        return embs, lengths

    def forward(
        self,
        chunk: torch.Tensor,
        chunk_lengths: torch.Tensor,
        spkcache: torch.Tensor,
        spkcache_lengths: torch.Tensor,
        fifo: torch.Tensor,
        fifo_lengths: torch.Tensor,
        drop_extra_pre_encoded: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.model
        embs, emb_lengths = self.pre_encode(chunk, chunk_lengths, drop_extra_pre_encoded)
        seq, seq_lengths = self.splice(
            spkcache, spkcache_lengths.to(torch.int64), fifo, fifo_lengths.to(torch.int64), embs, emb_lengths
        )
        enc, enc_lengths = m.frontend_encoder(
            processed_signal=seq, processed_signal_length=seq_lengths, bypass_pre_encode=True
        )
        preds = m.forward_infer(enc, enc_lengths)
        return preds, embs, emb_lengths


def pre_encoded_frames(model: torch.nn.Module, feature_frames: int) -> int:
    """Frames the diarizer's pre-encode (subsampling) makes of a chunk of `feature_frames` feature frames."""
    with torch.no_grad():
        x = torch.zeros(1, feature_frames, int(model.encoder._feat_in))
        embs, _ = model.encoder.pre_encode(x=x, lengths=torch.tensor([feature_frames]))
    return int(embs.shape[1])


def sortformer_geometry(
    model: torch.nn.Module, chunk_feature_frames: int, drop_extra_pre_encoded: int
) -> dict[str, Any]:
    """Streaming geometry and update parameters of a SortformerEncLabelModel, as plain Python values.

    chunk_feature_frames: the width of every chunk row (the ASR's later-chunk length incl. its pre-encode
    cache); drop_extra_pre_encoded: the ASR's streaming drop. chunk_frames: frames each row yields after it.
    """
    sm = model.sortformer_modules
    pre = OmegaConf.to_container(model.cfg.preprocessor, resolve=True)
    pre.pop("_target_", None)
    subsampling = int(model.encoder.subsampling_factor)
    window_stride = float(pre.get("window_stride", 0.01))
    geo: dict[str, Any] = {k: getattr(sm, k) for k in STREAMING_KEYS}
    for k in STREAMING_KEYS:
        v = geo[k]
        geo[k] = int(v) if isinstance(v, int) else float(v)
    chunk_frames = pre_encoded_frames(model, chunk_feature_frames) - drop_extra_pre_encoded
    if chunk_frames < 1:
        raise ValueError(
            f"a {chunk_feature_frames}-frame chunk minus a drop of {drop_extra_pre_encoded} leaves no diarizer frames"
        )
    geo.update(
        n_spk=int(sm.n_spk),
        emb_dim=int(model.encoder.d_model),
        subsampling_factor=subsampling,
        frame_len_s=window_stride * subsampling,
        n_mels=int(model.encoder._feat_in),
        sample_rate=int(model.cfg.sample_rate),
        async_streaming=bool(model.cfg.get("async_streaming", False)),
        chunk_feature_frames=int(chunk_feature_frames),
        drop_extra_pre_encoded=int(drop_extra_pre_encoded),
        chunk_frames=int(chunk_frames),
        preprocessor=pre,
    )
    return geo


SORTFORMER_SPEC = GraphSpec(
    file=ONNX_FILE, inputs=list(INPUT_NAMES), outputs=list(OUTPUT_NAMES), dynamic_axes=DYNAMIC_AXES
)


def set_cache_sizes(model, cache: tuple[int, int] | None) -> dict[str, int]:
    """Serve `cache` = (spkcache_len, fifo_len), as NeMo's script sets them at run time (None: the
    checkpoint's own); returns the checkpoint's values. Refuses sizes the streaming update cannot run."""
    from mtasr.export.compatibility import check_diarizer_cache

    sm = model.sortformer_modules
    checkpoint = {"spkcache_len": int(sm.spkcache_len), "fifo_len": int(sm.fifo_len)}
    if cache is not None:
        sm.spkcache_len, sm.fifo_len = (int(n) for n in cache)
    check_diarizer_cache(int(sm.spkcache_len), int(sm.fifo_len), (1 + sm.spkcache_sil_frames_per_spk) * sm.n_spk)
    return checkpoint


def export_sortformer(
    model: torch.nn.Module,
    out_dir: Path,
    *,
    chunk_feature_frames: int,
    drop_extra_pre_encoded: int,
    opset: int = 17,
    graph_rewrites: bool = True,
) -> dict[str, Any]:
    """Write ``out_dir/sortformer.onnx`` on the ASR chunk grid; return its manifest entry and geometry.

    chunk_feature_frames: the ASR's later-chunk length incl. the pre-encode cache (the fixed chunk width
    of the graph); drop_extra_pre_encoded: the ASR's streaming drop (what later chunks drop; the graph
    takes the drop per row); graph_rewrites: trace with `export.graph_rewrites` (False: NeMo's modules as they
    are, for comparisons). Returns ``{"graph": <export_onnx entry>, "geometry": sortformer_geometry(...)}``.
    """
    geo = sortformer_geometry(model, chunk_feature_frames, drop_extra_pre_encoded)
    core = SortformerCore(model, drop_extra_pre_encoded).eval()

    b, d, n_mels = 2, geo["emb_dim"], geo["n_mels"]
    t_feat, sub = geo["chunk_feature_frames"], geo["subsampling_factor"]
    s_len, f_len = max(geo["spkcache_len"], 1), max(geo["fifo_len"], 1)
    example = (
        torch.randn(b, t_feat, n_mels),
        torch.tensor([t_feat, max(t_feat - 2 * sub, 0)], dtype=torch.int64),
        torch.randn(b, s_len, d),
        torch.tensor([s_len, s_len // 2], dtype=torch.int64),
        torch.randn(b, f_len, d),
        torch.tensor([f_len, 0], dtype=torch.int64),
        torch.tensor([drop_extra_pre_encoded, 0], dtype=torch.int64),
    )
    inputs = dict(zip(INPUT_NAMES, example, strict=True))
    graph = export_onnx(core, inputs, SORTFORMER_SPEC, Path(out_dir), opset, rewrites=graph_rewrites)
    return {"graph": graph, "geometry": geo}
