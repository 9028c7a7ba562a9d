"""The NeMo side of the serving-parity comparison (bench/nemo_streaming.py) on the tiny random models,
and NeMo 3.0.0's background-mask bug shown on its own code."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("nemo.collections.asr")

import torch  # noqa: E402

from mtasr.bench.nemo_streaming import (  # noqa: E402
    background_bug_can_matter,
    corrected_background_masks,
    load_models,
    nemo_background_masks,
    run_nemo_multitalker,
    supported_right_contexts,
)
from mtasr.training.mixtures import espeak_available, make_conversation  # noqa: E402

needs_espeak = pytest.mark.skipif(
    not espeak_available(), reason="espeak-ng (Debian package 'espeak-ng') is not installed"
)


@pytest.fixture(scope="module")
def tiny_pair(tiny_checkpoints) -> tuple[Path, Path]:
    return tiny_checkpoints


@pytest.fixture(scope="module")
def tiny_models(tiny_pair):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_models(*tiny_pair)


@pytest.fixture(scope="module")
def two_speakers():
    if not espeak_available():
        pytest.skip("espeak-ng (Debian package 'espeak-ng') is not installed")
    return make_conversation(2, seed=2)


# ------------------------------------------------------------------ the bug, on NeMo's own code


def _manager_with_state(previous_chunk_preds: torch.Tensor, speakers: list[int]):
    """A real MultiTalkerInstanceManager with stub ASR caches for `speakers` and the given diarizer chunk."""
    from nemo.collections.asr.parts.utils.multispk_transcribe_utils import MultiTalkerInstanceManager

    def initial_cache(batch_size: int = 1):
        return torch.zeros(2, batch_size, 3, 4), torch.zeros(2, batch_size, 4, 2), torch.zeros(batch_size)

    stub_asr = SimpleNamespace(encoder=SimpleNamespace(get_initial_cache_state=initial_cache))
    manager = MultiTalkerInstanceManager(asr_model=stub_asr, diar_model=None, batch_size=1, max_num_of_spks=4)
    state = manager.ASRState(max_num_of_spks=4)
    state.reset(initial_cache())
    manager.batch_asr_states = [state]
    for s in speakers:
        manager.add_speaker(0, s)
    manager.diar_states = manager.DiarState(batch_size=1, max_num_of_spks=4)
    manager.diar_states.previous_chunk_preds = previous_chunk_preds
    return manager


def test_nemo_background_mask_uses_list_positions_not_speaker_ids():
    # One chunk of 6 diarizer frames: speaker 0 talks throughout, speaker 2 in the last 4 frames,
    # speakers 1 and 3 silent. Active speakers (NeMo's sorted ids): [0, 2].
    preds = torch.zeros(1, 6, 4)
    preds[0, :, 0] = 0.9
    preds[0, 2:, 2] = 0.8
    active = [[0, 2]]
    manager = _manager_with_state(preds, [0, 1, 2])

    _, _, spk, bg = manager.get_active_speakers_info(
        active_speakers=active, chunk_audio=torch.zeros(1, 8, 48), chunk_lengths=torch.tensor([48])
    )

    assert torch.allclose(spk[0], preds[0, :, 0]) and torch.allclose(spk[1], preds[0, :, 2])
    # NeMo: speaker 0's background looks at position 1 = (silent) speaker 1 and misses speaker 2.
    assert not bg[0].any()
    assert bg[1].all()  # speaker 2's background: positions [0, 1] happen to include speaker 0
    assert torch.equal(bg, nemo_background_masks(preds, active))
    # The corrected rule uses the other active ids: speaker 0 hears speaker 2 where 2 talks.
    fixed = corrected_background_masks(preds, active)
    assert fixed[0].tolist() == [False, False, True, True, True, True]
    assert torch.equal(fixed[1], bg[1])

    assert background_bug_can_matter([[0, 2]]) and background_bug_can_matter([[1, 3]])
    assert not background_bug_can_matter([[], [0], [1], [3], [0, 1], [0, 1, 2]])


def test_lone_non_zero_speaker_gets_the_same_background_both_ways():
    # Only speaker 3 active: NeMo looks at position 0 (speaker 0, silent); the fix at no speaker.
    preds = torch.zeros(1, 5, 4)
    preds[0, :, 3] = 0.7
    preds[0, 0, 0] = 0.4  # below threshold, as every inactive speaker is in the chunk
    assert torch.equal(nemo_background_masks(preds, [[3]]), corrected_background_masks(preds, [[3]]))


# ------------------------------------------------------------------ the reference loop


def test_tiny_model_supports_the_released_right_contexts(tiny_models):
    asr_model, _ = tiny_models
    assert supported_right_contexts(asr_model) == [0, 1, 6, 13]


@needs_espeak
@pytest.mark.parametrize("right_context", [13, 0])
def test_reference_runs_and_is_deterministic(tiny_pair, tiny_models, two_speakers, right_context):
    audio = two_speakers.audio
    first = run_nemo_multitalker(*tiny_pair, audio, right_context)  # restores its own models
    second = run_nemo_multitalker(*tiny_pair, audio, right_context, models=tiny_models)

    assert first.n_chunks == len(first.active_per_chunk) == len(first.masks_per_chunk) > 1
    assert first.att_context_size == [70, right_context]
    seen = {s for active in first.active_per_chunk for s in active}
    assert seen, "the diarizer found no active speaker at all"
    # Slots are created up to the highest active id (slot 0 always exists); every seen slot decoded.
    assert set(first.tokens) == set(range(max(seen | {0}) + 1))
    assert all(first.tokens[s] for s in seen)
    assert all(first.tokens[s] == [] for s in set(first.tokens) - seen)
    assert first.diar_preds is not None and first.diar_preds.shape[1] == 4

    assert second.tokens == first.tokens
    assert second.active_per_chunk == first.active_per_chunk
    assert second.bg_mask_differs_chunks == first.bg_mask_differs_chunks
    np.testing.assert_array_equal(second.diar_preds, first.diar_preds)


@needs_espeak
def test_background_fix_changes_nothing_without_non_contiguous_active_speakers(tiny_pair, tiny_models, two_speakers):
    # With the script's max_num_of_spks = 2 only speakers 0 and 1 can be active: [0], [1] or [0, 1].
    kwargs = {"models": tiny_models, "max_num_of_spks": 2}
    nemo = run_nemo_multitalker(*tiny_pair, two_speakers.audio, 13, **kwargs)
    fixed = run_nemo_multitalker(*tiny_pair, two_speakers.audio, 13, fix_background_mask=True, **kwargs)

    assert all(set(a) <= {0, 1} for a in nemo.active_per_chunk)
    assert not background_bug_can_matter(nemo.active_per_chunk)
    assert nemo.bg_mask_differs_chunks == []
    assert fixed.active_per_chunk == nemo.active_per_chunk
    assert fixed.tokens == nemo.tokens


@needs_espeak
def test_background_fix_corrects_the_masks_where_the_bug_applies(tiny_pair, tiny_models, two_speakers):
    nemo = run_nemo_multitalker(*tiny_pair, two_speakers.audio, 13, models=tiny_models)
    fixed = run_nemo_multitalker(*tiny_pair, two_speakers.audio, 13, models=tiny_models, fix_background_mask=True)
    if not background_bug_can_matter(nemo.active_per_chunk):
        pytest.skip(f"random diarizer gave only contiguous active sets: {nemo.active_per_chunk}")
    assert nemo.bg_mask_differs_chunks, "non-contiguous active speakers but identical masks"
    # The diarizer does not depend on the ASR side, so both runs see the same chunks and speakers.
    assert fixed.active_per_chunk == nemo.active_per_chunk
    assert fixed.bg_mask_differs_chunks == nemo.bg_mask_differs_chunks
    for step, (ours, theirs) in enumerate(zip(fixed.masks_per_chunk, nemo.masks_per_chunk, strict=True)):
        changed = any(not np.array_equal(ours[s][1], theirs[s][1]) for s in theirs)
        assert changed == (step in nemo.bg_mask_differs_chunks)
        assert all(np.array_equal(ours[s][0], theirs[s][0]) for s in theirs)  # speaker targets untouched


@pytest.mark.parametrize("feature_frames", [105, 112, 121, 9])
def test_served_feature_masking_is_nemos_mask_features(feature_frames):
    """`--speaker-conditioning masked` masks a speaker's features as NeMo's script does: its 14 latest
    diarizer frames, each over 8 feature frames, cut to the chunk by keeping the first ones (first chunk,
    105 frames) or left-padded with zeros over the pre-encode cache (later chunks, 121); features that were
    exactly 0 (a zero-filled cache) become -16.6355."""
    from nemo.collections.asr.parts.utils.multispk_transcribe_utils import SpeakerTaggedASR

    from mtasr.gating import feature_mask, mask_features

    rng = np.random.default_rng(feature_frames)
    features = rng.normal(-8.0, 3.0, (2, 5, feature_frames)).astype(np.float32)
    features[:, :, :3] = 0.0  # the zero-filled start of a stream's pre-encode cache
    targets = rng.uniform(0.0, 1.0, (2, 14)).astype(np.float32)
    nemo_self = SimpleNamespace(cfg={"log": False})
    want = SpeakerTaggedASR.mask_features(nemo_self, torch.from_numpy(features), torch.from_numpy(targets)).numpy()
    for row in range(2):
        got = mask_features(features[row], feature_mask(targets[row], feature_frames, 0.5))
        np.testing.assert_array_equal(got, want[row])
