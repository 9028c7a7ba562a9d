"""NeMo's own streaming multitalker inference, re-run in-process on a batch of audio arrays.

It is the reference side of the serving-parity tests and the NeMo side of `mtasr bench`. It follows
NeMo's example script
``examples/asr/asr_cache_aware_streaming/speech_to_text_multitalker_streaming_infer.py`` (not part
of the wheel) in its parallel-speaker mode (``launch_parallel_streaming``), with speaker kernels on
(``masked_asr=False``; ``masked_asr=True`` on request), in fp32 on CPU:

- both ``.nemo`` files restored on CPU; the ASR encoder set to ``[left, right_context]`` (the left
  context of the checkpoint's ``att_context_size_all`` entry with that right context);
- the diarizer in streaming mode with ``chunk_len``/``chunk_left_context``/``chunk_right_context``/
  ``spkcache_refresh_rate`` 0 and ``spkcache_len``/``fifo_len`` as the export served them
  (``diar_cache``: the script's 188/188, or None for the checkpoint's own);
- features from ``CacheAwareStreamingAudioBuffer.append_audio`` (the path of ``append_audio_file``
  minus reading the file: the buffer's own preprocessor with dither 0, pad_to 0);
- ``SpeakerTaggedASR`` with the script's config defaults except the overrides in ``_config``;
- the script's batching: every stream of a batch appended to one streaming buffer, all stepped
  together (``batch_size`` streams per step);
- the script's loop: ``drop_extra_pre_encoded`` 0 on step 0, else the encoder's streaming value;
  ``keep_all_outputs`` = the buffer is empty after the chunk was taken; under ``torch.inference_mode``.

Not reproduced from the script, because they cannot change tokens: the Lightning trainer and the
diarizer's test dataloader set-up, ``sortformer_modules.log``, real-time printing and SegLST files.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtasr.export.asr import supported_right_contexts  # noqa: F401  (re-exported)
from mtasr.export.compatibility import NEMO_SCRIPT_DIARIZER_CACHE

# The script's MultitalkerTranscriptionConfig defaults (NeMo 3.0.0), as plain values.
_SCRIPT_DEFAULTS: dict[str, Any] = {
    "diar_model": None,
    "max_num_of_spks": 4,
    "parallel_speaker_strategy": True,
    "masked_asr": True,
    "mask_preencode": False,
    "cache_gating": True,
    "cache_gating_buffer_size": 2,
    "single_speaker_mode": False,
    "feat_len_sec": 0.01,
    "session_len_sec": -1,
    "num_workers": 8,
    "random_seed": None,
    "log": True,
    "streaming_mode": True,
    "spkcache_len": NEMO_SCRIPT_DIARIZER_CACHE[0],
    "spkcache_refresh_rate": 0,
    "fifo_len": NEMO_SCRIPT_DIARIZER_CACHE[1],
    "chunk_len": 0,
    "chunk_left_context": 0,
    "chunk_right_context": 0,
    "cuda": None,
    "allow_mps": False,
    "matmul_precision": "highest",
    "asr_model": None,
    "audio_file": None,
    "manifest_file": None,
    "att_context_size": [70, 13],
    "use_amp": True,
    "debug_mode": False,
    "deploy_mode": False,
    "batch_size": 32,
    "chunk_size": -1,
    "shift_size": -1,
    "left_chunks": 2,
    "online_normalization": False,
    "output_path": None,
    "pad_and_drop_preencoded": False,
    "generate_realtime_scripts": False,
    "spk_supervision": "diar",
    "binary_diar_preds": False,
    "verbose": False,
    "word_window": 50,
    "sent_break_sec": 30.0,
    "fix_prev_words_count": 5,
    "update_prev_words_sentence": 5,
    "left_frame_shift": -1,
    "right_frame_shift": 0,
    "min_sigmoid_val": 1e-2,
    "discarded_frames": 8,
    "print_time": True,
    "print_sample_indices": [0],
    "colored_text": True,
    "real_time_mode": False,
    "print_path": None,
    "ignored_initial_frame_steps": 5,
    "finetune_realtime_ratio": 0.01,
}


@dataclass
class NemoResult:
    """What NeMo's parallel streaming loop produced for one stream."""

    # Stream 0 of the batch (the parity tests run one stream):
    tokens: dict[int, list[int]]  # speaker slot -> token ids (every slot NeMo created; [] if never decoded)
    texts: dict[int, str]  # speaker slot -> detokenised text
    active_per_chunk: list[list[int]]  # `_find_active_speakers` result for each chunk (stream 0)
    n_chunks: int
    right_context: int
    att_context_size: list[int]
    feature_frames: int  # mel frames of the whole stream
    chunk_feature_lengths: list[int]  # valid feature frames of each chunk, pre-encode cache included
    # Per chunk, per active slot: (speaker target, background mask) exactly as given to the speaker
    # kernels (float sigmoid values; bool any-other-speaker mask), before the kernels cut them to the
    # encoder length. Empty dict for a chunk with no active speaker (its ASR step is skipped).
    masks_per_chunk: list[dict[int, tuple[np.ndarray, np.ndarray]]] = field(default_factory=list)
    # Chunks where the corrected background mask differs from NeMo's list-position mask.
    bg_mask_differs_chunks: list[int] = field(default_factory=list)
    diar_preds: np.ndarray | None = None  # [frames, speakers] diarizer output of the whole stream
    fix_background_mask: bool = False
    diar_async_streaming: bool = True
    wall_s: float = 0.0  # the whole loop, every stream of the batch
    step_s: list[float] = field(default_factory=list)  # wall time of each step (one chunk of every stream)
    batch_size: int = 1


