"""The single-speaker speech corpus: generated sentences spoken by the flite/festival/espeak-ng voices.

Writes `train.json`, `test.json` and `held_out_voice.json`, NeMo manifests (one JSON object per line
with `audio_filepath`, `duration`, `text`, `speaker_id`), and the WAVs under `wav/<voice>/`. Test
sentences never occur in training (`text.split_sentences`); the held-out voices
(`voices.HELD_OUT_VOICES`) speak test sentences only, into their own manifest. Each utterance is
spoken at a random level (`level_db`), so the models do not learn one loudness per voice. A finished
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
TEST_MANIFEST = "test.json"
HELD_OUT_VOICE_MANIFEST = "held_out_voice.json"
SETTINGS_FILE = "corpus.json"


@dataclass(frozen=True)
class CorpusSettings:
    train_sentences: int = 3000
    test_sentences: int = 150
    train_utterances_per_voice: int = 700
    test_utterances_per_voice: int = 40
    seed: int = 0
    voices: tuple[str, ...] = tuple(v.name for v in VOICES)
    held_out_voices: tuple[str, ...] = HELD_OUT_VOICES
    level_db: tuple[float, float] = (-12.0, 0.0)  # each utterance's peak level, drawn uniformly (dBFS)


def _assign(sentences: list[str], per_voice: int, voices: list[Voice], rng: np.random.Generator) -> list:
    """(voice, text) pairs: each voice speaks `per_voice` different sentences, spread over the pool."""
    pairs = []
    for voice in voices:
        order = rng.permutation(len(sentences))[: min(per_voice, len(sentences))]
        pairs += [(voice, sentences[int(i)]) for i in order]
    return pairs


def _set_level(path: Path, peak_db: float) -> None:
    import soundfile as sf

    audio, rate = sf.read(path, dtype="float32")
    audio *= 10 ** (peak_db / 20) / max(float(np.abs(audio).max()), 1e-6)
    sf.write(path, audio, rate, subtype="PCM_16")


def _synthesize(out_dir: Path, split: str, pairs: list, progress, levels: np.ndarray) -> list[dict]:
    by_voice: dict[str, list] = {}
    for index, (voice, text) in enumerate(pairs):
        path = out_dir / "wav" / voice.name / f"{split}-{index:06d}.wav"
        by_voice.setdefault(voice.name, []).append((voice, text, path, float(levels[index])))
    batches = []
    for items in by_voice.values():
        (items[0][2]).parent.mkdir(parents=True, exist_ok=True)
        batches += [items[i : i + 50] for i in range(0, len(items), 50)]

    def run(batch):
        durations = synthesize_to_files(batch[0][0], [(text, path) for _, text, path, _ in batch])
        for _, _, path, level in batch:
            _set_level(path, level)
        return [
            {"audio_filepath": str(path), "duration": round(d, 4), "text": text, "speaker_id": voice.name}
            for (voice, text, path, _), d in zip(batch, durations, strict=True)
        ]

    entries: list[dict] = []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for rows in pool.map(run, batches):
            entries += rows
            progress.update(len(rows))
    return entries


def write_manifest(path: Path, entries: list[dict]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))


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
    train_text, test_text = split_sentences(settings.train_sentences, settings.test_sentences, settings.seed)
    # One random stream per split: the held-out side is the same whatever the size of the training side.
    splits = {
        TRAIN_MANIFEST: ("train", train_text, settings.train_utterances_per_voice, voices),
        TEST_MANIFEST: ("test", test_text, settings.test_utterances_per_voice, voices),
        HELD_OUT_VOICE_MANIFEST: ("heldout", test_text, settings.test_utterances_per_voice, held_out),
    }
    plans = {}
    for index, (manifest, (split, sentences, per_voice, speakers)) in enumerate(splits.items()):
        rng = np.random.default_rng([settings.seed, index])
        pairs = _assign(sentences, per_voice, speakers, rng)
        plans[manifest] = (split, pairs, rng.uniform(*settings.level_db, size=len(pairs)))
    total = sum(len(pairs) for _, pairs, _ in plans.values())
    with tqdm(total=total, desc="synthesising corpus", unit="utt") as progress:
        for manifest, (split, pairs, levels) in plans.items():
            write_manifest(out_dir / manifest, _synthesize(out_dir, split, pairs, progress, levels))
    recorded.write_text(json.dumps(wanted, indent=1) + "\n")
    return out_dir
