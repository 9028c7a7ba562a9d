"""SentencePiece tokenizers trained locally, laid out the way NeMo's bpe tokenizer loader wants.

NeMo's `tokenizer.type: bpe` reads a folder holding both `tokenizer.model` and `vocab.txt`; a
folder with only the model loads for training but fails later on save/restore.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

# A small syllable inventory: pseudo-English that gives SentencePiece enough distinct pieces to
# fill a 1024-token vocabulary without shipping a corpus.
_ONSETS = [
    "",
    "b",
    "bl",
    "br",
    "c",
    "ch",
    "d",
    "dr",
    "f",
    "fl",
    "g",
    "gr",
    "h",
    "j",
    "k",
    "l",
    "m",
    "n",
    "p",
    "pl",
    "pr",
    "qu",
    "r",
    "s",
    "sh",
    "sk",
    "sl",
    "sp",
    "st",
    "t",
    "th",
    "tr",
    "v",
    "w",
    "wh",
    "y",
    "z",
]
_NUCLEI = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "oo", "ou", "ie", "y"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "nd", "ng", "st", "ck", "m", "rd", "x"]


def pseudo_english_lines(n_lines: int, seed: int = 0) -> list[str]:
    """Deterministic pseudo-English sentences, for tokenizers of random-weight models."""
    rng = random.Random(seed)
    words = sorted(
        {
            "".join(rng.choice(_ONSETS) + rng.choice(_NUCLEI) + rng.choice(_CODAS) for _ in range(rng.randint(1, 3)))
            for _ in range(6000)
        }
    )
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 14))) for _ in range(n_lines)]


def train_tokenizer(lines: Iterable[str], vocab_size: int, out_dir: Path) -> Path:
    """Train a SentencePiece BPE model on `lines`; write `tokenizer.model` and `vocab.txt` into `out_dir`."""
    import sentencepiece as spm

    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(out_dir / "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        # NeMo reserves no control symbols in the vocabulary: blank is appended after it.
        bos_id=-1,
        eos_id=-1,
        unk_id=0,
        num_threads=2,
        minloglevel=2,
    )
    corpus.unlink()
    (out_dir / "tokenizer.vocab").unlink(missing_ok=True)
    processor = spm.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model"))
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    (out_dir / "vocab.txt").write_text("\n".join(pieces) + "\n")
    return out_dir
