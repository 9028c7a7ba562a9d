"""Speaker masks from the diarizer itself, for training the ASR on what it is served.

The ASR trains on the oracle masks the dataset derives from the mixture (0/1, exact turns), and is served
the streaming diarizer's probabilities: soft, a frame or two off at the turn edges, and now and then a short
spurious burst of another slot, which puts a background mask on the speaker's own speech. Given the
reference turns the default ASR wrote 37 % cpWER on three speakers, given its diarizer (DER 14 %) 65 %.

For a fraction of each batch's rows, `DiarizerMasks` runs the frozen streaming diarizer on the mixture and
replaces the row's masks with what serving would build (`mtasr.gating`): the target mask is the probability
of the slot that best matches the target speaker's reference turns, the background mask the frames where
another slot is above the threshold. A row whose speaker the diarizer did not find (soft IoU with the
reference below `min_iou`), or whose slot follows another speaker better or covers both, keeps its oracle
masks: there the text cannot be told from the masks, and training on it would teach the ASR to invent or
drop words.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where used: the recipe's settings are read by the command line
    import torch

from mtasr.gating import GatingConfig

# The config key (a dict: `diarizer` path, `fraction`, `min_iou`) that turns this on in
# `training.asr_model.MultiTalkerRNNTWithAuxCTC`; training only, dropped from the saved `.nemo`.
DIARIZER_MASKS_KEY = "diarizer_masks"
THRESHOLD = GatingConfig.threshold  # the serving gate's
# A slot above the threshold on more frames of other speakers alone than this share of its own frames has merged them.
MAX_LEAK = 0.25


@dataclass(frozen=True)
class DiarizerMaskSettings:
    diarizer: Path  # the `.nemo` the pair will be served with
    fraction: float = 0.5  # of each batch's rows
    min_iou: float = 0.5  # the matched slot against the target speaker's reference turns

    def as_config(self) -> dict:
        return {"diarizer": str(self.diarizer), "fraction": self.fraction, "min_iou": self.min_iou}

    @classmethod
    def from_config(cls, cfg) -> DiarizerMaskSettings:
        return cls(Path(cfg["diarizer"]), float(cfg["fraction"]), float(cfg["min_iou"]))


def _fit(x: torch.Tensor, frames: int) -> torch.Tensor:
    """[B, T, S] cut or zero-padded to `frames` along T."""
    import torch

    if x.shape[1] >= frames:
        return x[:, :frames]
    return torch.nn.functional.pad(x, (0, 0, 0, frames - x.shape[1]))


def soft_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Soft intersection over union of [..., T] activities in [0, 1] along the last axis (0 where both are empty)."""
    import torch

    inter = (a * b).sum(-1)
    union = a.sum(-1) + b.sum(-1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-9), torch.zeros_like(union))


def masks_from_probabilities(
    probs: torch.Tensor,
    speaker: torch.Tensor,
    background: torch.Tensor,
    min_iou: float,
    threshold: float = THRESHOLD,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Serving's masks for each row's target speaker, where the diarizer found that speaker.

    `probs` [B, T', S] diarizer probabilities; `speaker`, `background` [B, T] the oracle target and
    background masks. Returns the new target and background masks [B, T] (the oracle ones on rows not
    replaced) and which rows were replaced [B]."""
    import torch

    frames = speaker.shape[1]
    probs = _fit(probs.float(), frames)
    reference = speaker.float()
    slot_iou = soft_iou(probs.transpose(1, 2), reference.unsqueeze(1))  # [B, S]
    best_iou, slot = slot_iou.max(-1)
    target = torch.gather(probs, 2, slot[:, None, None].expand(-1, frames, 1)).squeeze(-1)
    others = torch.ones_like(probs, dtype=torch.bool).scatter(2, slot[:, None, None].expand(-1, frames, 1), False)
    new_background = ((probs > threshold) & others).any(-1)
    # The matched slot must be this speaker's, not another's that overlaps it (a slot that follows the
    # others better than the target), nor one that merged them (high on frames where only others talk).
    other_iou = soft_iou(target, background.float())
    only_others = background.bool() & ~speaker.bool()
    leaked = (target > threshold) & only_others
    own = (target > threshold).sum(-1).clamp(min=1)
    replaced = (best_iou >= min_iou) & (best_iou > other_iou) & (leaked.sum(-1) <= MAX_LEAK * own)
    speaker_out = torch.where(replaced[:, None], target.to(speaker.dtype), speaker)
    background_out = torch.where(replaced[:, None], new_background.to(background.dtype), background)
    return speaker_out, background_out, replaced


class DiarizerMasks:
    """The frozen streaming diarizer, applied to a random `fraction` of each training batch's rows.

    Not a torch submodule of the ASR, so it is neither trained nor saved with it."""

    def __init__(self, settings: DiarizerMaskSettings) -> None:
        from nemo.collections.asr.models import SortformerEncLabelModel

        from mtasr.export.nemo_fixes import patch_fixed_normalization

        patch_fixed_normalization()  # the default diarizer's features have fixed normalisation
        self.settings = settings
        self.model = SortformerEncLabelModel.restore_from(str(settings.diarizer), map_location="cpu").eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.replaced = 0  # rows given the diarizer's masks so far
        self.offered = 0  # rows the diarizer ran on so far

    def used_share(self) -> float:
        """Of the rows the diarizer ran on so far, the share that took its masks."""
        return self.replaced / self.offered if self.offered else 0.0

    def __call__(
        self, signal: torch.Tensor, signal_len: torch.Tensor, speaker: torch.Tensor, background: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        rows = torch.nonzero(torch.rand(signal.shape[0]) < self.settings.fraction).squeeze(-1)
        if rows.numel() == 0:
            return speaker, background
        self.model.to(signal.device)
        with torch.no_grad(), _quiet_streaming():
            longest = int(signal_len[rows].max())
            probs = self.model.forward(audio_signal=signal[rows, :longest], audio_signal_length=signal_len[rows])
        new_speaker, new_background, replaced = masks_from_probabilities(
            probs, speaker[rows], background[rows], self.settings.min_iou
        )
        self.offered += rows.numel()
        self.replaced += int(replaced.sum())
        speaker, background = speaker.clone(), background.clone()
        speaker[rows] = new_speaker
        background[rows] = new_background
        return speaker, background


class _quiet_streaming:
    """NeMo's streaming diarizer draws a progress bar per call unless it is training: silence it here."""

    def __enter__(self) -> None:
        from nemo.collections.asr.models import sortformer_diar_models

        self._module = sortformer_diar_models
        self._tqdm = sortformer_diar_models.tqdm
        sortformer_diar_models.tqdm = lambda iterable, **_: iterable

    def __exit__(self, *exc) -> None:
        self._module.tqdm = self._tqdm