def att_context_for(asr_model, right_context: int) -> list[int]:
    """The checkpoint's ``[left, right]`` attention context whose right context is ``right_context``."""
    for ctx in asr_model.encoder.att_context_size_all:
        if int(ctx[1]) == right_context:
            return [int(ctx[0]), int(ctx[1])]
    raise ValueError(
        f"right context {right_context} is not supported by this checkpoint "
        f"(supported: {supported_right_contexts(asr_model)})"
    )


def corrected_background_masks(previous_chunk_preds, active_speakers: Sequence[Sequence[int]]):
    """Background masks keyed by speaker id: for each active speaker of each stream (in NeMo's
    stacking order), "some *other active* speaker is above 0.5" over the chunk's diarizer frames.

    NeMo's ``get_active_speakers_info`` uses list positions ``range(len(speaker_ids))`` instead of the
    other active speaker ids, so with active speakers [0, 2] speaker 0's mask looks at (silent)
    speaker 1 and misses speaker 2.
    """
    import torch

    rows = []
    for batch_idx, speaker_ids in enumerate(active_speakers):
        for speaker_id in speaker_ids:
            others = [s for s in speaker_ids if s != speaker_id]
            rows.append((previous_chunk_preds[batch_idx, :, others] > 0.5).sum(dim=-1) > 0)
    return torch.stack(rows)


def nemo_background_masks(previous_chunk_preds, active_speakers: Sequence[Sequence[int]]):
    """NeMo 3.0.0's rule (list positions of the active speakers), for comparison with the corrected one."""
    import torch

    rows = []
    for batch_idx, speaker_ids in enumerate(active_speakers):
        for speaker_id in speaker_ids:
            positions = [i for i in range(len(speaker_ids)) if i != speaker_id]
            rows.append((previous_chunk_preds[batch_idx, :, positions] > 0.5).sum(dim=-1) > 0)
    return torch.stack(rows)


def background_bug_can_matter(active_per_chunk: Sequence[Sequence[int]]) -> bool:
    """Whether NeMo's position-based background mask can differ from the id-based one in a run.

    It can only where a chunk's active set is not ``[0, ..., k-1]`` *and* has at least two speakers:
    with every speaker a top-k candidate (``max_num_of_spks`` = the diarizer's speaker count), a
    speaker outside the active set never exceeds 0.5 in the chunk, so a position that names an
    inactive speaker adds nothing; a lone active speaker ``[j]`` gets an all-False mask either way.
    """
    return any(len(a) >= 2 and list(a) != list(range(len(a))) for a in active_per_chunk)


