"""The single-speaker speech corpus: generated sentences spoken by the flite/festival/espeak-ng voices.

Writes `train.json`, `dev.json` (validation), `test.json`, `held_out_voice.json` and `silence.json`,
NeMo manifests (one JSON object per line with `audio_filepath`, `duration`, `text`, `speaker_id`), and
the WAVs under `wav/<voice>/`. Held-out sentences never occur in training (`text.split_sentences`); the
held-out voices (`voices.HELD_OUT_VOICES`) speak test sentences only, into their own manifest. Each
utterance is spoken at a random level (`level_db`), so the models do not learn one loudness per voice. A finished
corpus records its settings in `corpus.json`; asking again for the same settings reuses it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtasr.training.text import split_sentences
from mtasr.training.voices import HELD_OUT_VOICES, VOICES, Voice, synthesize_to_files

TRAIN_MANIFEST = "train.json"
DEV_MANIFEST = "dev.json"  # validation: held-out sentences of the training voices, not the evaluation's
TEST_MANIFEST = "test.json"
HELD_OUT_VOICE_MANIFEST = "held_out_voice.json"
SETTINGS_FILE = "corpus.json"
SILENCE_SPEAKER = "silence"
SILENCE_MANIFEST = "silence.json"  # wordless clips: for the ASR recipe only (to a diarizer they are no speaker)


@dataclass(frozen=True)
class CorpusSettings:
    # Many more sentences than utterances: each training utterance says sentences no other utterance
    # says (nearly), so the models cannot memorise sentences (3,000 sentences spoken 2-3 times each
    # gave 20 % WER on training sentences and ~50 % on held-out ones, written from memory).
    train_sentences: int = 20000
    test_sentences: int = 150
    dev_sentences: int = 200
    train_utterances_per_voice: int = 1200
    test_utterances_per_voice: int = 40
    dev_utterances_per_voice: int = 20
    # Share of training utterances that say two sentences one after the other: one sentence per
    # utterance taught the model to stop writing after the first sentence of a longer stretch.
    two_sentence_share: float = 0.3
    # Clips of silence or faint noise with no words (SILENCE_MANIFEST): without them the ASR model wrote
    # words for a minute of silence.
    silence_utterances: int = 300
    seed: int = 0
    voices: tuple[str, ...] = tuple(v.name for v in VOICES)
    held_out_voices: tuple[str, ...] = HELD_OUT_VOICES
    level_db: tuple[float, float] = (-12.0, 0.0)  # each utterance's peak level, drawn uniformly (dBFS)


def _assign(
    sentences: list[str], per_voice: int, voices: list[Voice], rng: np.random.Generator, two_share: float = 0.0
) -> list:
    """(voice, sentences) pairs: each voice speaks `per_voice` different sentences, spread over the pool;
    a `two_share` of its utterances say a second sentence after the first."""
    pairs = []
    for voice in voices:
        order = rng.permutation(len(sentences))[: min(per_voice, len(sentences))]
        for i in order:
            said = [sentences[int(i)]]
            if rng.random() < two_share:
                said.append(sentences[int(rng.integers(len(sentences)))])
            pairs.append((voice, tuple(said)))
    return pairs


def _set_level(path: Path, peak_db: float) -> None:
    import soundfile as sf

    audio, rate = sf.read(path, dtype="float32")
    audio *= 10 ** (peak_db / 20) / max(float(np.abs(audio).max()), 1e-6)
    sf.write(path, audio, rate, subtype="PCM_16")


def _synthesize(out_dir: Path, split: str, pairs: list, progress, levels: np.ndarray) -> list[dict]:
    by_voice: dict[str, list] = {}
    for index, (voice, said) in enumerate(pairs):
        path = out_dir / "wav" / voice.name / f"{split}-{index:06d}.wav"
        by_voice.setdefault(voice.name, []).append((voice, said, path, float(levels[index])))
    batches = []
    for items in by_voice.values():
        (items[0][2]).parent.mkdir(parents=True, exist_ok=True)
        batches += [items[i : i + 50] for i in range(0, len(items), 50)]

    def run(batch):
        # A full stop between sentences: the voices pause and end the first one as a sentence.
        durations = synthesize_to_files(batch[0][0], [(". ".join(said), path) for _, said, path, _ in batch])
        for _, _, path, level in batch:
            _set_level(path, level)
        return [
            {"audio_filepath": str(path), "duration": round(d, 4), "text": " ".join(said), "speaker_id": voice.name}
            for (voice, said, path, _), d in zip(batch, durations, strict=True)
        ]

    entries: list[dict] = []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for rows in pool.map(run, batches):
            entries += rows
            progress.update(len(rows))
    return entries


def silence_entries(out_dir: Path, count: int, seed: int) -> list[dict]:
    """`count` 1-6 s clips of digital silence or faint white noise (-70 to -45 dBFS), with no words."""
    import soundfile as sf

    rng = np.random.default_rng([seed, 99])
    folder = Path(out_dir) / "wav" / SILENCE_SPEAKER
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for index in range(count):
        samples = int(rng.uniform(1.0, 6.0) * 16000)
        level = 0.0 if index % 2 == 0 else 10 ** (rng.uniform(-70, -45) / 20)
        path = folder / f"train-{index:06d}.wav"
        sf.write(path, (rng.normal(0, 1, samples) * level).astype(np.float32), 16000, subtype="PCM_16")
        entries.append(
            {"audio_filepath": str(path), "duration": samples / 16000, "text": "", "speaker_id": SILENCE_SPEAKER}
        )
    return entries


def write_manifest(path: Path, entries: list[dict]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))


def validation_manifest(corpus_dir: Path) -> Path:
    """The corpus's dev manifest (sentences training never sees); a corpus without one: its training manifest."""
    dev = Path(corpus_dir) / DEV_MANIFEST
    return dev if dev.is_file() else Path(corpus_dir) / TRAIN_MANIFEST


