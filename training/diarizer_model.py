"""The Streaming Sortformer with a training-only voice head: which voice speaks, frame by frame.

Sortformer learns to tell speakers apart only through its arrival-order loss, a weak signal for a small
model trained from scratch (NeMo starts from a self-supervised encoder). Trained so, the default diarizer
found the first two turns of a conversation and then spread a returning speaker over two or three slots,
on training conversations as on held-out ones. The voice head classifies, for every frame where exactly
one speaker talks, which of the corpus's voices it is, from the encoder's output (after `encoder_proj`,
what the Sortformer modules read): the embeddings the slots are told apart by are then trained to
separate voices directly. Like the ASR's CTC head it is dropped from the saved `.nemo` (`to_plain_model`).
"""

from __future__ import annotations

import torch
from nemo.collections.asr.models import SortformerEncLabelModel
from omegaconf import open_dict

from mtasr.training.heads import load_beside_fresh_head, without_head

VOICES_KEY = "voice_head_voices"  # the voice names, in class order
WEIGHT_KEY = "voice_head_weight"
HEAD = "voice_head."
NO_VOICE = -1  # a slot with no speaker, or a frame with none or several


def frame_voices(targets: torch.Tensor, slot_voices: torch.Tensor) -> torch.Tensor:
    """[B, T] voice index of each frame where exactly one slot is active, else NO_VOICE.

    `targets` [B, T, S] (0/1 slot activity), `slot_voices` [B, S] (each slot's voice index, or NO_VOICE)."""
    single = targets.sum(-1) == 1
    slot = targets.argmax(-1)
    voices = torch.gather(slot_voices, 1, slot)
    return torch.where(single, voices, torch.full_like(voices, NO_VOICE))


class SortformerWithVoiceHead(SortformerEncLabelModel):
    def __init__(self, cfg, trainer=None):
        super().__init__(cfg=cfg, trainer=trainer)
        # Set by whoever builds the config (training.diarizer.with_voice_head): the corpus's voices, the weight.
        self.voice_head_weight = float(cfg[WEIGHT_KEY])
        width = int(cfg.sortformer_modules.tf_d_model)  # encoder_proj's output
        self.voice_head = torch.nn.Linear(width, len(cfg[VOICES_KEY]))

    def training_step(self, batch: list, batch_idx: int) -> dict:
        audio, audio_lens, targets, target_lens, slot_voices = batch
        preds = self.forward(audio_signal=audio, audio_signal_length=audio_lens)
        metrics = self._get_aux_train_evaluations(preds, targets, target_lens)
        self._reset_train_metrics()
        voice_loss = self._voice_loss(audio, audio_lens, targets, slot_voices)
        metrics["voice_loss"] = voice_loss
        metrics["loss"] = metrics["loss"] + self.voice_head_weight * voice_loss
        self.log_dict(metrics, sync_dist=True, on_step=True, on_epoch=False, logger=True)
        return {"loss": metrics["loss"]}

    def _voice_loss(self, audio, audio_lens, targets, slot_voices) -> torch.Tensor:
        """Cross-entropy of the voice head on an offline pass of the encoder (the streamed passes see each frame
        through a different cache; the weights are the same), over frames with exactly one speaker."""
        features, feature_lens = self.process_signal(audio_signal=audio, audio_signal_length=audio_lens)
        features = features[:, :, : feature_lens.max()]
        embeddings, _ = self.frontend_encoder(processed_signal=features, processed_signal_length=feature_lens)
        frames = min(embeddings.shape[1], targets.shape[1])
        labels = frame_voices(targets[:, :frames].long(), slot_voices)
        logits = self.voice_head(embeddings[:, :frames])
        if not (labels != NO_VOICE).any():
            return logits.sum() * 0.0
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=NO_VOICE)

    def to_plain_model(self) -> SortformerEncLabelModel:
        """NeMo's model class with these weights, without the voice head."""
        return without_head(self, SortformerEncLabelModel, HEAD, (VOICES_KEY, WEIGHT_KEY))


def with_voice_head(model: SortformerEncLabelModel, voices: list[str], weight: float, trainer=None):
    """`model` (restored or new, its config already adapted to the recipe) as SortformerWithVoiceHead, with a
    fresh voice head over `voices`."""
    cfg = model.cfg.copy()
    with open_dict(cfg):
        cfg[VOICES_KEY] = list(voices)
        cfg[WEIGHT_KEY] = float(weight)
    wrapped = SortformerWithVoiceHead(cfg=cfg, trainer=trainer)
    load_beside_fresh_head(wrapped, model.state_dict(), HEAD)
    return wrapped
