"""`mtasr train defaults`: reproduce the default model pair the project serves out of the box.

corpus -> ASR and diarizer recipes -> export -> evaluation set -> served evaluation, each step's
wall time printed. With `install`, the exported repository replaces the committed top-level
`model_repository/` and the demo conversation is rewritten.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from mtasr import DEMO_CONVERSATION
from mtasr.training.lightning import Stopwatch

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPOSITORY = PROJECT_ROOT / "model_repository"
# The checkpoints DEFAULT_REPOSITORY was exported from (its manifest records their hashes): what
# `mtasr bench` runs NeMo on, and what re-exports at other latency settings start from.
DEFAULT_CHECKPOINTS = {
    "asr": PROJECT_ROOT / "default_checkpoints" / "asr.nemo",
    "diarizer": PROJECT_ROOT / "default_checkpoints" / "diarizer.nemo",
}
DEMO_SPEAKERS, DEMO_SEED = 3, 7
# Export settings of the committed repository: a handful of streams per batched call is plenty on CPU.
DEFAULT_MAX_STREAMS = 4
# A speaker keeps its ASR instance while the diarizer heard it in the last 6 chunks (6.7 s), not NeMo's 2: gated off
# one chunk after its last frame, a speaker's last words, still in the encoder's look-ahead and the decoder, come out
# only when it speaks again, or never. On the selection set 2 / 3 speakers 14.8 / 26.9 -> 15.1 / 24.4 % (631 -> 602
# word errors; 1 chunk 736, 3 615, 4 609, 8 602), 3 speakers' deletions 138 -> 121 at 4 chunks.
DEFAULT_GATING_CHUNKS = 6


def default_export_settings():
    """How the committed repository is exported (`mtasr.export.pipeline.ExportSettings`): the diarizer with the
    cache sizes it was trained and validated with, speakers gated over `DEFAULT_GATING_CHUNKS`. Speaker masks are
    the diarizer's probabilities (NeMo's default): thresholded (`--binary-speaker-masks`) they did no better on the
    evaluation set (docs/training.md)."""
    from mtasr.deployment import ServingSettings
    from mtasr.export.pipeline import ExportSettings

    return ExportSettings(
        max_streams_per_batch=DEFAULT_MAX_STREAMS,
        diarizer_cache=None,
        serving=ServingSettings(gating_chunks=DEFAULT_GATING_CHUNKS),
    )


@dataclass(frozen=True)
class DefaultsSettings:
    asr_steps: int | None = None  # each ASR stage's steps; None: the recipes' own (ASR_TRAIN, ASR_FINE_TUNE)
    diarizer_steps: int | None = None


def write_demo_conversation(corpus_dir: Path, target: Path = DEMO_CONVERSATION) -> Path:
    """The bundled demo: a 3-speaker conversation with overlaps, of held-out sentences (FLAC + SegLST)."""
    import soundfile as sf

    from mtasr.client.formats import SEGLST_SUFFIX, write_seglst
    from mtasr.training.corpus import TEST_MANIFEST, read_manifest
    from mtasr.training.evalset import corpus_conversation, reference_segments

    conversation = corpus_conversation(read_manifest(corpus_dir / TEST_MANIFEST), DEMO_SPEAKERS, DEMO_SEED)
    target.parent.mkdir(parents=True, exist_ok=True)
    sf.write(target, conversation.audio, conversation.sample_rate, format="FLAC", subtype="PCM_16")
    write_seglst(reference_segments(conversation, "demo_conversation"), target.with_suffix(SEGLST_SUFFIX))
    return target


def install_repository(exported: Path, target: Path = DEFAULT_REPOSITORY, checkpoints: dict | None = None) -> None:
    """Replace `target`'s contents with the exported repository, and the default checkpoints with
    `checkpoints` ({"asr": path, "diarizer": path}, the pair it was exported from) when given."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(exported, target, ignore=shutil.ignore_patterns("__pycache__"))
    for name, source in (checkpoints or {}).items():
        DEFAULT_CHECKPOINTS[name].parent.mkdir(parents=True, exist_ok=True)
        if Path(source).resolve() != DEFAULT_CHECKPOINTS[name].resolve():  # a model kept from the pair before
            shutil.copy2(source, DEFAULT_CHECKPOINTS[name])


