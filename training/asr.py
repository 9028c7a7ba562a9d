"""Recipe: the multitalker ASR model (cache-aware FastConformer RNNT with speaker kernels).

Train from the project's small config, or fine-tune a given `.nemo` along NeMo's tutorial path:
load the model and its config, point `train_ds`/`validation_ds` at the simulator, `trainer.fit`.
The model learns each speaker's words from the oracle speaker masks the dataset derives from the
mixture (`LhotseSpeechToTextSpkBpeDataset`); at serving time the diarizer supplies those masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mtasr.training.corpus import read_manifest
from mtasr.training.lightning import (
    Stopwatch,
    TrainSettings,
    make_trainer,
    optim_config,
    prepare_run,
    resume_path,
    save_trained,
)
from mtasr.training.simulation import data_configs

if TYPE_CHECKING:
    from omegaconf import DictConfig

CHECKPOINT_NAME = "asr.nemo"
AUX_CTC_WEIGHT_KEY = "aux_ctc_weight"  # config key of the training-only CTC head (training.asr_model)
MONITOR = "val_wer"
# Attention contexts trained (right context = lookahead frames); the default serving one most often.
ATT_CONTEXTS = [[70, 13], [70, 6], [70, 1], [70, 0]]
ATT_CONTEXT_PROBS = [0.55, 0.15, 0.15, 0.15]


# The default pair's ASR is trained in two stages (`train_asr_curriculum`). From scratch on mixtures
# the encoder learnt nothing in 700 steps (CTC flat, blank-only output); on single speakers it
# learns the words within a few hundred (short utterances also make those steps 3x cheaper).
# Stage 2 fine-tunes that model on mixtures, along NeMo's fine-tuning path, to follow one speaker.
ASR_TRAIN = TrainSettings(max_steps=1400, batch_size=12, val_every_steps=200, lr=1.5e-3, warmup_steps=200)
SINGLE_SPEAKER = {1: 1.0}
ASR_FINE_TUNE = TrainSettings(max_steps=2000, batch_size=12, val_every_steps=250, lr=1e-3, warmup_steps=100)
# Still mostly single speakers: on these cores the encoder, not speaker following, is the bottleneck.
ASR_SPEAKER_WEIGHTS = {1: 0.7, 2: 0.3}


@dataclass(frozen=True)
class AsrRecipe:
    size: str = "small"
    train: TrainSettings = ASR_TRAIN
    speaker_weights: dict[int, float] = field(default_factory=lambda: dict(ASR_SPEAKER_WEIGHTS))
    validation_mixtures: dict[int, int] = field(default_factory=lambda: {1: 8, 2: 8, 3: 8})
    spec_augment: bool = False  # the few steps a CPU affords are better spent on clean input
    aux_ctc_weight: float = 0.5  # training only (training.asr_model); 0 trains the plain RNNT


def _data_config(recipe: AsrRecipe, manifest: Path, val_cuts: Path) -> tuple[dict, dict]:
    common = {
        "use_lhotse": True,
        "sample_rate": 16000,
        "num_speakers": 4,
        "num_workers": 0,
        "batch_size": recipe.train.batch_size,
        "pretokenize": False,
    }
    return data_configs(common, manifest, val_cuts, recipe.speaker_weights, recipe.train.seed)


def _spec_augment() -> dict:
    return {
        "_target_": "nemo.collections.asr.modules.SpectrogramAugmentation",
        "freq_masks": 2,
        "freq_width": 20,
        "time_masks": 2,
        "time_width": 0.05,
    }


def build_config(recipe: AsrRecipe, tokenizer_dir: Path, manifest: Path, val_cuts: Path) -> DictConfig:
    """The small multitalker config (export.asr.asr_config) with the simulator as its data."""
    from mtasr.export.asr import asr_config
    from omegaconf import open_dict

    cfg = asr_config(recipe.size, tokenizer_dir)
    train_ds, validation_ds = _data_config(recipe, manifest, val_cuts)
    with open_dict(cfg):
        cfg.train_ds = train_ds
        cfg.validation_ds = validation_ds
        cfg.optim = optim_config(recipe.train)
        cfg.encoder.att_context_size = ATT_CONTEXTS
        cfg.encoder.att_context_probs = ATT_CONTEXT_PROBS
        cfg.spec_augment = _spec_augment() if recipe.spec_augment else None
        cfg[AUX_CTC_WEIGHT_KEY] = recipe.aux_ctc_weight
    return cfg


def train_tokenizer(manifest: Path, vocab_size: int, out_dir: Path) -> Path:
    """A SentencePiece BPE tokenizer over the training texts."""
    from mtasr.export.tokenizer import train_tokenizer as train_spm

    texts = sorted({entry["text"] for entry in read_manifest(manifest)})
    return train_spm(texts, vocab_size, out_dir)


def train_asr(corpus_dir: Path, out_dir: Path, recipe: AsrRecipe = AsrRecipe(), init_from: Path | None = None) -> Path:
    """Train (or fine-tune `init_from`) on simulated mixtures of the corpus; returns `out_dir/asr.nemo`.

    Re-running with the same `out_dir` resumes from its `last.ckpt`.
    """
    from mtasr.export.asr import ASR_SIZES
    from mtasr.training.asr_model import MultiTalkerRNNTWithAuxCTC, with_aux_ctc
    from mtasr.training.rnnt_loss import VectorisedRNNTLoss

    out_dir, manifest, val_cuts = prepare_run(corpus_dir, out_dir, recipe.train, recipe.validation_mixtures)
    trainer = make_trainer(out_dir, recipe.train, MONITOR)
    if init_from is None:
        tokenizer_dir = out_dir / "tokenizer"
        if not (tokenizer_dir / "tokenizer.model").is_file():
            train_tokenizer(manifest, ASR_SIZES[recipe.size].vocab_size, tokenizer_dir)
        model = MultiTalkerRNNTWithAuxCTC(cfg=build_config(recipe, tokenizer_dir, manifest, val_cuts), trainer=trainer)
    else:
        train_ds, validation_ds = _data_config(recipe, manifest, val_cuts)
        changes = {"train_ds": train_ds, "validation_ds": validation_ds, "optim": optim_config(recipe.train)}
        model = with_aux_ctc(init_from, changes, recipe.aux_ctc_weight, out_dir / "tokenizer", trainer)
    model.loss = VectorisedRNNTLoss(blank=model.decoder.blank_idx)  # NeMo's CPU loss dominates a step
    with Stopwatch() as clock:
        trainer.fit(model, ckpt_path=resume_path(out_dir))
    best = trainer.checkpoint_callback.best_model_path
    if best:
        model = MultiTalkerRNNTWithAuxCTC.load_from_checkpoint(best, map_location="cpu")
    model = model.to_plain_model()
    return save_trained(model, trainer, out_dir / CHECKPOINT_NAME, clock.seconds)


# The default pair's two stages: single speakers from scratch, then fine-tuning on mixtures.
ASR_CURRICULUM = (AsrRecipe(speaker_weights=dict(SINGLE_SPEAKER)), AsrRecipe(train=ASR_FINE_TUNE))


def train_asr_curriculum(corpus_dir: Path, out_dir: Path, stages: tuple = ASR_CURRICULUM) -> Path:
    """Stage 1 (`out_dir/single_speaker`) from scratch, stage 2 (`out_dir/mixtures`) fine-tuned from it.
    Returns stage 2's `asr.nemo`; each stage resumes on its own."""
    first, second = stages
    single = train_asr(corpus_dir, Path(out_dir) / "single_speaker", first)
    return train_asr(corpus_dir, Path(out_dir) / "mixtures", second, init_from=single)
