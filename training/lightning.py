"""The Lightning trainer both recipes use: progress bar, checkpoints, resume, CPU or GPU."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LAST_CHECKPOINT = "last.ckpt"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    max_steps: int = 3000
    batch_size: int = 16
    val_every_steps: int = 250
    lr: float = 2e-3
    warmup_steps: int = 300
    accelerator: str = "auto"  # "cpu", "gpu" or "auto" (a GPU when present)
    seed: int = 0
    progress: bool = True
    log_every_steps: int = 10
    threads: int = 0  # torch CPU threads; 0 = torch's default (all cores). Two jobs at once: 1 each.
    # None: cosine decay from the peak over the whole run. A fraction: hold the peak for that share of
    # the steps after warm-up, then decay linearly (a cosine tail starts decaying too early for runs
    # that are still learning; the hold lets them resume at full rate).
    hold_fraction: float | None = None


def make_trainer(out_dir: Path, settings: TrainSettings, monitor: str, mode: str = "min", callbacks: Sequence = ()):
    """A Trainer writing `out_dir/checkpoints/` (the best by `monitor`, "min" or "max", and `last.ckpt`) and a CSV
    log; `callbacks` are added to its own."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    checkpoints = ModelCheckpoint(
        dirpath=out_dir / "checkpoints",
        filename="step{step}-{" + monitor + ":.4f}",
        auto_insert_metric_name=False,
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        save_last=True,
    )
    return pl.Trainer(
        accelerator=settings.accelerator,
        devices=1,
        max_steps=settings.max_steps,
        val_check_interval=settings.val_every_steps,
        check_val_every_n_epoch=None,
        limit_train_batches=settings.val_every_steps,  # the simulator is endless: one "epoch" = one validation period
        num_sanity_val_steps=0,
        log_every_n_steps=settings.log_every_steps,
        gradient_clip_val=1.0,
        # one folder per run (logs/version_N): a resumed run must not overwrite the earlier curve
        logger=CSVLogger(save_dir=str(out_dir), name="logs"),
        callbacks=[checkpoints, LearningRateMonitor(logging_interval="step"), *callbacks],
        enable_progress_bar=settings.progress,
        enable_model_summary=False,
        use_distributed_sampler=False,  # lhotse samples itself
    )


def apply_threads(settings: TrainSettings) -> None:
    """Small models on a few cores lose more to thread contention than they gain from threads."""
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)


def prepare_run(corpus_dir: Path, out_dir: Path, settings: TrainSettings, validation_mixtures: dict[int, int]):
    """A recipe's common start: threads, seeds, the run folder and its fixed validation mixtures (of the
    corpus's dev sentences).

    Returns (run folder, training manifest, validation cut manifest)."""
    import lightning.pytorch as pl

    from mtasr.training.corpus import TRAIN_MANIFEST, validation_manifest
    from mtasr.training.simulation import write_validation_cuts

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = Path(corpus_dir).resolve() / TRAIN_MANIFEST
    apply_threads(settings)
    pl.seed_everything(settings.seed, workers=True)
    val_cuts = out_dir / "validation_cuts.jsonl.gz"
    if not val_cuts.is_file():
        write_validation_cuts(validation_manifest(manifest.parent), val_cuts, validation_mixtures)
    return out_dir, manifest, val_cuts


def save_trained(model, trainer, target: Path, seconds: float) -> Path:
    """Save the trained NeMo model as `target` (.nemo) and its config beside it; log a one-line summary."""
    from omegaconf import OmegaConf, open_dict

    with open_dict(model.cfg):  # the checkpoint should not point at this machine's data
        model.cfg.train_ds = model.cfg.validation_ds = None
    model.eval().save_to(str(target))
    OmegaConf.save(model.cfg, target.with_suffix(".yaml"))
    callback = trainer.checkpoint_callback
    logger.info(
        "%s: trained %d steps in %.0f s; best %s %s; wrote %s",
        target.stem,
        trainer.global_step,
        seconds,
        callback.monitor,
        callback.best_model_score,
        target,
    )
    return target


def training_log(out_dir: Path) -> list[dict]:
    """Every row of every run's `metrics.csv` in `out_dir/logs`, oldest run first."""
    import csv

    runs = sorted(
        (Path(out_dir) / "logs").glob("version_*/metrics.csv"),
        key=lambda p: int(p.parent.name.removeprefix("version_")),
    )
    rows: list[dict] = []
    for path in runs:
        with open(path) as f:
            rows += list(csv.DictReader(f))
    return rows


def finished_model(target: Path) -> Path | None:
    """`target` (a stage's .nemo) when it was trained elsewhere and copied here without its checkpoints
    (runs/defaults): the stage counts as finished. With a `last.ckpt` beside it the run resumes instead
    (a longer run in the same folder continues where the last one stopped)."""
    target = Path(target)
    if target.is_file() and resume_path(target.parent) is None:
        logger.info("%s has no checkpoint to resume from: stage finished, not training it again", target)
        return target
    return None


def best_checkpoint(trainer) -> str | None:
    """The best checkpoint's path, if it is on disk (a run resumed from a copied `last.ckpt` may lack it:
    the model then stays as trained, its last state)."""
    best = trainer.checkpoint_callback.best_model_path
    return best if best and Path(best).is_file() else None


def resume_path(out_dir: Path) -> str | None:
    """`last.ckpt` of an interrupted run in `out_dir`, for `trainer.fit(ckpt_path=...)`."""
    last = out_dir / "checkpoints" / LAST_CHECKPOINT
    return str(last) if last.is_file() else None


def optim_config(settings: TrainSettings) -> dict:
    """AdamW with warm-up, then cosine decay to 2 % of the peak `settings.lr` at `max_steps`, or (with
    `hold_fraction`) the peak held and a linear decay to 2 % at the end."""
    sched = {"name": "CosineAnnealing", "warmup_steps": settings.warmup_steps, "min_lr": settings.lr / 50}
    if settings.hold_fraction is not None:
        hold = int(settings.hold_fraction * max(settings.max_steps - settings.warmup_steps, 0))
        sched = {**sched, "name": "WarmupHoldAnnealLinear", "hold_steps": hold}
    return {"name": "adamw", "lr": settings.lr, "betas": [0.9, 0.98], "weight_decay": 1e-3, "sched": sched}


class Stopwatch:
    """Wall time of a block, for the recipes' summaries."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
