"""Random-initialised model pairs with the released or a tiny geometry, saved as `.nemo`.

The released checkpoints cannot be downloaded here; compute and memory do not depend on weight
values, so benchmarks and memory checks run on these, and the tests on the tiny pair.
"""

from __future__ import annotations

import logging
from pathlib import Path

TOKENIZER_LINES = 20000

logger = logging.getLogger(__name__)


def build_random_pair(size: str, out_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write `asr.nemo` and `diarizer.nemo` of `size` ("tiny", "shrunk" or "full") into `out_dir`."""
    from mtasr.export import asr, sortformer
    from mtasr.export.tokenizer import pseudo_english_lines, train_tokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_size = asr.ASR_SIZES[size].vocab_size
    logger.info("training a %d-piece tokenizer", vocab_size)
    tokenizer_dir = train_tokenizer(pseudo_english_lines(TOKENIZER_LINES, seed), vocab_size, out_dir / "tokenizer")
    logger.info("building the %s ASR model", size)
    asr_path, diar_path = out_dir / "asr.nemo", out_dir / "diarizer.nemo"
    asr.build_asr(size, tokenizer_dir, seed=seed).save_to(str(asr_path))
    logger.info("building the %s Sortformer diarizer", size)
    sortformer.build_sortformer(size, seed=seed).save_to(str(diar_path))
    return asr_path, diar_path
