"""Multi-speaker training data: NeMo's `MultiSpeakerMixtureGenerator` (LibriSpeechMix style, "lsmix").

Training reads mixtures straight from the simulator through a lhotse `input_cfg`, as NeMo's
multitalker tutorial does: one entry per speaker count, weighted. Validation needs a fixed set, so
`write_validation_cuts` draws a seeded sample from the same simulator into a lhotse cut manifest.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Share of training mixtures with 1, 2, 3 and 4 speakers.
DEFAULT_SPEAKER_WEIGHTS = {1: 0.25, 2: 0.4, 3: 0.25, 4: 0.1}
MIN_DELAY_S = 0.5  # the simulator starts each next speaker at least this long after the previous one


def simulator_input_cfg(manifest: Path, speaker_weights: dict[int, float] = DEFAULT_SPEAKER_WEIGHTS) -> list[dict]:
    """The lhotse `input_cfg` list that draws lsmix mixtures of the manifest's speakers."""
    return [
        {
            "type": "multi_speaker_simulator",
            "manifest_filepath": str(manifest),
            "simulator_type": "lsmix",
            "num_speakers": n,
            "min_delay": MIN_DELAY_S,
            "weight": weight,
        }
        for n, weight in sorted(speaker_weights.items())
    ]


def conversation_input_cfg(sessions_manifest: Path, weight: float, min_duration_s: float = 6.0) -> dict:
    """An `input_cfg` entry drawing stretches of at least `min_duration_s` from whole conversations
    (NeMo's `mixture_loader` simulator over a SegLST session manifest)."""
    return {
        "type": "multi_speaker_simulator",
        "manifest_filepath": str(sessions_manifest),
        "simulator_type": "mixture_loader",
        "min_duration": min_duration_s,
        "weight": weight,
    }


# Share of training conversations with n speakers (`mix_in_conversations`).
CONVERSATION_SPEAKERS = {1: 0.2, 2: 0.4, 3: 0.3, 4: 0.1}


def mix_in_conversations(
    train: dict,
    corpus_manifest: Path,
    folder: Path,
    count: int,
    weight: float,
    seed: int,
    conversation_s: float | None = None,
    stretch_s: float = 6.0,
    speakers: dict[int, float] = CONVERSATION_SPEAKERS,
) -> None:
    """Give `weight` of `train`'s draws to stretches of `count` conversations of `corpus_manifest` (written into
    `folder` once: `evalset.write_conversations`, `speakers` the share with n speakers), the lsmix entries the
    rest.

    In lsmix mixtures each speaker says one utterance; in conversations speakers pause and come back, as in
    the evaluation set and in meetings."""
    from mtasr.training.evalset import write_conversations

    sessions = Path(folder) / "sessions.json"
    if not sessions.is_file():
        write_conversations(corpus_manifest, Path(folder), count, speakers, seed, conversation_s)
    for entry in train["input_cfg"]:
        entry["weight"] *= 1.0 - weight
    train["input_cfg"].append(conversation_input_cfg(sessions, weight, stretch_s))


def data_configs(
    common: dict,
    manifest: Path,
    val_cuts: Path,
    speaker_weights: dict[int, float],
    seed: int,
    memorise: bool = False,
) -> tuple[dict, dict]:
    """A recipe's lhotse `train_ds` (the simulator, endless) and `validation_ds` (the fixed cuts).

    `memorise`: train on the validation cuts themselves, the check that a recipe can learn at all (a
    handful of mixtures must be memorised within minutes).
    `defer_setup`: NeMo builds the loaders when `trainer.fit` starts, not in the model's constructor,
    so a recipe that supplies its own (the diarizer) or only restores a checkpoint builds none twice."""
    common = {**common, "defer_setup": True}
    source = {"cuts_path": str(val_cuts)} if memorise else {"input_cfg": simulator_input_cfg(manifest, speaker_weights)}
    train = {**common, **source, "shuffle": True, "shard_seed": seed, "seed": seed}
    validation = {**common, "cuts_path": str(val_cuts), "shuffle": False, "force_finite": True}
    return train, validation


def make_generator(manifest: Path, n_speakers: int):
    """NeMo's simulator for `n_speakers`-speaker mixtures of the manifest's utterances."""
    from nemo.collections.asr.parts.utils.asr_multispeaker_utils import MultiSpeakerMixtureGenerator

    return MultiSpeakerMixtureGenerator(
        manifest_filepath=str(manifest),
        sample_rate=16000,
        simulator_type="lsmix",
        min_delay=MIN_DELAY_S,
        num_speakers=n_speakers,
    )


@contextmanager
def _seeded_random(seed: int) -> Iterator[None]:
    """NeMo's simulator draws from Python's global `random`: seed it for a reproducible draw, restore it after."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def draw_mixtures(manifest: Path, counts: dict[int, int], seed: int) -> list:
    """`counts[n]` lsmix MixedCuts of n speakers each, reproducible from `seed`."""
    cuts = []
    with _seeded_random(seed):
        for n, count in sorted(counts.items()):
            generator = make_generator(manifest, n)
            cuts += [next(generator) for _ in range(count)]
    return cuts


def draw_stretches(sessions_manifest: Path, count: int, min_duration_s: float, seed: int) -> list:
    """`count` stretches of conversations, as NeMo's `mixture_loader` simulator cuts them for training (at least
    `min_duration_s` where the conversation goes on that long), reproducible from `seed`, with string ids."""
    from nemo.collections.asr.parts.utils.asr_multispeaker_utils import MultiSpeakerMixtureGenerator

    with _seeded_random(seed):
        generator = MultiSpeakerMixtureGenerator(
            manifest_filepath=str(sessions_manifest),
            sample_rate=16000,
            simulator_type="mixture_loader",
            min_duration=min_duration_s,
        )
        cuts = [next(generator) for _ in range(count)]
    for cut in cuts:
        cut.supervisions = _string_ids(cut.supervisions)
    return cuts


def write_validation_cuts(manifest: Path, out_path: Path, counts: dict[int, int], seed: int = 1234) -> Path:
    """A fixed lhotse cut manifest (`*.jsonl.gz`) of simulated mixtures for validation."""
    from lhotse import CutSet

    CutSet.from_cuts(_with_string_ids(cut) for cut in draw_mixtures(manifest, counts, seed)).to_file(str(out_path))
    return out_path


def _with_string_ids(mixture):
    """A mixture whose tracks' supervisions have string ids (`_string_ids`)."""
    for track in mixture.tracks:
        track.cut.supervisions = _string_ids(track.cut.supervisions)
    return mixture


def _string_ids(supervisions: list) -> list:
    """The simulator's supervisions carry `uuid.UUID` ids, which lhotse cannot write: copies with strings."""
    from lhotse.utils import fastcopy

    return [fastcopy(s, id=str(s.id), recording_id=str(s.recording_id)) for s in supervisions]


def mixture_segments(mixture, session: str) -> list:
    """A simulated mixture's speaker turns (SegLST segments: who speaks when, and what) for references."""
    from mtasr.client.formats import make_segment

    segments = []
    for track in mixture.tracks:
        for sup in track.cut.supervisions:
            start = track.offset + max(sup.start, 0.0)
            end = track.offset + min(sup.end, track.cut.duration)
            segments.append(make_segment(session, str(sup.speaker), start, end, sup.text or ""))
    return sorted(segments, key=lambda s: (s["start_time"], s["speaker"]))
