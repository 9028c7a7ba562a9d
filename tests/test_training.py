"""Training in NeMo: text split, corpus, simulator targets, and a short real training run end to end."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mtasr.training.text import split_sentences, vocabulary
from mtasr.training.voices import VOICES, missing_engines

needs_voices = pytest.mark.skipif(
    bool(missing_engines()), reason="flite/festival not installed (make system-deps installs them)"
)


def test_test_sentences_never_occur_in_training():
    train, test, dev = split_sentences(2000, 100, seed=3, n_dev=50)
    assert len(set(train)) == 2000 and len(set(test)) == 100 and len(set(dev)) == 50
    assert not set(train) & set(test) and not set(train) & set(dev) and not set(dev) & set(test)
    # The split is by sentence, not by draw: asking for more training text never moves a held-out sentence.
    more_train, _, _ = split_sentences(3000, 100, seed=3, n_dev=50)
    assert not set(more_train) & (set(test) | set(dev))
    assert {w for s in train + test + dev for w in s.split()} <= vocabulary()


def test_conversations_of_long_utterances_fit_and_let_every_speaker_speak():
    """Two-sentence training utterances run to 8 s: a conversation of four such speakers must still fit
    its 15 s and give everyone a turn (a long turn is swapped for another of that speaker's)."""
    from mtasr.training.mixtures import MAX_DURATION_S, compose

    def conversation(seed: int):
        rng = np.random.default_rng(seed)

        def speak(speaker: int):
            seconds = 7.5 if rng.random() < 0.6 else 1.5
            return speaker, "words", np.full(int(seconds * 16000), 0.1, np.float32)

        return compose(speak, 4, rng)

    for seed in range(30):
        turns = conversation(seed).segments
        assert max(t.end_s for t in turns) <= MAX_DURATION_S
        assert {t.speaker for t in turns} == {0, 1, 2, 3}


def test_vectorised_rnnt_loss_equals_nemo_loss_and_gradient():
    import torch
    from nemo.collections.asr.losses.rnnt import RNNTLoss

    from mtasr.training.rnnt_loss import VectorisedRNNTLoss

    torch.manual_seed(0)
    vocab = 30  # blank = 29, NeMo's convention (last index)
    logits = torch.randn(4, 40, 13, vocab, requires_grad=True)
    labels = torch.randint(0, vocab - 1, (4, 12))
    frames, label_lengths = torch.tensor([40, 33, 20, 15]), torch.tensor([12, 7, 0, 12])
    nemo = RNNTLoss(num_classes=vocab - 1, reduction="mean_batch")(
        log_probs=torch.log_softmax(logits, -1), targets=labels, input_lengths=frames, target_lengths=label_lengths
    )
    (nemo_grad,) = torch.autograd.grad(nemo, logits)
    ours = VectorisedRNNTLoss(blank=vocab - 1)(logits, labels, frames, label_lengths)
    (our_grad,) = torch.autograd.grad(ours, logits)
    assert float(ours) == pytest.approx(float(nemo), rel=1e-5)
    assert torch.allclose(our_grad, nemo_grad, atol=1e-4)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from mtasr.training.corpus import CorpusSettings, build_corpus

    if missing_engines():
        pytest.skip("flite/festival not installed (make system-deps installs them)")
    settings = CorpusSettings(
        train_sentences=120,
        test_sentences=20,
        dev_sentences=10,
        train_utterances_per_voice=24,
        test_utterances_per_voice=4,
        dev_utterances_per_voice=2,
        silence_utterances=4,
    )
    return build_corpus(tmp_path_factory.mktemp("corpus"), settings)


@needs_voices
def test_corpus_manifests_are_nemo_manifests_of_every_voice(corpus):
    import soundfile as sf

    from mtasr.training.corpus import HELD_OUT_VOICE_MANIFEST, TEST_MANIFEST, TRAIN_MANIFEST, read_manifest
    from mtasr.training.voices import HELD_OUT_VOICES, VOICES

    train, test = read_manifest(corpus / TRAIN_MANIFEST), read_manifest(corpus / TEST_MANIFEST)
    held_out = read_manifest(corpus / HELD_OUT_VOICE_MANIFEST)
    training_voices = {v.name for v in VOICES} - set(HELD_OUT_VOICES)
    assert len(train) == 24 * len(training_voices) and len(test) == 4 * len(training_voices)
    assert {e["speaker_id"] for e in train} == {e["speaker_id"] for e in test} == training_voices
    # The held-out voice speaks only held-out sentences, in its own manifest.
    assert {e["speaker_id"] for e in held_out} == set(HELD_OUT_VOICES) and len(held_out) == 4 * len(HELD_OUT_VOICES)
    assert not {e["text"] for e in train} & ({e["text"] for e in test} | {e["text"] for e in held_out})
    for entry in train[::37] + test[::11] + held_out:
        assert set(entry) == {"audio_filepath", "duration", "text", "speaker_id"}
        audio, rate = sf.read(entry["audio_filepath"])
        assert rate == 16000 and audio.ndim == 1
        assert entry["duration"] == pytest.approx(len(audio) / rate, abs=1e-3)
        assert 0.5 < entry["duration"] < 8


FRAME_S = 0.08  # one diarizer target frame
# Steps the recipes may take to memorise a handful of mixtures (measured: see the tests).
MEMORISE_ASR_STEPS = 200
# The diarizer's F1 on the corpus with two-sentence utterances: 0.69 / 0.85 / 0.96 / 1.00 at steps
# 50 / 100 / 150 / 200 of a 300-step run; a 150-step run decays its learning rate too early (0.89).
MEMORISE_DIARIZER_STEPS = 300


def arrival_order_of(turns: list[dict], window: tuple[float, float]) -> list[str]:
    """The speakers of the RTTM turns inside `window`, in the order they first speak there."""
    start, end = window
    inside = [t for t in turns if t["end_time"] > start and t["start_time"] < end]
    inside.sort(key=lambda t: t["start_time"])
    return list(dict.fromkeys(t["speaker"] for t in inside))


def assert_slot_voices_name_the_slots(slot_voices, voices: list[str], order: list[str], what: str):
    """The voice head's labels: slot k holds the k-th speaker to arrive; a voice not in `voices` is none."""
    from mtasr.training.diarizer_model import NO_VOICE

    expected = [voices.index(v) if v in voices else NO_VOICE for v in order][:4]
    assert slot_voices.tolist() == expected + [NO_VOICE] * (4 - len(expected)), what


def assert_targets_match_turns(targets: np.ndarray, turns: list[dict], window: tuple[float, float], what: str):
    """`targets` [frames, 4] (NeMo's arrival-ordered speaker activity of a cut spanning `window` seconds of
    its recording) against RTTM turns of that recording: same speakers, same order, same frames up to
    the frame each turn edge falls in."""
    start, end = window
    turns = [t for t in turns if t["end_time"] > start and t["start_time"] < end]
    order = arrival_order_of(turns, window)
    from_rttm = np.zeros_like(targets)
    centres = start + (np.arange(targets.shape[0]) + 0.5) * FRAME_S
    for turn in turns:
        active = (centres >= turn["start_time"]) & (centres < turn["end_time"])
        from_rttm[active, order.index(turn["speaker"])] = 1
    assert not targets[:, len(order) :].any(), f"{what}: activity beyond the recording's speakers"
    assert (targets[:, : len(order)].sum(axis=0) > 0).all(), f"{what}: a speaker of the RTTM has no target"
    disagree = np.abs(targets - from_rttm).sum(axis=0)
    edges = 2 * np.bincount([order.index(t["speaker"]) for t in turns], minlength=4)
    assert (disagree <= edges).all(), f"{what}: per-speaker disagreeing frames {disagree} (allowed {edges})"


# The voice head's classes in these tests: every voice but one, so a voice outside them is seen too.
VOICE_NAMES = sorted(voice.name for voice in VOICES)[1:]


def test_the_voice_head_learns_from_frames_where_exactly_one_speaker_talks():
    import torch

    from mtasr.training.diarizer_model import NO_VOICE, frame_voices

    targets = torch.tensor([[[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]])
    slot_voices = torch.tensor([[7, 2, NO_VOICE, NO_VOICE]])  # slot 2: a voice outside the classes
    assert frame_voices(targets, slot_voices).tolist() == [[NO_VOICE, 7, NO_VOICE, 2, NO_VOICE]]


@needs_voices
def test_simulator_speaker_targets_agree_with_the_mixture_rttm(corpus, tmp_path):
    """The diarizer's training targets (NeMo's `speaker_to_target` on lsmix mixtures) equal the turns of
    the RTTM written for the same simulated mixture."""
    from mtasr.client.formats import read_rttm, write_rttm
    from mtasr.training.corpus import TRAIN_MANIFEST
    from mtasr.training.diarizer import mixture_batch
    from mtasr.training.simulation import draw_mixtures, mixture_segments

    for i, mixture in enumerate(draw_mixtures(corpus / TRAIN_MANIFEST, {1: 2, 2: 4, 3: 4, 4: 2}, seed=5)):
        rttm = tmp_path / f"mix{i}.rttm"
        write_rttm(mixture_segments(mixture, f"mix{i}"), rttm)
        _, _, targets, lengths, slot_voices = mixture_batch([mixture], 4, 0.01, 8, voices=VOICE_NAMES)
        assert len({t.cut.supervisions[0].speaker for t in mixture.tracks}) == len(
            {t["speaker"] for t in read_rttm(rttm)}
        )
        assert_targets_match_turns(targets[0, : int(lengths[0])].numpy(), read_rttm(rttm), (0.0, 1e9), f"mix{i}")
        order = arrival_order_of(read_rttm(rttm), (0.0, 1e9))
        assert_slot_voices_name_the_slots(slot_voices[0], VOICE_NAMES, order, f"mix{i}")


@needs_voices
def test_conversation_simulator_targets_agree_with_the_conversation_rttm(corpus, tmp_path):
    """NeMo's `mixture_loader` cuts stretches out of our conversations; its targets equal the session RTTM
    over that stretch, a returning speaker keeping its slot."""
    import random

    from nemo.collections.asr.parts.utils.asr_multispeaker_utils import MultiSpeakerMixtureGenerator

    from mtasr.client.formats import read_rttm
    from mtasr.training.corpus import TRAIN_MANIFEST
    from mtasr.training.diarizer import mixture_batch
    from mtasr.training.evalset import REFERENCE_DIR, write_conversations

    sessions = write_conversations(corpus / TRAIN_MANIFEST, tmp_path, 6, {2: 0.5, 3: 0.5}, seed=3)
    generator = MultiSpeakerMixtureGenerator(
        manifest_filepath=str(sessions), sample_rate=16000, simulator_type="mixture_loader", min_duration=6.0
    )
    random.seed(11)
    returning = 0
    for i in range(8):
        cut = next(generator)
        session = cut.supervisions[0].recording_id
        turns = read_rttm(tmp_path / REFERENCE_DIR / f"{session}.rttm")
        _, _, targets, lengths, slot_voices = mixture_batch([cut], 4, 0.01, 8, voices=VOICE_NAMES)
        targets = targets[0, : int(lengths[0])].numpy()
        window = (cut.start, cut.start + cut.duration)
        assert_targets_match_turns(targets, turns, window, f"cut {i}")
        assert_slot_voices_name_the_slots(slot_voices[0], VOICE_NAMES, arrival_order_of(turns, window), f"cut {i}")
        starts = np.flatnonzero(np.diff(np.concatenate([[0], targets[:, 0]])) > 0)
        returning += len(starts) > 1
    assert returning, "some stretch should have a speaker who pauses and comes back"


@needs_voices
def test_a_stage_draws_its_conversations_with_its_own_speaker_counts(corpus, tmp_path):
    """`DiarizerRecipe.conversation_speakers` (the many-speaker stage: mostly three and four) decides who talks
    in the conversations a stage mixes in, at the recipe's share of the draws."""
    from mtasr.training.corpus import TRAIN_MANIFEST
    from mtasr.training.diarizer import DIARIZER_STAGES
    from mtasr.training.simulation import mix_in_conversations, simulator_input_cfg

    recipe = DIARIZER_STAGES["many_speaker_conversations"]
    assert sum(w for n, w in recipe.conversation_speakers.items() if n >= 3) >= 0.5
    train = {"input_cfg": simulator_input_cfg(corpus / TRAIN_MANIFEST, {1: 0.5, 2: 0.5})}
    mix_in_conversations(
        train, corpus / TRAIN_MANIFEST, tmp_path, 8, recipe.conversation_weight, 1, speakers={3: 0.5, 4: 0.5}
    )
    rows = [json.loads(line) for line in (tmp_path / "sessions.json").read_text().splitlines()]
    assert len(rows) == 8
    assert {row["session_id"].split("-")[0] for row in rows} <= {"conv3", "conv4"}
    weights = [entry["weight"] for entry in train["input_cfg"]]
    assert weights[-1] == recipe.conversation_weight
    assert sum(weights) == pytest.approx(1.0)


@needs_voices
def test_the_one_speaker_baseline_finds_all_speech_and_tells_no_speakers_apart(corpus, tmp_path):
    """The diarizer's yardstick in `mtasr evaluate`: no error on one speaker; on two, nothing false and no
    speech missed outside overlaps, the other speaker's time confused, at most half of it all."""
    from mtasr.training.corpus import TRAIN_MANIFEST
    from mtasr.training.evalset import write_conversations
    from mtasr.training.evaluate import one_speaker_baseline, score_by_speaker_count

    write_conversations(corpus / TRAIN_MANIFEST, tmp_path / "set", 4, {1: 0.5, 2: 0.5}, seed=5)
    one_speaker_baseline(tmp_path / "set", tmp_path / "baseline")
    groups = score_by_speaker_count(tmp_path / "baseline", tmp_path / "set")
    assert set(groups) == {"conv1", "conv2"}, groups
    assert groups["conv1"]["der"]["error_rate"] == pytest.approx(0.0, abs=1e-6)
    two = groups["conv2"]["der"]
    assert two["false_alarm_rate"] == pytest.approx(0.0, abs=1e-6)
    assert two["confusion_rate"] > 0.1
    assert two["error_rate"] <= 0.5 + 1e-6


def test_reference_activity_gives_each_speaker_a_slot_in_order_of_first_speech(tmp_path):
    from mtasr.client.formats import make_segment, write_rttm
    from mtasr.training.evaluate import reference_activity

    turns = [("bob", 0.4, 1.2), ("ann", 1.0, 2.0), ("bob", 2.4, 2.8)]
    write_rttm([make_segment("s", who, start, end) for who, start, end in turns], tmp_path / "s.rttm")
    activity = reference_activity(tmp_path / "s.rttm", 0.08, 40, 4)
    assert activity.shape == (40, 4)
    assert np.flatnonzero(activity[:, 0]).tolist() == [*range(5, 15), *range(30, 35)]  # bob spoke first
    assert np.flatnonzero(activity[:, 1]).tolist() == list(range(12, 25))
    assert not activity[:, 2:].any()
    with pytest.raises(ValueError, match="more than the 1 speaker slots"):
        reference_activity(tmp_path / "s.rttm", 0.08, 40, 1)


@needs_voices
def test_the_asr_given_the_reference_speakers_sees_exactly_their_turns(corpus, tmp_path):
    """`mtasr evaluate`'s reference-speaker run: the served stages with the diarizer's probabilities replaced by
    the reference turns frame for frame, so words come only from the slots of the session's own speakers."""
    import soundfile as sf

    from mtasr.client.formats import SEGLST_SUFFIX, read_seglst
    from mtasr.deployment import chunk_samples
    from mtasr.local_pipeline import LocalPipeline
    from mtasr.protocol import speaker_name
    from mtasr.training.corpus import TRAIN_MANIFEST
    from mtasr.training.defaults import DEFAULT_REPOSITORY
    from mtasr.training.evalset import AUDIO_DIR, REFERENCE_DIR, write_conversations
    from mtasr.training.evaluate import ReferenceSpeakers, reference_activity, transcribe_with_reference_speakers

    write_conversations(corpus / TRAIN_MANIFEST, tmp_path / "set", 3, {1: 0.3, 2: 0.7}, seed=3)
    pipeline = LocalPipeline(DEFAULT_REPOSITORY)
    wav = sorted((tmp_path / "set" / AUDIO_DIR).glob("*.wav"))[-1]
    audio, _ = sf.read(wav, dtype="float32")
    activity = reference_activity(tmp_path / "set" / REFERENCE_DIR / f"{wav.stem}.rttm", 0.08, 1000, 4)
    pipeline.stages["diarization"] = ReferenceSpeakers(pipeline.stages["diarization"], activity)
    served = pipeline.speaker_activity(audio, chunk_samples(pipeline.manifest))
    assert np.array_equal(served, activity[: len(served)]) and activity[: len(served)].any()

    transcribe_with_reference_speakers(DEFAULT_REPOSITORY, tmp_path / "set", tmp_path / "hyp")
    for ref in (tmp_path / "set" / REFERENCE_DIR).glob(f"*{SEGLST_SUFFIX}"):
        speakers = {s["speaker"] for s in read_seglst(ref)}
        hyp = read_seglst(tmp_path / "hyp" / ref.name)
        assert hyp, f"{ref.name}: no words at all"
        assert {s["speaker"] for s in hyp} <= {speaker_name(k) for k in range(len(speakers))}, ref.name


def test_diarizer_masks_are_what_serving_builds_where_the_diarizer_found_the_speaker():
    """A row takes the matched slot's probability as its target mask and the other slots above the threshold as
    its background; a speaker the diarizer missed, merged with another, or lost to a slot that follows another
    speaker, keeps the oracle masks."""
    import torch

    from mtasr.training.diarizer_masks import masks_from_probabilities

    frames = 20
    speaker = torch.zeros(4, frames)
    speaker[:, 2:12] = 1  # every row's target speaker talks in frames 2..11
    background = torch.zeros(4, frames, dtype=torch.bool)
    background[:3, 12:18] = True  # another speaker in frames 12..17
    background[3, 4:12] = True  # row 3: another speaker inside the target's turn
    probs = torch.zeros(4, frames + 1, 4)  # the diarizer may give a frame more
    # row 0: found in slot 2 (soft, a frame late), the other speaker in slot 0, a spurious burst of slot 3
    probs[0, 3:12, 2] = 0.8
    probs[0, 12:18, 0] = 0.9
    probs[0, 5:7, 3] = 0.7
    # row 1: missed (only a weak slot)
    probs[1, 2:12, 1] = 0.3
    # row 2: slot 1 covers both speakers
    probs[2, 2:18, 1] = 0.9
    # row 3: the target's slot drops when the other speaker starts; the other's slot is the best match left
    probs[3, 2:5, 0] = 0.9
    probs[3, 4:12, 1] = 0.9
    target, new_background, replaced = masks_from_probabilities(probs, speaker, background, min_iou=0.5)

    assert replaced.tolist() == [True, False, False, False]
    assert torch.equal(target[0], probs[0, :frames, 2])
    expected = torch.zeros(frames, dtype=torch.bool)
    expected[12:18] = expected[5:7] = True
    assert torch.equal(new_background[0], expected)
    assert torch.equal(target[1:], speaker[1:]) and torch.equal(new_background[1:], background[1:])


def test_the_served_diarizer_gives_the_asr_masks_of_a_training_mixture(corpus):
    """The default diarizer, run as the ASR's diarizer_masks stage runs it, finds the speakers of simulated
    training mixtures: most rows take its masks, and those agree with the oracle turns on most frames."""
    import torch

    from mtasr.training.corpus import TRAIN_MANIFEST
    from mtasr.training.diarizer import mixture_batch
    from mtasr.training.diarizer_masks import DiarizerMasks, DiarizerMaskSettings
    from mtasr.training.simulation import draw_mixtures

    masks = DiarizerMasks(DiarizerMaskSettings(Path("default_checkpoints/diarizer.nemo"), fraction=1.0))
    mixtures = draw_mixtures(corpus / TRAIN_MANIFEST, {1: 2, 2: 3, 3: 3}, seed=7)
    audio, lens, targets, frames = mixture_batch(mixtures, 4, 0.01, 8)
    speaker, background = targets[:, :, 0], targets[:, :, 1:].amax(-1) > 0
    new_speaker, new_background = masks(audio, lens, speaker, background)

    assert masks.offered == len(mixtures) and masks.used_share() >= 0.6
    changed = [i for i in range(len(mixtures)) if not torch.equal(new_speaker[i], speaker[i])]
    assert len(changed) == masks.replaced

    def agreement(i: int, slot: int) -> float:
        n = int(frames[i])
        return float(((new_speaker[i, :n] > 0.5) == (targets[i, :n, slot] > 0.5)).float().mean())

    assert np.mean([agreement(i, 0) for i in changed]) >= 0.85
    for i in changed:  # each row's mask follows its own speaker, not another of the mixture
        others = [k for k in range(1, 4) if targets[i, :, k].any()]
        assert all(agreement(i, 0) > agreement(i, k) for k in others), (i, [agreement(i, k) for k in range(4)])


@needs_voices
def test_conversations_of_a_set_with_few_utterances_per_voice_reuse_them(corpus, tmp_path):
    """The fixture's dev side has 2 utterances per voice: a conversation speaks each once, then again."""
    from mtasr.training.corpus import DEV_MANIFEST
    from mtasr.training.evalset import REFERENCE_DIR, write_conversations

    sessions = write_conversations(corpus / DEV_MANIFEST, tmp_path, 4, {1: 0.5, 2: 0.5}, seed=7, duration_s=20.0)
    assert len(sessions.read_text().splitlines()) == 4
    assert len(list((tmp_path / REFERENCE_DIR).glob("*.rttm"))) == 4


@needs_voices
def test_the_selection_set_speaks_only_validation_sentences_never_the_reported_sets(corpus, tmp_path):
    """Candidates are chosen on the selection set and reported on the evaluation set: no sentence is in both, the
    selection set's 5-minute conversation included."""
    from mtasr.client.formats import SEGLST_SUFFIX, read_seglst
    from mtasr.training.corpus import DEV_MANIFEST, HELD_OUT_VOICE_MANIFEST, TEST_MANIFEST, read_manifest
    from mtasr.training.evalset import LONG_SESSION, REFERENCE_DIR, SELECTION_SET, EvalSetSettings, build_evalset

    def sentences(evalset: Path) -> set[str]:
        return {s["words"] for ref in (evalset / REFERENCE_DIR).glob(f"*{SEGLST_SUFFIX}") for s in read_seglst(ref)}

    small = {1: 1, 2: 2, 3: 2}
    selection = sentences(build_evalset(corpus, tmp_path / "selection", replace(SELECTION_SET, sessions=small)))
    reported = sentences(
        build_evalset(corpus, tmp_path / "reported", EvalSetSettings(sessions=small, long_conversation=False))
    )
    assert selection <= {e["text"] for e in read_manifest(corpus / DEV_MANIFEST)}
    test_sentences = {e["text"] for m in (TEST_MANIFEST, HELD_OUT_VOICE_MANIFEST) for e in read_manifest(corpus / m)}
    assert reported <= test_sentences
    assert selection and reported and not selection & reported
    assert not list((tmp_path / "selection").glob("audio/voice-*"))
    assert (tmp_path / "selection" / REFERENCE_DIR / f"{LONG_SESSION}{SEGLST_SUFFIX}").is_file()


@needs_voices
def test_a_conversation_stage_validates_on_held_out_conversations_too(corpus, tmp_path):
    """Its monitored F1 must see speakers who pause and return: fixed stretches of conversations of the
    dev sentences join the lsmix validation mixtures."""
    from lhotse import CutSet

    from mtasr.export.sortformer import sortformer_config
    from mtasr.training.corpus import DEV_MANIFEST, TRAIN_MANIFEST, read_manifest
    from mtasr.training.diarizer import VALIDATION_CONVERSATIONS, DiarizerRecipe, _data_config
    from mtasr.training.simulation import write_validation_cuts

    # The fixture's dev side is too small for conversations: its training side split by sentence instead.
    entries = read_manifest(corpus / TRAIN_MANIFEST)
    sentences = sorted({e["text"] for e in entries})
    held_out = set(sentences[::2])
    split = tmp_path / "corpus"
    split.mkdir()
    for name, keep in ((TRAIN_MANIFEST, False), (DEV_MANIFEST, True)):
        lines = [json.dumps(e) for e in entries if (e["text"] in held_out) == keep]
        (split / name).write_text("\n".join(lines) + "\n")
    lsmix = write_validation_cuts(split / DEV_MANIFEST, tmp_path / "validation_cuts.jsonl.gz", {1: 2, 2: 2})
    recipe = DiarizerRecipe(conversations=4)
    _, validation = _data_config(recipe, split / TRAIN_MANIFEST, lsmix, sortformer_config("small"))
    cuts = list(CutSet.from_file(validation["cuts_path"]))
    recordings = [getattr(c, "recording", None) for c in cuts]  # lsmix mixtures are MixedCuts: none
    stretches = [
        c for c, r in zip(cuts, recordings, strict=True) if r and "validation_conversations" in r.sources[0].source
    ]
    assert len(cuts) == 4 + VALIDATION_CONVERSATIONS and len(stretches) == VALIDATION_CONVERSATIONS
    assert all(c.supervisions for c in stretches)
    spoken = {s.text for c in stretches for s in c.supervisions if s.text}
    assert spoken and spoken <= held_out


@needs_voices
def test_an_asr_conversation_stage_learns_each_speakers_words_of_a_stretch_in_order(corpus, tmp_path):
    """Half its draws are stretches of conversations: the lsmix entries keep their proportions in the other half,
    and a stretch's target text for a speaker is that speaker's sentences inside it, in the order spoken."""
    import random

    from nemo.collections.asr.parts.utils.asr_multispeaker_utils import (
        MultiSpeakerMixtureGenerator,
        speaker_to_target,
    )

    from mtasr.training.asr import AsrRecipe, _data_config
    from mtasr.training.corpus import TRAIN_MANIFEST

    recipe = AsrRecipe(speaker_weights={1: 0.25, 2: 0.75}, conversations=6, conversation_weight=0.5)
    manifest = corpus / TRAIN_MANIFEST
    train, _ = _data_config(recipe, manifest, tmp_path / "validation_cuts.jsonl.gz", manifest)
    weights = [(e["simulator_type"], e["weight"]) for e in train["input_cfg"]]
    assert weights == [("lsmix", 0.125), ("lsmix", 0.375), ("mixture_loader", 0.5)]

    random.seed(0)
    loader = MultiSpeakerMixtureGenerator(train["input_cfg"][-1]["manifest_filepath"], 16000, "mixture_loader")
    for _ in range(8):
        cut = next(loader)
        _, texts = speaker_to_target(cut, num_speakers=4, return_text=True)
        inside = sorted(  # lhotse's SupervisionSet.find allows 1 ms either side
            (s for s in cut.supervisions if cut.start - 1e-3 <= s.start and s.end <= cut.end + 1e-3),
            key=lambda s: s.start,
        )
        speakers = list(dict.fromkeys(s.speaker for s in inside))
        assert texts == [" ".join(s.text for s in inside if s.speaker == who) for who in speakers], (
            cut.start,
            cut.end,
            [(s.speaker, s.start, s.end) for s in cut.supervisions],
        )


@needs_voices
def test_long_conversation_stretches_outlast_the_served_speaker_cache(corpus, tmp_path):
    """The diarizer's long-conversation stage: its conversations run a minute and its stretches outlast the
    speaker cache and FIFO the default diarizer is served with, so training sees the cache compressed, and a
    speaker comes back after it has been compressed."""
    import random

    from nemo.collections.asr.parts.utils.asr_multispeaker_utils import MultiSpeakerMixtureGenerator

    from mtasr.client.formats import read_rttm
    from mtasr.deployment import load_manifest
    from mtasr.training.corpus import TRAIN_MANIFEST
    from mtasr.training.defaults import DEFAULT_REPOSITORY
    from mtasr.training.diarizer import DIARIZER_STAGES, mixture_batch
    from mtasr.training.evalset import REFERENCE_DIR, write_conversations

    recipe = DIARIZER_STAGES["long_conversations"]
    geometry = load_manifest(DEFAULT_REPOSITORY)["diarizer"]["geometry"]
    served_span_s = (geometry["spkcache_len"] + geometry["fifo_len"]) * geometry["frame_len_s"]
    assert recipe.stretch_s > served_span_s and recipe.conversation_s > recipe.stretch_s

    sessions = write_conversations(corpus / TRAIN_MANIFEST, tmp_path, 3, {2: 1.0}, 5, recipe.conversation_s)
    rows = [json.loads(line) for line in sessions.read_text().splitlines()]
    assert all(row["duration"] >= recipe.conversation_s for row in rows)
    generator = MultiSpeakerMixtureGenerator(
        manifest_filepath=str(sessions),
        sample_rate=16000,
        simulator_type="mixture_loader",
        min_duration=recipe.stretch_s,
    )
    random.seed(2)
    long_cuts = 0
    for i in range(6):
        cut = next(generator)
        turns = read_rttm(tmp_path / REFERENCE_DIR / f"{cut.supervisions[0].recording_id}.rttm")
        _, _, targets, lengths, slot_voices = mixture_batch([cut], 4, 0.01, 8, voices=VOICE_NAMES)
        targets = targets[0, : int(lengths[0])].numpy()
        window = (cut.start, cut.start + cut.duration)
        assert_targets_match_turns(targets, turns, window, f"cut {i}")
        assert_slot_voices_name_the_slots(slot_voices[0], VOICE_NAMES, arrival_order_of(turns, window), f"cut {i}")
        if cut.duration >= recipe.stretch_s:
            long_cuts += 1
            late = targets[int(served_span_s / geometry["frame_len_s"]) :]
            assert late.any(axis=0).sum() == 2, f"cut {i}: both speakers speak again after the cache span"
    assert long_cuts >= 3, "most stretches start early enough to run their full length"


def _train_losses(run_dir: Path) -> list[float]:
    from mtasr.training.lightning import training_log

    return [float(r["train_loss"]) for r in training_log(run_dir) if r.get("train_loss")]


@needs_voices
@pytest.mark.slow
def test_short_training_run_trains_restores_exports_and_serves(corpus, tmp_path, caplog):
    """A few dozen real NeMo training steps of both recipes on CPU, then export and the served pipeline."""
    import torch
    from nemo.collections.asr.models import SortformerEncLabelModel
    from nemo.collections.asr.models.multitalker_asr_models import EncDecMultiTalkerRNNTBPEModel
    from serving_client import chunked, tokens_by_speaker

    from mtasr.client.stream import StreamingClient
    from mtasr.export.pipeline import ExportSettings, run_export
    from mtasr.local_pipeline import LocalPipeline
    from mtasr.server import ServerConfig, TritonServer
    from mtasr.training.asr import AsrRecipe, train_asr
    from mtasr.training.corpus import TEST_MANIFEST, read_manifest
    from mtasr.training.diarizer import DiarizerRecipe, train_diarizer
    from mtasr.training.evalset import corpus_conversation
    from mtasr.training.lightning import TrainSettings, training_log

    steps = TrainSettings(
        max_steps=24, batch_size=4, val_every_steps=12, lr=2e-3, warmup_steps=4, progress=False, log_every_steps=1
    )
    asr_recipe = AsrRecipe(size="tiny", train=steps, validation_mixtures={1: 2, 2: 2})
    asr_path = train_asr(corpus, tmp_path / "asr", asr_recipe)
    losses = _train_losses(tmp_path / "asr")
    # Per-step losses vary with the mixtures' lengths: compare the first and last few steps.
    assert np.mean(losses[-4:]) < 0.75 * np.mean(losses[:4]), f"ASR loss did not fall: {losses}"

    # Resume: a longer run in the same folder continues from last.ckpt instead of starting over.
    longer = AsrRecipe(size="tiny", train=replace(steps, max_steps=36), validation_mixtures={1: 2, 2: 2})
    with caplog.at_level(logging.INFO):
        train_asr(corpus, tmp_path / "asr", longer)
    assert any("Restored all states from the checkpoint" in r.getMessage() for r in caplog.records)
    ckpt = torch.load(tmp_path / "asr" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 36
    assert len(_train_losses(tmp_path / "asr")) == 36, "the resumed run keeps the first run's curve"

    restored = EncDecMultiTalkerRNNTBPEModel.restore_from(str(asr_path), map_location="cpu")
    assert restored.cfg.train_ds is None and restored.tokenizer.vocab_size > 0

    diar_steps = replace(steps, max_steps=40, batch_size=8, val_every_steps=20)
    diar_recipe = DiarizerRecipe(size="tiny", train=diar_steps, validation_mixtures={2: 2, 3: 2})
    diar_path = train_diarizer(corpus, tmp_path / "diarizer", diar_recipe)
    diar_losses = _train_losses(tmp_path / "diarizer")
    assert np.mean(diar_losses[-8:]) < np.mean(diar_losses[:8]), f"diarizer loss did not fall: {diar_losses}"
    SortformerEncLabelModel.restore_from(str(diar_path), map_location="cpu")

    # Stage 2 of both curricula: NeMo's fine-tuning path from a .nemo (the diarizer's with conversations).
    # The ASR's on the diarizer's masks (every row offered to it; this little diarizer may find no one).
    short = replace(steps, max_steps=4, val_every_steps=4, warmup_steps=1)
    on_diarizer_masks = replace(asr_recipe, train=short, diarizer_masks=1.0)
    tuned_asr = train_asr(corpus, tmp_path / "asr_tuned", on_diarizer_masks, init_from=asr_path, diarizer=diar_path)
    assert any(r.get("diarizer_masks_used") for r in training_log(tmp_path / "asr_tuned"))
    with_voice_head = replace(diar_recipe, train=short, conversations=4, voice_head_weight=0.5)
    tuned_diar = train_diarizer(corpus, tmp_path / "diar_tuned", with_voice_head, init_from=diar_path)
    assert any(r.get("voice_loss") for r in training_log(tmp_path / "diar_tuned")), "the voice head was not trained"
    before = EncDecMultiTalkerRNNTBPEModel.restore_from(str(asr_path), map_location="cpu").state_dict()
    after = EncDecMultiTalkerRNNTBPEModel.restore_from(str(tuned_asr), map_location="cpu").state_dict()
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before), "fine-tuning changed nothing"
    assert "diarizer_masks" not in EncDecMultiTalkerRNNTBPEModel.restore_from(str(tuned_asr)).cfg  # training only
    assert (tmp_path / "diar_tuned" / "conversations" / "sessions.json").is_file()
    SortformerEncLabelModel.restore_from(str(tuned_diar), map_location="cpu")

    export_dir = tmp_path / "export"
    run_export(tuned_asr, tuned_diar, export_dir, ExportSettings(max_streams_per_batch=2))
    repo = export_dir / "model_repository"
    assert json.loads((repo / "manifest.json").read_text())["checkpoints"]

    # The served pipeline runs the trained weights: its tokens are the in-process pipeline's on this export.
    audio = corpus_conversation(read_manifest(corpus / TEST_MANIFEST), 2, seed=1).audio
    with TritonServer(ServerConfig(model_repository=repo, http_port=0, grpc_port=0, metrics_port=0)) as server:
        client = StreamingClient(server.address("grpc"))
        chunk = client.settings().chunk_samples
        updates = list(client.stream(chunked(audio, chunk)))
    served = {}
    for update in updates:
        for slot, token in zip(update.token_speakers, update.token_ids, strict=True):
            served.setdefault(slot, []).append(token)
    assert updates[-1].seglst is not None
    assert served == tokens_by_speaker(LocalPipeline(repo).transcribe(audio, chunk))


def test_the_command_line_does_not_load_the_training_stack():
    """`mtasr transcribe`, `serve`, `score` run where only the serve extra is installed: building the parser
    (which lists `train`'s defaults) must not import NeMo, omegaconf, torch or lightning."""
    import subprocess
    import sys

    code = (
        "import sys; from mtasr.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('nemo', 'omegaconf', 'torch', 'lightning') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def _best(run_dir: Path, metric: str, pick=min) -> float:
    from mtasr.training.lightning import training_log

    return pick(float(r[metric]) for r in training_log(run_dir) if r.get(metric))


@needs_voices
def test_asr_recipe_memorises_a_few_utterances(corpus, tmp_path):
    """The recipe's model, optimiser and losses can learn at all: four single-speaker utterances, trained on
    themselves, are transcribed almost exactly within a bounded number of CPU steps."""
    from mtasr.training.asr import ASR_TRAIN, SINGLE_SPEAKER, AsrRecipe, train_asr

    steps = replace(ASR_TRAIN, max_steps=MEMORISE_ASR_STEPS, batch_size=4, val_every_steps=50, warmup_steps=30)
    steps = replace(steps, progress=False, log_every_steps=10)
    recipe = AsrRecipe(train=steps, speaker_weights=dict(SINGLE_SPEAKER), validation_mixtures={1: 4}, memorise=True)
    train_asr(corpus, tmp_path / "asr", recipe)
    assert _best(tmp_path / "asr", "val_wer") <= 0.05


@needs_voices
def test_diarizer_recipe_memorises_a_few_mixtures(corpus, tmp_path):
    """The diarizer recipe's counterpart: four 2- and 3-speaker mixtures, trained on themselves, are diarized
    almost exactly (frame F1 of the streaming validation, speakers in arrival order)."""
    from mtasr.training.diarizer import DIARIZER_TRAIN, DiarizerRecipe, train_diarizer

    steps = replace(DIARIZER_TRAIN, max_steps=MEMORISE_DIARIZER_STEPS, batch_size=4, val_every_steps=50)
    steps = replace(steps, warmup_steps=30, progress=False, log_every_steps=10)
    recipe = DiarizerRecipe(train=steps, validation_mixtures={2: 2, 3: 2}, memorise=True)
    train_diarizer(corpus, tmp_path / "diarizer", recipe)
    assert _best(tmp_path / "diarizer", "val_f1_acc", max) >= 0.95


@pytest.mark.parametrize("model, stage", [("diarizer", "conversations"), ("asr", "mixtures_restart")])
def test_a_stage_that_fine_tunes_needs_the_model_it_starts_from(model, stage, tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "mtasr.cli", "train", model, "--stage", stage, "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--init-from" in result.stderr


@pytest.mark.parametrize("model", ["asr", "diarizer"])
def test_a_stage_trained_from_the_command_line_keeps_its_own_seed_unless_told(model):
    """`mtasr train asr|diarizer --stage S` draws what `mtasr train defaults` draws for that stage."""
    from mtasr.cli import build_parser
    from mtasr.training.asr import ASR_STAGES
    from mtasr.training.cli import _train_settings
    from mtasr.training.diarizer import DIARIZER_STAGES

    stages = {"asr": ASR_STAGES, "diarizer": DIARIZER_STAGES}[model]
    parser = build_parser(["train"])
    for name, recipe in stages.items():
        args = parser.parse_args(["train", model, "--stage", name, "--out", "run"])
        assert _train_settings(args, recipe.train) == replace(recipe.train, accelerator="auto", threads=0), name
        args = parser.parse_args(["train", model, "--stage", name, "--out", "run", "--seed", "7"])
        assert _train_settings(args, recipe.train).seed == 7


def test_the_asr_stage_on_the_diarizers_masks_needs_the_diarizer(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "mtasr.cli", "train", "asr", "--stage", "diarizer_masks", "--out", str(tmp_path)]
    cmd += ["--init-from", "default_checkpoints/asr.nemo"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--diarizer" in result.stderr


@pytest.mark.parametrize("model", ["asr", "asr averaging two stages", "diarizer"])
def test_a_curriculum_fine_tunes_each_stage_from_the_one_before(model, tmp_path, monkeypatch):
    """Stage k trains in `<work dir>/<its name>` from stage k-1's model (or the stage its recipe `starts_from`: an
    ASR sibling of an earlier stage); the diarizer's last stage is its result,
    the ASR's its `ASR_RESULT` stage, or the average of those stages when it names several."""
    from mtasr.training import asr, averaging, diarizer

    if model == "asr averaging two stages":
        monkeypatch.setattr(asr, "ASR_RESULT", tuple(asr.ASR_STAGES)[-2:])
        model = "asr"

    module, train_name, stages, curriculum = {
        "asr": (asr, "train_asr", asr.ASR_STAGES, asr.train_asr_curriculum),
        "diarizer": (diarizer, "train_diarizer", diarizer.DIARIZER_STAGES, diarizer.train_diarizer_curriculum),
    }[model]
    calls = []

    def train(corpus, out_dir, recipe, init_from=None, diarizer=None):
        calls.append((out_dir.name, recipe, init_from))
        return out_dir / module.CHECKPOINT_NAME

    monkeypatch.setattr(module, train_name, train)
    averaged = []
    monkeypatch.setattr(averaging, "average_models", lambda paths, out: averaged.append((paths, out)) or out)
    # the ASR's last stage trains on the diarizer's masks
    last = curriculum(tmp_path / "corpus", tmp_path, **({"diarizer": tmp_path / "d.nemo"} if model == "asr" else {}))
    names = list(stages)
    assert len(names) >= 2
    assert [(name, recipe) for name, recipe, _ in calls] == list(stages.items())
    parents = [getattr(stages[n], "starts_from", None) or before for before, n in zip(names, names[1:], strict=False)]
    assert [init for _, _, init in calls] == [None] + [tmp_path / n / module.CHECKPOINT_NAME for n in parents]
    if model == "diarizer":
        assert last == tmp_path / names[-1] / module.CHECKPOINT_NAME and not averaged
    elif len(asr.ASR_RESULT) == 1:  # the ASR's result: its named stage's model
        assert last == tmp_path / asr.ASR_RESULT[0] / module.CHECKPOINT_NAME and not averaged
    else:  # or its named stages averaged
        out = tmp_path / asr.AVERAGED_DIR / asr.CHECKPOINT_NAME
        assert averaged == [([tmp_path / n / asr.CHECKPOINT_NAME for n in asr.ASR_RESULT], out)] and last == out


def test_without_the_diarizer_the_asr_curriculum_stops_before_the_stage_on_its_masks(tmp_path, monkeypatch):
    """`mtasr train defaults` trains the two models side by side: the ASR goes as far as it can without the
    diarizer, and the stage on the diarizer's masks runs once the diarizer is done."""
    from mtasr.training import asr

    calls = []

    def train(corpus, out_dir, recipe, init_from=None, diarizer=None):
        calls.append((out_dir.name, diarizer))
        return out_dir / asr.CHECKPOINT_NAME

    monkeypatch.setattr(asr, "train_asr", train)
    first = [name for name, recipe in asr.ASR_STAGES.items() if recipe.diarizer_masks][0]
    before = list(asr.ASR_STAGES)[: list(asr.ASR_STAGES).index(first)]
    assert asr.train_asr_curriculum(tmp_path, tmp_path) == tmp_path / before[-1] / asr.CHECKPOINT_NAME
    assert calls == [(name, None) for name in before]


def test_averaging_two_models_gives_the_mean_of_their_weights(tmp_path):
    """`training.averaging.average_models`: float weights averaged, everything else (and what all share, such as
    the feature window, bit for bit) the first model's; a model of another architecture is refused."""
    import torch
    from nemo.core.classes.modelPT import ModelPT

    from mtasr.export.random_models import build_random_pair
    from mtasr.training.averaging import average_models

    first, _ = build_random_pair("tiny", tmp_path / "tiny")
    model = ModelPT.restore_from(str(first), map_location="cpu")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    model.save_to(str(tmp_path / "shifted.nemo"))
    out = average_models([first, tmp_path / "shifted.nemo", first], tmp_path / "averaged" / "asr.nemo")
    want = {k: v for k, v in ModelPT.restore_from(str(first), map_location="cpu").state_dict().items()}
    got = ModelPT.restore_from(str(out), map_location="cpu").state_dict()
    params = {name for name, _ in model.named_parameters()}
    assert params and all(torch.allclose(got[k], want[k] + 1 / 3, atol=1e-6) for k in params)
    assert all(torch.equal(got[k], v) for k, v in want.items() if k not in params)
    assert not (tmp_path / "averaged" / "asr.nemo.partial").exists()
    _, diarizer = build_random_pair("tiny", tmp_path / "tiny")
    with pytest.raises(ValueError, match="not the architecture"):
        average_models([first, diarizer], tmp_path / "mixed.nemo")


def test_a_finished_stage_is_returned_not_trained_again(tmp_path):
    """A stage's model file is written last: when it is there (a run copied from another machine, or
    re-run), the stage is done, and nothing else (corpus, checkpoints, NeMo) is needed to go on."""
    from mtasr.training.asr import CHECKPOINT_NAME as ASR_MODEL
    from mtasr.training.asr import train_asr
    from mtasr.training.diarizer import CHECKPOINT_NAME as DIARIZER_MODEL
    from mtasr.training.diarizer import train_diarizer

    for train, name in ((train_asr, ASR_MODEL), (train_diarizer, DIARIZER_MODEL)):
        stage = tmp_path / name
        stage.mkdir()
        (stage / name).write_bytes(b"trained")
        assert train(tmp_path / "no corpus", stage) == stage / name
        assert sorted(p.name for p in stage.iterdir()) == [name]