def _config(
    right_context_ctx: list[int],
    max_num_of_spks: int,
    batch_size: int,
    cache_gating: bool = True,
    masked_asr: bool = False,
    binary_diar_preds: bool = False,
    cache_gating_buffer_size: int = 2,
):
    from omegaconf import OmegaConf

    cfg = dict(_SCRIPT_DEFAULTS)
    cfg.update(
        {
            "masked_asr": masked_asr,  # False: speaker kernels; True: features masked (the script's default)
            "use_amp": False,  # fp32 (CPU autocast would be bfloat16)
            "cache_gating": cache_gating,
            "cache_gating_buffer_size": cache_gating_buffer_size,
            "binary_diar_preds": binary_diar_preds,
            "single_speaker_mode": False,
            "max_num_of_spks": max_num_of_spks,
            "deploy_mode": True,  # no manifest / audio file
            "generate_realtime_scripts": False,
            "batch_size": batch_size,
            "att_context_size": list(right_context_ctx),
            "log": False,
        }
    )
    return OmegaConf.create(cfg)


def load_models(asr_nemo: Path, diar_nemo: Path):
    """Both checkpoints restored on CPU, in eval mode (no streaming settings applied yet).

    NeMo's fixed feature normalisation (the default pair's) fails for more than one stream at once; the
    loop batches streams, so NeMo is patched to broadcast it (`export.nemo_fixes`)."""
    import torch
    from nemo.collections.asr.models import ASRModel
    from nemo.collections.asr.models.sortformer_diar_models import SortformerEncLabelModel
    from nemo.utils import logging as nemo_logging

    from mtasr.export.nemo_fixes import patch_fixed_normalization

    patch_fixed_normalization()
    cpu = torch.device("cpu")
    with nemo_logging.temp_verbosity(nemo_logging.WARNING):
        diar_model = SortformerEncLabelModel.restore_from(restore_path=str(diar_nemo), map_location=cpu)
        asr_model = ASRModel.restore_from(restore_path=str(asr_nemo), map_location=cpu)
    return asr_model.eval(), diar_model.eval()


def _configure(asr_model, diar_model, right_context: int, diar_cache: tuple[int, int] | None) -> list[int]:
    ctx = att_context_for(asr_model, right_context)
    asr_model.encoder.set_default_att_context_size(ctx)  # also recomputes streaming_cfg
    asr_model.eval()

    m = diar_model.sortformer_modules
    diar_model.eval()
    diar_model.streaming_mode = True
    # As the script's spkcache_len/fifo_len; None: the checkpoint's (its config keeps them, whatever an earlier
    # call on the same model set).
    m.spkcache_len, m.fifo_len = diar_cache or (
        int(diar_model.cfg.sortformer_modules.spkcache_len),
        int(diar_model.cfg.sortformer_modules.fifo_len),
    )
    m.chunk_len = 0
    m.chunk_left_context = 0
    m.chunk_right_context = 0
    m.spkcache_refresh_rate = 0
    return ctx


