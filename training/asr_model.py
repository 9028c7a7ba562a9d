"""The multitalker RNNT with an auxiliary CTC loss on the encoder, for training only.

Trained from scratch on our grammar's very predictable text, the plain RNNT first learns a language
model in its prediction network and leaves the encoder collapsed (the same output for every
utterance: 860 steps of blank-only hypotheses in the first default run). A CTC head on the encoder
output forces it to carry the words from the start, as NeMo's hybrid RNNT-CTC models do (the weight is
the recipe's, `training.asr.AUX_CTC_WEIGHT`).
The head is dropped when the checkpoint is saved: `to_plain_model` returns NeMo's own class, which is
what export and serving read.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import torch
from nemo.collections.asr.models.multitalker_asr_models import EncDecMultiTalkerRNNTBPEModel
from omegaconf import open_dict

from mtasr.training.aux_ctc import AUX_CTC_WEIGHT_KEY
from mtasr.training.diarizer_masks import DIARIZER_MASKS_KEY, DiarizerMasks, DiarizerMaskSettings
from mtasr.training.heads import load_beside_fresh_head, without_head

HEAD = "aux_ctc_head."


class MultiTalkerRNNTWithAuxCTC(EncDecMultiTalkerRNNTBPEModel):
    def __init__(self, cfg, trainer=None):
        super().__init__(cfg=cfg, trainer=trainer)
        # Set by whoever builds the config (training.asr.build_config, with_aux_ctc): the recipe's weight.
        self.aux_ctc_weight = float(cfg[AUX_CTC_WEIGHT_KEY])
        # blank is the last class, as in the RNNT joint
        self.aux_ctc_head = torch.nn.Linear(int(cfg.encoder.d_model), self.decoder.blank_idx + 1)
        # Set by the recipe (training.asr.AsrRecipe.diarizer_masks): part of each batch gets the diarizer's masks.
        masks = cfg.get(DIARIZER_MASKS_KEY)
        self.diarizer_masks = DiarizerMasks(DiarizerMaskSettings.from_config(masks)) if masks else None

    def training_step(self, batch, batch_nb):
        signal, signal_len, transcript, transcript_len, spk_targets, bg_spk_targets = batch
        if self.diarizer_masks is not None:
            spk_targets, bg_spk_targets = self.diarizer_masks(signal, signal_len, spk_targets, bg_spk_targets)
        self.set_speaker_targets(spk_targets, bg_spk_targets)
        encoded, encoded_len = self.forward(input_signal=signal, input_signal_length=signal_len)
        decoder, target_length, _ = self.decoder(targets=transcript, target_length=transcript_len)
        joint = self.joint(encoder_outputs=encoded, decoder_outputs=decoder)
        rnnt = self.loss(log_probs=joint, targets=transcript, input_lengths=encoded_len, target_lengths=target_length)
        log_probs = self.aux_ctc_head(encoded.transpose(1, 2)).log_softmax(-1)
        ctc = (
            torch.nn.functional.ctc_loss(
                log_probs.transpose(0, 1),
                transcript,
                encoded_len,
                transcript_len,
                blank=self.decoder.blank_idx,
                reduction="sum",
                zero_infinity=True,
            )
            / transcript.shape[0]
        )  # per utterance, as NeMo's hybrid CTC and the RNNT loss: per token it would be ~9x weaker
        loss = rnnt + self.aux_ctc_weight * ctc
        logged = {"train_loss": loss, "train_rnnt_loss": rnnt, "train_ctc_loss": ctc}
        if self.diarizer_masks is not None:
            logged["diarizer_masks_used"] = self.diarizer_masks.used_share()
        self.log_dict(logged, on_step=True)
        return {"loss": loss}

    def to_plain_model(self) -> EncDecMultiTalkerRNNTBPEModel:
        """NeMo's model class with these weights, without the CTC head."""
        return without_head(self, EncDecMultiTalkerRNNTBPEModel, HEAD, (AUX_CTC_WEIGHT_KEY, DIARIZER_MASKS_KEY))


def unpack_tokenizer(nemo_path: Path, out_dir: Path) -> Path:
    """The `.nemo`'s SentencePiece files as a plain tokenizer folder (`tokenizer.model`, `vocab.txt`).

    A restored model's config names its tokenizer by archive reference (`nemo:...`), which only
    resolves while restoring; a model built anew from that config needs real files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(nemo_path) as archive:
        for member in archive.getmembers():
            for name in ("tokenizer.model", "vocab.txt"):
                if member.name.endswith("_" + name) or Path(member.name).name == name:
                    (out_dir / name).write_bytes(archive.extractfile(member).read())
    if not (out_dir / "tokenizer.model").is_file():
        raise ValueError(f"{nemo_path} holds no SentencePiece tokenizer.model")
    return out_dir


def with_aux_ctc(nemo_path: Path, cfg_changes: dict, weight: float, tokenizer_dir: Path, trainer=None, adapt=None):
    """The `.nemo` model (fine-tuning) as MultiTalkerRNNTWithAuxCTC with a fresh CTC head; `cfg_changes`
    (data, optimizer) applied to its config, then `adapt(cfg)` (e.g. attention contexts, dropout)."""
    given = EncDecMultiTalkerRNNTBPEModel.restore_from(str(nemo_path), map_location="cpu")
    cfg = given.cfg.copy()
    with open_dict(cfg):
        cfg.update(cfg_changes)
        cfg[AUX_CTC_WEIGHT_KEY] = weight
        cfg.tokenizer = {"dir": str(unpack_tokenizer(Path(nemo_path), tokenizer_dir)), "type": "bpe"}
        if adapt is not None:
            adapt(cfg)
    wrapped = MultiTalkerRNNTWithAuxCTC(cfg=cfg, trainer=trainer)
    load_beside_fresh_head(wrapped, given.state_dict(), HEAD, str(nemo_path))
    return wrapped