def reproduce_defaults(work_dir: Path, settings: DefaultsSettings = DefaultsSettings(), install: bool = False) -> dict:
    """Run every step into `work_dir`; returns {step: seconds} (also written to `wall_times.json`)."""
    from mtasr.export.pipeline import run_export
    from mtasr.training.corpus import build_corpus
    from mtasr.training.evalset import build_evalset
    from mtasr.training.evaluate import evaluate, quality_table

    work_dir = Path(work_dir)
    times: dict[str, float] = {}

    def step(name: str, fn):
        logger.info("%s ...", name)
        with Stopwatch() as clock:
            result = fn()
        times[name] = round(clock.seconds, 1)
        logger.info("%s: %.0f s", name, clock.seconds)
        return result

    corpus = step("corpus", lambda: build_corpus(work_dir / "corpus"))
    asr, diarizer = step("train asr + diarizer", lambda: train_pair(corpus, work_dir, settings))
    export_dir = work_dir / "export"
    step(
        "export",
        lambda: run_export(asr, diarizer, export_dir, default_export_settings(), overwrite=True),
    )
    evalset = step("evaluation set", lambda: build_evalset(corpus, work_dir / "evalset"))
    groups = step("evaluate", lambda: evaluate(export_dir / "model_repository", evalset, work_dir / "evaluation"))
    if install:
        install_repository(export_dir / "model_repository", checkpoints={"asr": asr, "diarizer": diarizer})
        write_demo_conversation(corpus)
    times["total"] = round(sum(times.values()), 1)
    (work_dir / "wall_times.json").write_text(json.dumps(times, indent=1) + "\n")
    print(quality_table(groups), end="")
    logger.info("wall time: %.1f min (%s)", times["total"] / 60, json.dumps(times))
    return times


def _settings(train, steps: int | None, threads: int):
    """A recipe's TrainSettings with `steps` (None: its own), `threads`, no progress bar (two jobs share stderr)."""
    import dataclasses

    steps = steps or train.max_steps
    return dataclasses.replace(
        train, max_steps=steps, warmup_steps=min(train.warmup_steps, steps), threads=threads, progress=False
    )


def _train_curriculum(
    which: str, corpus: Path, out_dir: Path, steps: int | None, threads: int, diarizer: Path | None = None
) -> Path:
    """One model's default curriculum, each stage's steps and threads set (in a worker process). The ASR's
    stops before its stage that trains on the diarizer's masks unless `diarizer` is given."""
    import dataclasses

    from mtasr.cli import configure_logging

    configure_logging()  # a spawned worker starts without the parent's logging set-up

    if which == "asr":
        from mtasr.training.asr import ASR_CURRICULUM as stages
        from mtasr.training.asr import train_asr_curriculum as train
    else:
        from mtasr.training.diarizer import DIARIZER_CURRICULUM as stages
        from mtasr.training.diarizer import train_diarizer_curriculum as train
    tuned = tuple(dataclasses.replace(r, train=_settings(r.train, steps, threads)) for r in stages)
    if which == "asr":
        return train(corpus, out_dir, tuned, diarizer=diarizer)
    return train(corpus, out_dir, tuned)


def train_pair(corpus: Path, work_dir: Path, settings: DefaultsSettings) -> tuple[Path, Path]:
    """Both recipes at once in two processes, the cores split between them: small models gain little
    from a second thread, so two single-threaded jobs beat two jobs one after the other. The ASR's last
    stages train on the finished diarizer's masks, so they run after both, on every core."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 2) // 2)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        asr = pool.submit(_train_curriculum, "asr", corpus, work_dir / "asr", settings.asr_steps, threads)
        diarizer = pool.submit(
            _train_curriculum, "diarizer", corpus, work_dir / "diarizer", settings.diarizer_steps, threads
        )
        asr.result()  # the stages before the one that needs the diarizer
        diarizer = diarizer.result()
        last = pool.submit(
            _train_curriculum, "asr", corpus, work_dir / "asr", settings.asr_steps, 2 * threads, diarizer
        )
        return last.result(), diarizer
