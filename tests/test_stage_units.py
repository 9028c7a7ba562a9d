"""The pipeline's small parts, each a specification in a few lines (no server, no NeMo)."""

from __future__ import annotations

import numpy as np
import pytest

from mtasr.gating import GatingConfig, SpeakerGate, active_slots, background_by_id, background_by_position
from mtasr.sortformer_state import width_batches
from mtasr.streams import RequestError, StageRequest, StreamTable, waves
from mtasr.transcript import Word, seglst


def request(stream: int | str, start: bool = False, end: bool = False) -> StageRequest:
    return StageRequest(stream, start, end, {})


def test_waves_keep_each_streams_requests_in_order_one_per_wave():
    reqs = [request(s) for s in (1, 2, 1, 3, 1, 2)]
    assert waves(reqs) == [[0, 1, 3], [2, 5], [4]]


def test_stream_table_starts_restarts_ends_and_evicts_idle_streams():
    now = [0.0]
    table: StreamTable[list] = StreamTable(idle_timeout_s=10, clock=lambda: now[0])
    first = table.admit(request(7, start=True), list)
    first.append("audio")
    assert table.admit(request(7), list) is first
    assert table.admit(request(7, start=True), list) == []  # a second START begins afresh
    with pytest.raises(RequestError, match="not active"):
        table.get(8)
    table.admit(request(9, start=True), list)
    now[0] = 5.0
    table.get(9)  # touched: idle clock restarts
    now[0] = 12.0
    assert table.evict_idle() == [7]
    assert 9 in table and 7 not in table
    table.end(9)
    assert len(table) == 0


def test_stream_table_keys_by_the_whole_id_and_keeps_numbers_and_strings_apart():
    table: StreamTable[list] = StreamTable(idle_timeout_s=10)
    ids = ["room-0001", "room-0002", 42, "42"]
    for sid in ids:
        table.admit(request(sid, start=True), list).append(sid)
    assert [table.get(sid) for sid in ids] == [[sid] for sid in ids]
    with pytest.raises(RequestError, match="sequence 'room-0003' is not active"):
        table.get("room-0003")


def test_stream_table_refuses_a_new_start_beyond_its_capacity_but_not_a_restart():
    now = [0.0]
    table: StreamTable[list] = StreamTable(idle_timeout_s=10, clock=lambda: now[0], capacity=2)
    table.admit(request(1, start=True), list)
    table.admit(request(2, start=True), list)
    assert table.free() == 0
    with pytest.raises(RequestError, match="server full"):
        table.admit(request(3, start=True), list)
    assert 3 not in table
    table.admit(request(2, start=True), list)  # a restart of a held stream needs no new slot
    now[0] = 11.0  # both idle past the timeout: a START evicts them rather than refusing
    table.admit(request(3, start=True), list)
    assert len(table) == 1 and table.free() == 1


def test_a_slot_is_active_when_its_recent_maximum_exceeds_the_threshold():
    config = GatingConfig(frames_per_chunk=2, gating_chunks=2, max_active=2)
    window = np.array([[0.9, 0.2, 0.6, 0.51], [0.1, 0.4, 0.7, 0.0]])
    assert active_slots(window, config) == [0, 2]  # 3 is above 0.5 but not in the top 2
    assert active_slots(window, GatingConfig(2, 2, max_active=4)) == [0, 2, 3]
    # The benchmarks' worst case: every slot, whatever the probabilities; none before any frame.
    assert active_slots(window, GatingConfig(2, 2, max_active=4, all_active=True)) == [0, 1, 2, 3]
    assert active_slots(window[:0], GatingConfig(2, 2, max_active=4, all_active=True)) == []


def test_background_mask_follows_speaker_ids_not_list_positions():
    # Active slots [0, 2]: slot 2 talks in frame 0, slot 1 (inactive) is above 0.5 in frame 1.
    chunk = np.array([[0.9, 0.1, 0.8, 0.0], [0.9, 0.7, 0.1, 0.0]], np.float32)
    assert background_by_id(chunk, 0, [0, 2], 0.5).tolist() == [1.0, 0.0]
    assert background_by_position(chunk, 0, [0, 2], 0.5).tolist() == [0.0, 1.0]  # NeMo's rule


