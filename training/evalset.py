"""The fixed evaluation set: 1-, 2- and 3-speaker conversations of held-out sentences, with references.

Built from the corpus's test utterances (sentences never seen in training), laid out by
`mtasr.mixtures.compose` (every change of speaker overlaps by 0.4-1 s), regenerated
deterministically from a seed instead of committed as audio. Writes

    audio/<session>.wav
    ref/<session>.seglst.json, ref/<session>.rttm
    stm/<session>.stm        (the same words for STM tools; beside the SegLST, `mtasr score` would
                              refuse a session given twice)

so that `mtasr transcribe audio/*.wav -o hyp/ && mtasr score hyp/ ref/` scores a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mtasr.client.formats import (
    RTTM_SUFFIX,
    SEGLST_SUFFIX,
    STM_SUFFIX,
    make_segment,
    write_rttm,
    write_seglst,
    write_stm,
)
from mtasr.training.corpus import TEST_MANIFEST, read_manifest

from mtasr.mixtures import Conversation, compose

AUDIO_DIR = "audio"
REFERENCE_DIR = "ref"
STM_DIR = "stm"


@dataclass(frozen=True)
class EvalSetSettings:
    sessions: dict[int, int] = field(default_factory=lambda: {1: 8, 2: 8, 3: 6})  # speakers -> sessions
    seed: int = 2026


def session_name(n_speakers: int, index: int) -> str:
    return f"spk{n_speakers}-{index:02d}"


def corpus_conversation(test_entries: list[dict], n_speakers: int, seed: int) -> Conversation:
    """A conversation of `n_speakers` corpus voices speaking their held-out utterances."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    by_voice: dict[str, list[dict]] = {}
    for entry in test_entries:
        by_voice.setdefault(entry["speaker_id"], []).append(entry)
    names = sorted(by_voice)
    if len(names) < n_speakers:
        raise ValueError(f"the corpus has {len(names)} voices; a {n_speakers}-speaker conversation needs more")
    voices = [names[int(i)] for i in rng.choice(len(names), n_speakers, replace=False)]
    queues = {v: [by_voice[v][int(i)] for i in rng.permutation(len(by_voice[v]))] for v in voices}

    def speak(speaker: int):
        entry = queues[voices[speaker]].pop()
        audio, _ = sf.read(entry["audio_filepath"], dtype="float32")
        return speaker, entry["text"], audio

    return compose(speak, n_speakers, rng, voices=voices)


def reference_segments(conversation: Conversation, session: str) -> list:
    return [
        make_segment(session, conversation.voices[s.speaker], round(s.start_s, 4), round(s.end_s, 4), s.text)
        for s in conversation.segments
    ]


def write_session(conversation: Conversation, session: str, out_dir: Path) -> Path:
    """The session's WAV and its SegLST/RTTM (and STM) references; returns the WAV path."""
    import soundfile as sf

    audio_path = out_dir / AUDIO_DIR / f"{session}.wav"
    ref, stm = out_dir / REFERENCE_DIR / session, out_dir / STM_DIR / session
    for folder in (audio_path.parent, ref.parent, stm.parent):
        folder.mkdir(parents=True, exist_ok=True)
    sf.write(audio_path, conversation.audio, conversation.sample_rate, subtype="PCM_16")
    segments = reference_segments(conversation, session)
    write_seglst(segments, ref.with_name(session + SEGLST_SUFFIX))
    write_rttm(segments, ref.with_name(session + RTTM_SUFFIX))
    write_stm(segments, stm.with_name(session + STM_SUFFIX))
    return audio_path


def write_conversations(
    corpus_manifest: Path, out_dir: Path, count: int, speakers: dict[int, float], seed: int
) -> Path:
    """`count` training conversations (speakers drawn by weight) for NeMo's `mixture_loader` simulator:
    WAV + SegLST each, and `sessions.json` (audio_filepath, seglst_filepath, session_id, duration).

    Unlike lsmix mixtures (one utterance per speaker), speakers here pause and come back, which a
    streaming diarizer must learn to keep in the same slot."""
    import json as json_module

    out_dir = Path(out_dir).resolve()
    entries = read_manifest(Path(corpus_manifest))
    rng = np.random.default_rng(seed)
    counts, weights = zip(*sorted(speakers.items()), strict=True)
    rows = []
    for index in range(count):
        n = int(rng.choice(counts, p=np.asarray(weights) / sum(weights)))
        session = f"conv{n}-{index:05d}"
        conversation = corpus_conversation(entries, n, seed * 100003 + index)
        audio_path = write_session(conversation, session, out_dir)
        rows.append(
            {
                "audio_filepath": str(audio_path),
                "seglst_filepath": str(out_dir / REFERENCE_DIR / f"{session}{SEGLST_SUFFIX}"),
                "session_id": session,
                "duration": round(conversation.duration_s, 4),
            }
        )
    manifest = out_dir / "sessions.json"
    manifest.write_text("".join(json_module.dumps(r) + "\n" for r in rows))
    return manifest


def build_evalset(corpus_dir: Path, out_dir: Path, settings: EvalSetSettings = EvalSetSettings()) -> Path:
    """Write the evaluation set into `out_dir` (replacing what was there)."""
    import shutil

    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    entries = read_manifest(Path(corpus_dir) / TEST_MANIFEST)
    for n_speakers, count in sorted(settings.sessions.items()):
        for index in range(count):
            seed = settings.seed + 1000 * n_speakers + index
            write_session(corpus_conversation(entries, n_speakers, seed), session_name(n_speakers, index), out_dir)
    (out_dir / "evalset.json").write_text(
        json.dumps({"sessions": {str(k): v for k, v in settings.sessions.items()}, "seed": settings.seed}) + "\n"
    )
    return out_dir
