"""The single-speaker speech corpus: generated sentences spoken by the flite/festival voices.

Writes `train.json` and `test.json`, NeMo manifests (one JSON object per line with
`audio_filepath`, `duration`, `text`, `speaker_id`), and the WAVs under `wav/<voice>/`. Test
sentences never occur in training (`text.split_sentences`). A finished corpus records its settings
in `corpus.json`; asking again for the same settings reuses it.
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
from mtasr.training.voices import VOICES, Voice, synthesize_to_files

TRAIN_MANIFEST = "train.json"
TEST_MANIFEST = "test.json"
SETTINGS_FILE = "corpus.json"


@dataclass(frozen=True)
class CorpusSettings:
    train_sentences: int = 3000
    test_sentences: int = 150
    train_utterances_per_voice: int = 700
    test_utterances_per_voice: int = 40
    seed: int = 0
    voices: tuple[str, ...] = tuple(v.name for v in VOICES)


def _assign(sentences: list[str], per_voice: int, voices: list[Voice], rng: np.random.Generator) -> list:
    """(voice, text) pairs: each voice speaks `per_voice` different sentences, spread over the pool."""
    pairs = []
    for voice in voices:
        order = rng.permutation(len(sentences))[: min(per_voice, len(sentences))]
        pairs += [(voice, sentences[int(i)]) for i in order]
    return pairs


def _synthesize(out_dir: Path, split: str, pairs: list, progress) -> list[dict]:
    by_voice: dict[str, list] = {}
    for index, (voice, text) in enumerate(pairs):
        path = out_dir / "wav" / voice.name / f"{split}-{index:06d}.wav"
        by_voice.setdefault(voice.name, []).append((voice, text, path))
    batches = []
    for items in by_voice.values():
        (items[0][2]).parent.mkdir(parents=True, exist_ok=True)
        batches += [items[i : i + 50] for i in range(0, len(items), 50)]

    def run(batch):
        durations = synthesize_to_files(batch[0][0], [(text, path) for _, text, path in batch])
        return [
            {"audio_filepath": str(path), "duration": round(d, 4), "text": text, "speaker_id": voice.name}
            for (voice, text, path), d in zip(batch, durations, strict=True)
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
    wanted["voices"] = list(settings.voices)
    if recorded.is_file() and json.loads(recorded.read_text()) == wanted:
        return out_dir
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    voices = [v for v in VOICES if v.name in settings.voices]
    train_text, test_text = split_sentences(settings.train_sentences, settings.test_sentences, settings.seed)
    rng = np.random.default_rng(settings.seed)
    train_pairs = _assign(train_text, settings.train_utterances_per_voice, voices, rng)
    test_pairs = _assign(test_text, settings.test_utterances_per_voice, voices, rng)
    with tqdm(total=len(train_pairs) + len(test_pairs), desc="synthesising corpus", unit="utt") as progress:
        write_manifest(out_dir / TRAIN_MANIFEST, _synthesize(out_dir, "train", train_pairs, progress))
        write_manifest(out_dir / TEST_MANIFEST, _synthesize(out_dir, "test", test_pairs, progress))
    recorded.write_text(json.dumps(wanted, indent=1) + "\n")
    return out_dir