def test_gate_masks_the_encoder_frames_with_the_latest_diarizer_frames():
    gate = SpeakerGate(GatingConfig(frames_per_chunk=3), n_slots=2)
    gate.step(np.array([[0.9, 0.2], [0.8, 0.7], [0.7, 0.1]], np.float32), encoder_frames=3, width=3)
    # A short last chunk: 1 diarizer frame, 2 encoder frames -> the window reaches one frame back.
    masks = gate.step(np.array([[0.6, 0.9]], np.float32), encoder_frames=2, width=3)
    assert masks.active.tolist() == [True, True]
    np.testing.assert_allclose(masks.speaker[0, :2], [0.7, 0.6])
    np.testing.assert_allclose(masks.background[0, :2], [0.0, 1.0])
    assert masks.speaker[0, 2] == 1.0 and masks.background[0, 2] == 0.0  # padding past the valid frames


def test_masked_conditioning_masks_features_and_gives_the_kernels_no_targets():
    gate = SpeakerGate(GatingConfig(frames_per_chunk=2, conditioning="masked"), n_slots=2)
    probs = np.array([[0.9, 0.2], [0.3, 0.1]], np.float32)  # slot 1 never exceeds 0.5: inactive
    masks = gate.step(probs, encoder_frames=2, width=3, feature_frames=20, feature_width=24)
    assert masks.active.tolist() == [True, False]
    assert (masks.speaker == 1.0).all() and (masks.background == 0.0).all()
    # 2 diarizer frames x 8 feature frames, left-padded with zeros to the chunk's 20; padding width kept at 1.
    assert masks.features[0].tolist() == [0.0] * 4 + [1.0] * 8 + [0.0] * 8 + [1.0] * 4
    assert (masks.features[1] == 1.0).all()
    kernels = SpeakerGate(GatingConfig(frames_per_chunk=2), n_slots=2).step(probs, 2, 3, 20, 24)
    assert kernels.features.shape == (2, 0)  # none sent: the ASR stage leaves the features alone


def test_diarizer_calls_group_streams_of_similar_cache_fill():
    """A diarizer call encodes every row as wide as its widest: young and old streams go in separate calls,
    streams of one fill in one call, and every row is in exactly one call."""
    young_and_old = width_batches(np.array([0, 94, 0, 94]), np.array([14, 94, 28, 94]), chunk_frames=14)
    assert [sorted(call.tolist()) for call in young_and_old] == [[0, 2], [1, 3]]
    assert [c.tolist() for c in width_batches(np.array([94] * 3), np.array([94] * 3), chunk_frames=14)] == [[0, 1, 2]]
    # close fills share a call: one more call costs more than the few frames of padding it saves
    assert len(width_batches(np.array([0, 0]), np.array([40, 42]), chunk_frames=14)) == 1
    rng = np.random.default_rng(0)
    spk, fifo = rng.integers(0, 95, 20), rng.integers(0, 95, 20)
    assert sorted(np.concatenate(width_batches(spk, fifo, chunk_frames=14)).tolist()) == list(range(20))
    assert width_batches(np.array([], np.int64), np.array([], np.int64), chunk_frames=14) == []


def test_seglst_splits_a_speakers_words_at_long_pauses():
    words = [
        Word(0, "hello", 0.0, 0.4),
        Word(1, "hi", 0.2, 0.5),
        Word(0, "there", 0.6, 1.0),
        Word(0, "again", 3.0, 3.4),
    ]
    segments = seglst(words, "s1", segment_gap_s=1.0)
    assert [(s["speaker"], s["words"], s["start_time"], s["end_time"]) for s in segments] == [
        ("speaker_0", "hello there", 0.0, 1.0),
        ("speaker_1", "hi", 0.2, 0.5),
        ("speaker_0", "again", 3.0, 3.4),
    ]