def run_nemo_multitalker(
    asr_nemo: Path,
    diar_nemo: Path,
    audio: np.ndarray | Sequence[np.ndarray],
    right_context: int,
    *,
    fix_background_mask: bool = False,
    all_slots_active: bool = False,
    diar_async_streaming: bool | None = None,
    max_num_of_spks: int = 4,
    diar_cache: tuple[int, int] | None = NEMO_SCRIPT_DIARIZER_CACHE,
    masked_asr: bool = False,
    binary_diar_preds: bool = False,
    cache_gating_buffer_size: int = 2,
    models: tuple[Any, Any] | None = None,
    quiet: bool = True,
) -> NemoResult:
    """Run NeMo's parallel multitalker streaming loop on ``audio`` (16 kHz mono float32).

    ``audio`` is one stream or a list of streams, run as one batch the way the script batches a
    manifest; the result's tokens, masks and diarizer output are stream 0's.

    ``fix_background_mask`` replaces NeMo's background mask (built from list positions) by the one
    built from the other active speaker ids, for this call only (an attribute of this call's
    instance manager; nothing global is patched).

    ``all_slots_active`` turns NeMo's cache gating off (its own option): every speaker slot up to
    ``max_num_of_spks`` is active in every chunk, whatever the diarizer says; the worst-case load,
    as the serving setting of that name gives.

    ``diar_async_streaming``: None follows the diarizer checkpoint's ``async_streaming``. NeMo
    3.0.0's ``MultiTalkerInstanceManager.reset`` builds the diarizer state with
    ``init_streaming_state(batch_size)``, i.e. always the synchronous layout, so the script crashes
    (``concat_and_pad`` on ``spkcache_lengths=None``) with an async checkpoint such as this project's.
    For async the state is therefore re-initialised right after that reset the way the diarizer's
    own streaming path does (``init_streaming_state(batch, async_streaming=True)``); nothing else
    changes. False forces NeMo's synchronous update (what the script runs for a checkpoint without
    the flag); on the tiny models it gave identical diarizer output, but NeMo does not promise that.

    ``max_num_of_spks`` is the script's option of that name (speakers beyond it are zeroed in the
    diarizer output; it is also the top-k of the active-speaker search).

    ``diar_cache`` is the diarizer's (spkcache_len, fifo_len), the script's options of those names, at
    their defaults as export's are; None keeps the checkpoint's (export's ``--diarizer-cache checkpoint``).

    ``masked_asr`` is the script's option of that name (its default is True): features masked per speaker
    and the speaker kernels left without targets (export's ``--speaker-conditioning masked``); False,
    the speaker kernels get the diarizer's masks (``kernels``). Either way the ASR model's speaker
    targets are cleared before and after the run, so a shared model carries nothing between calls.

    ``binary_diar_preds`` is the script's option of that name (default False): the speaker kernels' target
    masks thresholded at 0.5 (export's ``--binary-speaker-masks``).

    ``cache_gating_buffer_size`` is the script's option of that name (default 2): a speaker stays active while
    the diarizer heard it in that many of the latest chunks (export's ``--gating-chunks``).

    ``models`` may pass an already restored ``(asr_model, diar_model)`` pair to skip restoring; the
    call leaves the ASR encoder at ``right_context`` and the diarizer at the streaming settings above.
    """
    from nemo.utils import logging as nemo_logging

    batch = [audio] if isinstance(audio, np.ndarray) else list(audio)
    batch = [np.ascontiguousarray(np.asarray(a, dtype=np.float32).reshape(-1)) for a in batch]
    if not batch or any(a.size == 0 for a in batch):
        raise ValueError("empty audio")

    with nemo_logging.temp_verbosity(nemo_logging.WARNING) if quiet else nullcontext():
        asr_model, diar_model = models if models is not None else load_models(asr_nemo, diar_nemo)
        ctx = _configure(asr_model, diar_model, right_context, diar_cache)
        n_spk = int(diar_model._cfg.max_num_of_spks)
        if not 1 <= max_num_of_spks <= n_spk:
            raise ValueError(f"max_num_of_spks must be in 1..{n_spk} (the diarizer's speakers), got {max_num_of_spks}")
        checkpoint_async = bool(diar_model.async_streaming)
        use_async = checkpoint_async if diar_async_streaming is None else bool(diar_async_streaming)
        diar_model.async_streaming = use_async
        asr_model.clear_speaker_targets()  # masked_asr never sets them: NeMo's encoder then uses ones / zeros
        try:
            result = _parallel_streaming(
                asr_model,
                diar_model,
                batch,
                _config(
                    ctx,
                    max_num_of_spks,
                    len(batch),
                    cache_gating=not all_slots_active,
                    masked_asr=masked_asr,
                    binary_diar_preds=binary_diar_preds,
                    cache_gating_buffer_size=cache_gating_buffer_size,
                ),
                fix_background_mask,
                use_async,
            )
        finally:
            diar_model.async_streaming = checkpoint_async
            asr_model.clear_speaker_targets()
    result.right_context = right_context
    result.att_context_size = ctx
    return result