def read_manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def build_corpus(out_dir: Path, settings: CorpusSettings = CorpusSettings()) -> Path:
    """Synthesise the corpus into `out_dir` (reused when already built with the same settings)."""
    from tqdm import tqdm

    out_dir = Path(out_dir).resolve()
    recorded = out_dir / SETTINGS_FILE
    wanted = dataclasses.asdict(settings)
    wanted = json.loads(json.dumps(wanted))  # tuples as lists, as read back
    if recorded.is_file() and json.loads(recorded.read_text()) == wanted:
        return out_dir
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    voices = [v for v in VOICES if v.name in settings.voices and v.name not in settings.held_out_voices]
    held_out = [v for v in VOICES if v.name in settings.voices and v.name in settings.held_out_voices]
    train_text, test_text, dev_text = split_sentences(
        settings.train_sentences, settings.test_sentences, settings.seed, settings.dev_sentences
    )
    # One random stream per split: the held-out side is the same whatever the size of the training side.
    splits = {
        TRAIN_MANIFEST: ("train", train_text, settings.train_utterances_per_voice, voices),
        TEST_MANIFEST: ("test", test_text, settings.test_utterances_per_voice, voices),
        HELD_OUT_VOICE_MANIFEST: ("heldout", test_text, settings.test_utterances_per_voice, held_out),
        DEV_MANIFEST: ("dev", dev_text, settings.dev_utterances_per_voice, voices),
    }
    plans = {}
    for index, (manifest, (split, sentences, per_voice, speakers)) in enumerate(splits.items()):
        rng = np.random.default_rng([settings.seed, index])
        two_share = settings.two_sentence_share if manifest == TRAIN_MANIFEST else 0.0
        pairs = _assign(sentences, per_voice, speakers, rng, two_share)
        plans[manifest] = (split, pairs, rng.uniform(*settings.level_db, size=len(pairs)))
    total = sum(len(pairs) for _, pairs, _ in plans.values())
    with tqdm(total=total, desc="synthesising corpus", unit="utt") as progress:
        for manifest, (split, pairs, levels) in plans.items():
            write_manifest(out_dir / manifest, _synthesize(out_dir, split, pairs, progress, levels))
    write_manifest(out_dir / SILENCE_MANIFEST, silence_entries(out_dir, settings.silence_utterances, settings.seed))
    recorded.write_text(json.dumps(wanted, indent=1) + "\n")
    return out_dir
