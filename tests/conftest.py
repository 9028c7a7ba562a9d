"""Shared fixtures: small artefacts built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A 64-piece SentencePiece tokenizer in NeMo's bpe folder layout."""
    from mtasr.export.tokenizer import pseudo_english_lines, train_tokenizer

    return train_tokenizer(pseudo_english_lines(3000), 64, tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """A random tiny (ASR .nemo, diarizer .nemo) pair, the project's own builder.

    `MTASR_TEST_CHECKPOINTS=ASR.nemo,DIARIZER.nemo` runs the same tests on another pair instead, e.g. the
    trained default pair: `MTASR_TEST_CHECKPOINTS=artifacts/training/asr/asr.nemo,artifacts/training/
    diarizer/diarizer.nemo pytest tests/test_serving.py -k nemo` checks parity with NeMo on trained weights.
    """
    if override := os.environ.get("MTASR_TEST_CHECKPOINTS"):
        asr, diarizer = (Path(p).resolve() for p in override.split(","))
        return asr, diarizer
    from mtasr.export.random_models import build_random_pair

    return build_random_pair("tiny", tmp_path_factory.mktemp("tiny_checkpoints"))