def _parallel_streaming(
    asr_model,
    diar_model,
    batch: list[np.ndarray],
    cfg,
    fix_background_mask: bool,
    use_async: bool,
) -> NemoResult:
    """The script's stream set-up and ``launch_parallel_streaming`` loop, observed."""
    import torch
    from nemo.collections.asr.parts.utils.multispk_transcribe_utils import SpeakerTaggedASR
    from nemo.collections.asr.parts.utils.streaming_utils import CacheAwareStreamingAudioBuffer

    streaming_buffer = CacheAwareStreamingAudioBuffer(
        model=asr_model, online_normalization=False, pad_and_drop_preencoded=False
    )
    for audio in batch:
        streaming_buffer.append_audio(audio, stream_id=-1)  # append_audio_file minus reading the file
    feature_frames = int(streaming_buffer.streams_length[0])

    streamer = SpeakerTaggedASR(cfg, asr_model, diar_model)
    manager = streamer.instance_manager
    active_per_chunk: list[list[int]] = []
    masks_per_chunk: list[dict[int, tuple[np.ndarray, np.ndarray]]] = []
    differs: list[int] = []
    chunk_lengths_seen: list[int] = []

    # All hooks below are attributes of this call's streamer / instance manager only.
    if use_async:
        reset = manager.reset

        def reset_with_async_diar_state(batch_size=None, max_num_of_spks=None):
            reset(batch_size=batch_size, max_num_of_spks=max_num_of_spks)
            manager.diar_states.streaming_state = diar_model.sortformer_modules.init_streaming_state(
                batch_size=manager.batch_size, async_streaming=True, device=diar_model.device
            )

        manager.reset = reset_with_async_diar_state

    find_active = streamer._find_active_speakers

    def observed_find_active(diar_preds, n_active_speakers_per_stream):
        result = find_active(diar_preds, n_active_speakers_per_stream)
        active_per_chunk.append(list(result[0]))
        return result

    streamer._find_active_speakers = observed_find_active

    get_info = manager.get_active_speakers_info

    def observed_get_info(active_speakers, chunk_audio, chunk_lengths):
        out = get_info(active_speakers=active_speakers, chunk_audio=chunk_audio, chunk_lengths=chunk_lengths)
        step = len(masks_per_chunk)
        if out[0] is None:  # no active speaker: NeMo skips this chunk's ASR step
            masks_per_chunk.append({})
            return out
        chunk_out, lengths_out, spk, bg = out
        fixed = corrected_background_masks(manager.diar_states.previous_chunk_preds, active_speakers)
        if not torch.equal(fixed, bg):
            differs.append(step)
        if fix_background_mask:
            bg = fixed
        masks_per_chunk.append(
            {s: (spk[i].cpu().numpy().copy(), bg[i].cpu().numpy().copy()) for i, s in enumerate(active_speakers[0])}
        )
        return chunk_out, lengths_out, spk, bg

    manager.get_active_speakers_info = observed_get_info

    # launch_parallel_streaming (pad_and_drop_preencoded False).
    autocast = torch.amp.autocast(asr_model.device.type, enabled=cfg.use_amp)
    start = time.perf_counter()
    n_chunks = 0
    step_s: list[float] = []
    for step_num, (chunk_audio, chunk_lengths) in enumerate(iter(streaming_buffer)):
        drop_extra_pre_encoded = 0 if step_num == 0 else asr_model.encoder.streaming_cfg.drop_extra_pre_encoded
        chunk_lengths_seen.append(int(chunk_lengths[0]))
        step_start = time.perf_counter()
        with torch.inference_mode(), autocast, torch.no_grad():
            streamer.perform_parallel_streaming_stt_spk(
                step_num=step_num,
                chunk_audio=chunk_audio,
                chunk_lengths=chunk_lengths,
                is_buffer_empty=streaming_buffer.is_buffer_empty(),
                drop_extra_pre_encoded=drop_extra_pre_encoded,
            )
        step_s.append(time.perf_counter() - step_start)
        n_chunks += 1
    wall = time.perf_counter() - start

    state = manager.batch_asr_states[0]
    tokens: dict[int, list[int]] = {}
    texts: dict[int, str] = {}
    for slot in sorted(state.get_speakers()):
        hyp = state.previous_hypothesis[slot]
        seq = None if hyp is None else hyp.y_sequence
        if seq is None:
            tokens[slot] = []
        else:
            tokens[slot] = [int(t) for t in (seq.tolist() if isinstance(seq, torch.Tensor) else seq)]
        texts[slot] = asr_model.tokenizer.ids_to_text(tokens[slot]) if tokens[slot] else ""
    diar_preds = manager.diar_states.diar_pred_out_stream
    return NemoResult(
        tokens=tokens,
        texts=texts,
        active_per_chunk=active_per_chunk,
        n_chunks=n_chunks,
        right_context=-1,
        att_context_size=[],
        feature_frames=feature_frames,
        chunk_feature_lengths=chunk_lengths_seen,
        masks_per_chunk=masks_per_chunk,
        bg_mask_differs_chunks=differs,
        diar_preds=None if diar_preds is None else diar_preds[0].cpu().numpy().copy(),
        fix_background_mask=fix_background_mask,
        diar_async_streaming=use_async,
        wall_s=wall,
        step_s=step_s,
        batch_size=len(batch),
    )
