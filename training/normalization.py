"""Fixed per-bin feature normalisation, shared by both models of a pair.

Served (and in NeMo's multitalker inference script) the diarizer reads the ASR's features, so both models
of a pair must be trained on the same ones: the same fixed statistics, measured the same way on the same
corpus (`feature_normalization` is deterministic).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtasr.training.corpus import read_manifest

if TYPE_CHECKING:
    import torch
    from omegaconf import DictConfig

# Utterances whose log-mel frames give the fixed per-bin normalisation (`feature_normalization`).
NORMALIZATION_UTTERANCES = 400


def feature_normalization(manifest: Path, preprocessor_cfg: DictConfig, n_utterances: int = NORMALIZATION_UTTERANCES):
    """NeMo's fixed normalisation ({fixed_mean, fixed_std}, one value per mel bin) measured on the log-mel
    frames of `n_utterances` training utterances.

    Un-normalised log-mels average about -10 with a std of 4, so the causal convolutions' zero padding
    looks like a loud spike; per-utterance normalisation cannot stream. Fixed statistics do both."""
    import numpy as np
    import soundfile as sf
    import torch
    from nemo.collections.asr.modules import AudioToMelSpectrogramPreprocessor
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(preprocessor_cfg, resolve=True)
    cfg.pop("_target_", None)
    cfg.update(normalize="NA", dither=0.0, pad_to=0)
    preprocessor = AudioToMelSpectrogramPreprocessor(**cfg).eval()
    entries = [e for e in read_manifest(manifest) if e["text"]]  # speech only
    picked = np.random.default_rng(0).permutation(len(entries))[:n_utterances]
    total = total_sq = None
    frames = 0
    with torch.no_grad():
        for i in picked:
            audio, _ = sf.read(entries[int(i)]["audio_filepath"], dtype="float32")
            signal = torch.from_numpy(audio)[None]
            mel, length = preprocessor(input_signal=signal, length=torch.tensor([signal.shape[1]]))
            x = mel[0, :, : int(length[0])].double()
            total = x.sum(1) if total is None else total + x.sum(1)
            total_sq = (x**2).sum(1) if total_sq is None else total_sq + (x**2).sum(1)
            frames += x.shape[1]
    mean = total / frames
    std = (total_sq / frames - mean**2).clamp(min=1e-10).sqrt()
    return {"fixed_mean": [round(float(v), 5) for v in mean], "fixed_std": [round(float(v), 5) for v in std]}


def set_normalization(model: Any, normalize: dict[str, list[float]]) -> None:
    """`normalize` in a built model's config and in its preprocessor (which reads it at run time)."""
    from omegaconf import open_dict

    with open_dict(model.cfg):
        model.cfg.preprocessor.normalize = normalize
    model.preprocessor.featurizer.normalize = normalize


def fold_into_first_conv(conv: torch.nn.Conv2d, normalize: dict[str, list[float]]) -> None:
    """Let a convolution trained on un-normalised log-mels ([B, 1, time, mels] input) take normalised ones,
    approximately: raw = std * normalised + mean with the statistics averaged over the mel bins folded
    into its weights and bias. Exact folding is impossible (the statistics vary along the axis the kernel
    slides over); what is left (about a third of a normalised unit of offset) is for fine-tuning to absorb,
    from a start far closer than a +10 shift of every input."""
    import torch

    mean = float(torch.tensor(normalize["fixed_mean"]).mean())
    std = float(torch.tensor(normalize["fixed_std"]).mean())
    with torch.no_grad():
        if conv.bias is not None:
            conv.bias += mean * conv.weight.sum(dim=(1, 2, 3))
        conv.weight *= std
