"""Recipe: the Streaming Sortformer diarizer (SortformerEncLabelModel, 4 speaker slots in arrival order).

Train from the project's small config (export.sortformer "small"), or fine-tune a given `.nemo`: load the
model, point `train_ds`/`validation_ds` at the simulator, `trainer.fit`. Targets come from the mixture's
supervisions (`mixture_batch`: NeMo's diarization dataset, minus what fails on MixedCuts), sorted by arrival
time as the slots are.

NeMo trains a streaming Sortformer through its own streaming loop (`streaming_mode`: speaker cache, FIFO,
chunks; no peak normalisation of the audio, as when serving). NeMo's recipe trains with long chunks and, for
half the batches, attention limited to a few frames of right context; for this small model that left a gap
between training and serving (a memorised mixture diarized at F1 1.0 with 7 frames of lookahead, 0.94 with
the 1.12 s serving chunks). So the recipe trains on the serving chunk (`train_chunk_len` None: the
checkpoint's chunk_len), exactly as the served stage runs: each step streams the mixture chunk by chunk
through the cache updates, about twice the cost of one long chunk, and the memorised mixture then scores
the same in training and in validation (0.99).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mtasr.training.lightning import (
    Stopwatch,
    TrainSettings,
    best_checkpoint,
    finished_model,
    make_trainer,
    optim_config,
    prepare_run,
    resume_path,
    save_trained,
)
from mtasr.training.normalization import feature_normalization, fold_into_first_conv, set_normalization
from mtasr.training.simulation import (
    CONVERSATION_SPEAKERS,
    DEFAULT_SPEAKER_WEIGHTS,
    data_configs,
    mix_in_conversations,
)

if TYPE_CHECKING:
    from omegaconf import DictConfig

CHECKPOINT_NAME = "diarizer.nemo"
# NeMo's frame-level F1 of the speaker activities under the best slot permutation (1 - F1 ~ DER).
MONITOR = "val_f1_acc"
MONITOR_MODE = "max"
# The default pair's diarizer run (`mtasr train defaults`): ~1.5-2 s per step on one CPU core.
DIARIZER_TRAIN = TrainSettings(
    max_steps=1500, batch_size=12, val_every_steps=250, lr=1e-3, warmup_steps=100, hold_fraction=0.75
)
# Stage 2 (`train_diarizer_curriculum`): lsmix mixtures never let a speaker pause and return, and a
# stage-1 model gave a returning speaker a new slot (DER 36-67 % on the evaluation set, mostly
# confusion), so it is fine-tuned with conversations mixed in.
DIARIZER_FINE_TUNE = TrainSettings(
    max_steps=600, batch_size=12, val_every_steps=200, lr=5e-4, warmup_steps=50, hold_fraction=0.5
)
CONVERSATIONS = 600
# Stage 3: in 6-15 s sessions the speaker cache (94 frames) and FIFO (94) never fill, so served on minutes
# the stage-2 model dropped a speaker once its cache was compressed (5-minute conversation: DER 86.8 %,
# 35 % missed). Stretches of 40 s and more out of 60 s conversations compress it several times.
DIARIZER_LONG_SESSIONS = TrainSettings(
    max_steps=400, batch_size=4, val_every_steps=100, lr=3e-4, warmup_steps=20, hold_fraction=0.5
)
LONG_CONVERSATIONS = 160
# Stage 4: served after stage 3, a speaker who came back after the first two turns was spread over two or three
# slots at 0.3-0.6 (missed speech: DER 52 % on two speakers); short conversations again, now 80 % of batches,
# from a fresh warm-up took it to 46.5 %.
DIARIZER_RETURNING_SPEAKERS = TrainSettings(
    max_steps=900, batch_size=12, val_every_steps=300, lr=5e-4, warmup_steps=50, hold_fraction=0.6
)
# Stage 5: the same data once more from a fresh warm-up (stage 4's validation F1 still rose at its end), now
# with the training-only voice head (`training.diarizer_model`), because the stage-4 model spread a returning
# speaker over two or three slots even on conversations it had trained on. With the head, validation F1
# 0.840 / 0.871 / 0.888 / 0.905 at steps 250 / 500 / 750 / 1,000; the same stage without it (weight 0):
# 0.842 / 0.845 / 0.867 / 0.874.
DIARIZER_VOICES = TrainSettings(
    max_steps=1000, batch_size=12, val_every_steps=250, lr=4e-4, warmup_steps=50, hold_fraction=0.6
)
# Its cross-entropy over the 10 training voices starts at ln 10 = 2.3 nats, against ~0.3 for the Sortformer
# losses; weighted so, it fell to ~0.1 by step 1,000, and the Sortformer losses fell further than without it
# (PIL loss over the last 250 steps 0.141 against 0.192; training F1 0.939 against 0.886).
VOICE_HEAD_WEIGHT = 0.3
# Stage 6: stage 5's F1 still rose by 1.7 points over its last 250 steps. Once more with the head, from a fresh
# warm-up at a lower peak, on stage 5's draws again (seed 0, as the installed model was trained; validation is
# unchanged).
DIARIZER_VOICES_AGAIN = TrainSettings(
    max_steps=800, batch_size=12, val_every_steps=200, lr=3e-4, warmup_steps=50, hold_fraction=0.6
)
# Stage 7: served, stage 6 meets the DER targets on short sessions but three speakers still cost the ASR 17 points
# of cpWER against the reference turns (a returning speaker's onset in a spurious slot), and on the 5-minute
# conversation the third voice is spread over three slots (DER 47 %). Conversations of three and four speakers
# mostly, each at least 24 s so that stretches of 10 s and more fill and compress the speaker cache (94 + 94
# frames, 15 s), with the voice head, from stage 6. Validation F1 (its validation stretches 10 s and more)
# 0.916 / 0.921 / 0.922 / 0.930 at steps 125 / 250 / 375 / 500; served beside ASR stage 9: DER 2 / 3 speakers
# 6.1 -> 3.1 / 13.9 -> 14.8 %, the 5-minute conversation 47.0 -> 31.1 %; cpWER 3 speakers 36.7 -> 32.9 %, the
# 5-minute conversation 68.2 -> 61.0 %, the demo 30.0 -> 20.0 %.
DIARIZER_MANY_SPEAKERS = TrainSettings(
    max_steps=500, batch_size=8, val_every_steps=125, lr=3e-4, warmup_steps=50, hold_fraction=0.6, seed=7
)
# Tried after stage 7, not kept: stage 7 once more on new draws (seed 8, 600 steps; validation F1 0.912 / 0.919 /
# 0.922 / 0.944 at steps 150 / 300 / 450 / 600). The diarizer alone on the selection set (`evalset.SELECTION_SET`)
# 4.0 -> 2.9 / 13.5 -> 10.9 % DER on 2 / 3 speakers, but served with the averaged ASR its cpWER there 14.8 -> 14.1 /
# 26.9 -> 28.8 %: no fewer word errors (runs/defaults/evaluation.md).
# Also not kept: stage 7 continued from its own model (seed 9, 300 steps at 1.5e-4, 2,771 s; validation F1 0.938): alone
# on the selection set DER 2 / 3 speakers 4.0 -> 3.3 / 13.5 -> 11.2 %, the mean of its weights and stage 7's 2.7 /
# 12.1 %, but served with the averaged ASR 638 and 634 word errors against 631. The ASR was fine-tuned on stage 7's
# masks; a better diarizer alone has not given it fewer errors.
# Also not kept: stage 7 fine-tuned on long conversations (90 s, stretches of 45 s and more, so the cache compresses
# many times in each; 160 conversations, batch 4, 300 steps at 1.5e-4 after 20 of warm-up, seed 10, about 4,700 s on one
# thread; best validation F1 0.916 at step 200). The 5-minute conversations' DER 29.5 -> 25.8 % (selection set) and
# 31.1 -> 30.3 % (reported), but the short sessions' 1.4 / 4.0 / 13.5 -> 4.3 / 4.7 / 15.6 % on 1 / 2 / 3 speakers;
# the mean of its weights and stage 7's 25.9 / 33.3 % and 1.6 / 3.8 / 14.2 %. Confusion between two voices stays
# (runs/defaults/evaluation.md).
MANY_SPEAKER_CONVERSATIONS = {2: 0.3, 3: 0.5, 4: 0.2}
MANY_SPEAKER_CONVERSATION_COUNT = 320  # of 24 s and more: over two hours to cut stretches from
# A conversation stage validates on these too: stretches of conversations of the held-out sentences.
VALIDATION_CONVERSATIONS = 24
VALIDATION_SEED = 4321


@dataclass(frozen=True)
class DiarizerRecipe:
    size: str = "small"
    train: TrainSettings = DIARIZER_TRAIN
    speaker_weights: dict[int, float] = field(default_factory=lambda: dict(DEFAULT_SPEAKER_WEIGHTS))
    validation_mixtures: dict[int, int] = field(default_factory=lambda: {1: 16, 2: 16, 3: 16, 4: 16})
    # Diarizer frames (80 ms) per training chunk; None: the checkpoint's chunk_len (the serving chunk). 188
    # (15 s, longer than any mixture) trains offline, as NeMo's released recipe does.
    train_chunk_len: int | None = None
    # Conversations (speakers pause and return; NeMo's mixture_loader) mixed into the lsmix mixtures,
    # where each speaker says one utterance: 0 = none. See `evalset.write_conversations`.
    conversations: int = 0
    conversation_weight: float = 0.5
    conversation_s: float | None = None  # each conversation's length; None: one 6-15 s conversation
    stretch_s: float = 6.0  # the shortest stretch the simulator cuts out of a conversation
    # Share of the conversations with n speakers.
    conversation_speakers: dict[int, float] = field(default_factory=lambda: dict(CONVERSATION_SPEAKERS))
    # Dropout of the Sortformer modules and transformer (NeMo's released config: 0.5, for a model 50x larger
    # trained for days); None keeps the config's.
    dropout: float | None = 0.1
    # Share of training batches whose attention sees only `causal_attn_rc` frames ahead (NeMo's released
    # recipe: 0.5, with long chunks). Trained on the serving chunk, attention is already limited as served: 0.
    # None keeps the config's.
    causal_attention_rate: float | None = 0.0
    memorise: bool = False  # train on the validation mixtures: the overfit check of the recipe
    # The ASR recipe's fixed per-bin feature normalisation (`training.normalization`). Served, the diarizer
    # reads the ASR's features, so it must be trained on them; False: NeMo's "NA" (for an ASR trained so).
    fixed_normalization: bool = True
    # Weight of the training-only voice head (`training.diarizer_model`): which of the corpus's voices speaks,
    # frame by frame, from the encoder's output; 0 = none. Dropped from the saved model.
    voice_head_weight: float = 0.0


def training_voices(manifest: Path) -> list[str]:
    """The voices of the training manifest, sorted: the voice head's classes."""
    from mtasr.training.corpus import read_manifest

    return sorted({entry["speaker_id"] for entry in read_manifest(manifest)})


def _data_config(recipe: DiarizerRecipe, manifest: Path, val_cuts: Path, model_cfg: DictConfig) -> tuple[dict, dict]:
    """Lhotse train/validation configs; targets on the model's own frame grid."""
    common = {
        "use_lhotse": True,
        "sample_rate": int(model_cfg.sample_rate),
        "num_speakers": int(model_cfg.max_num_of_spks),
        "window_stride": float(model_cfg.preprocessor.window_stride),
        "subsampling_factor": int(model_cfg.encoder.subsampling_factor),
        "num_workers": 0,
        "batch_size": recipe.train.batch_size,
    }
    train, validation = data_configs(
        common, manifest, val_cuts, recipe.speaker_weights, recipe.train.seed, recipe.memorise
    )
    if recipe.conversations:
        mix_in_conversations(
            train,
            manifest,
            val_cuts.parent / "conversations",
            recipe.conversations,
            recipe.conversation_weight,
            recipe.train.seed,
            recipe.conversation_s,
            recipe.stretch_s,
            recipe.conversation_speakers,
        )
        if not recipe.memorise:
            validation["cuts_path"] = str(_validation_with_conversations(recipe, manifest, val_cuts))
    return train, validation


def _validation_with_conversations(recipe: DiarizerRecipe, manifest: Path, val_cuts: Path) -> Path:
    """The lsmix validation mixtures plus fixed stretches of conversations of the dev sentences, as long as the
    stage's own: the monitored F1 (and so the checkpoint kept) then sees what the stage trains for, speakers
    who pause and return and, in long stretches, a speaker cache that fills. Lsmix mixtures see neither."""
    from lhotse import CutSet

    from mtasr.training.corpus import validation_manifest
    from mtasr.training.evalset import write_conversations
    from mtasr.training.simulation import draw_stretches

    combined = val_cuts.with_name("validation_cuts_with_conversations.jsonl.gz")
    if combined.is_file():
        return combined
    folder = val_cuts.parent / "validation_conversations"
    sessions = folder / "sessions.json"
    if not sessions.is_file():
        write_conversations(
            validation_manifest(manifest.parent),
            folder,
            VALIDATION_CONVERSATIONS,
            CONVERSATION_SPEAKERS,
            VALIDATION_SEED,
            recipe.conversation_s,
        )
    stretches = draw_stretches(sessions, VALIDATION_CONVERSATIONS, recipe.stretch_s, VALIDATION_SEED)
    (CutSet.from_file(str(val_cuts)) + CutSet.from_cuts(stretches)).to_file(str(combined))
    return combined


def build_config(recipe: DiarizerRecipe, manifest: Path, val_cuts: Path) -> DictConfig:
    """The small Sortformer config (export.sortformer.sortformer_config) with the simulator as its data."""
    from omegaconf import open_dict

    from mtasr.export.sortformer import sortformer_config

    cfg = sortformer_config(recipe.size)
    train_ds, validation_ds = _data_config(recipe, manifest, val_cuts, cfg)
    with open_dict(cfg):
        cfg.train_ds = train_ds
        cfg.validation_ds = validation_ds
        cfg.optim = optim_config(recipe.train)
        _adapt(cfg, recipe)
        if recipe.fixed_normalization:
            cfg.preprocessor.normalize = feature_normalization(manifest, cfg.preprocessor)
    return cfg


def _normalize_like_the_asr(model, recipe: DiarizerRecipe, manifest: Path) -> None:
    """A restored model on the recipe's features; one trained without normalisation has the statistics
    folded (approximately) into its first convolution, so fine-tuning starts close to where it was."""
    if not recipe.fixed_normalization or not isinstance(model.cfg.preprocessor.get("normalize"), str):
        return
    normalize = feature_normalization(manifest, model.cfg.preprocessor)
    if model.cfg.preprocessor.normalize == "NA":
        fold_into_first_conv(model.encoder.pre_encode.conv[0], normalize)
    set_normalization(model, normalize)


def _adapt(cfg: DictConfig, recipe: DiarizerRecipe) -> None:
    """The recipe's dropout and causal-attention share, in a new or a restored model's config."""
    if recipe.dropout is not None:
        _set_dropout(cfg, recipe.dropout)
    if recipe.causal_attention_rate is not None:
        cfg.sortformer_modules.causal_attn_rate = recipe.causal_attention_rate


def _adapt_modules(model, recipe: DiarizerRecipe) -> None:
    """`_adapt` for a model already built: its modules read these settings at run time."""
    import torch

    if recipe.causal_attention_rate is not None:
        model.sortformer_modules.causal_attn_rate = recipe.causal_attention_rate
    if recipe.dropout is not None:
        for module in (model.sortformer_modules, model.transformer_encoder):
            for layer in module.modules():
                if isinstance(layer, torch.nn.Dropout):
                    layer.p = recipe.dropout


def _set_dropout(cfg: DictConfig, p: float) -> None:
    cfg.sortformer_modules.dropout_rate = p
    for key in ("attn_score_dropout", "attn_layer_dropout", "ffn_dropout"):
        cfg.transformer_encoder[key] = p


def mixture_batch(
    cuts, num_speakers: int, window_stride: float, subsampling_factor: int, voices: list[str] | None = None
) -> tuple:
    """(audio, audio_lens, targets [B, T, num_speakers], target_lens) of a batch of mono (mixed) cuts, and with
    `voices`, each slot's voice index [B, num_speakers] (`slot_voices`; the voice head's labels).

    What NeMo's `LhotseAudioToSpeechE2ESpkDiarDataset` returns, without its first-channel selection:
    `with_channels` does not exist on the simulator's MixedCuts. Slots are in arrival order.
    """
    import torch
    from lhotse import CutSet
    from lhotse.dataset import AudioSamples
    from lhotse.dataset.collation import collate_matrices
    from nemo.collections.asr.parts.utils.asr_multispeaker_utils import (
        get_hidden_length_from_sample_length,
        speaker_to_target,
    )

    cuts = CutSet.from_cuts(cuts)
    samples_per_frame = round(window_stride * cuts[0].sampling_rate)
    masks = [
        speaker_to_target(cut, num_speakers, samples_per_frame, subsampling_factor, boundary_segments=True)
        for cut in cuts
    ]
    audio, audio_lens = AudioSamples()(cuts)
    targets = collate_matrices([m[:, :num_speakers] for m in masks]).to(audio.dtype)
    target_lens = torch.tensor(
        [get_hidden_length_from_sample_length(int(n), samples_per_frame, subsampling_factor) for n in audio_lens]
    )
    if voices is None:
        return audio, audio_lens, targets, target_lens
    return audio, audio_lens, targets, target_lens, torch.stack([slot_voices(c, voices, num_speakers) for c in cuts])


def arrival_order(cut) -> list[str]:
    """The cut's speakers in the order of their first segment: the slot order of NeMo's `speaker_to_target`
    (boundary segments included, as `mixture_batch` asks it), whose segment walk this repeats to name them."""
    from lhotse import MonoCut, SupervisionSet
    from lhotse.cut import MixedCut
    from nemo.collections.asr.parts.utils.asr_multispeaker_utils import find_segments_from_rttm

    if isinstance(cut, MixedCut):
        tracks = [(t.cut, t.offset) for t in cut.tracks if isinstance(t.cut, MonoCut)]
    else:
        tracks = [(cut, 0.0)]
    starts = []
    for track, offset in tracks:
        if track.custom and track.custom.get("rttm_filepath"):
            segments = SupervisionSet.from_rttm(track.custom["rttm_filepath"])
        elif track.supervisions:
            segments = SupervisionSet(track.supervisions)
        else:
            continue
        begin = track.offset if hasattr(track, "offset") else track.start
        recording = segments[0].recording_id if len(segments) else track.recording_id
        found = find_segments_from_rttm(recording, segments, begin, begin + track.duration, tolerance=0.0)
        starts += [(max(seg.start, 0.0) + offset, seg.speaker) for seg in found]
    starts.sort(key=lambda start_speaker: start_speaker[0])  # stable, as NeMo's sort of the same list
    return list(dict.fromkeys(speaker for _, speaker in starts))


def slot_voices(cut, voices: list[str], num_speakers: int):
    """[num_speakers] index in `voices` of the voice in each slot; NO_VOICE for an empty slot or a voice not
    listed (a held-out one)."""
    import torch

    from mtasr.training.diarizer_model import NO_VOICE

    index = {voice: i for i, voice in enumerate(voices)}
    slots = [index.get(speaker, NO_VOICE) for speaker in arrival_order(cut)[:num_speakers]]
    return torch.tensor(slots + [NO_VOICE] * (num_speakers - len(slots)), dtype=torch.long)


class _MixtureDataset:
    """A lhotse map-style dataset (a CutSet in, a batch out) over `mixture_batch`."""

    def __init__(self, cfg: DictConfig, voices: list[str] | None = None) -> None:
        self.args = (int(cfg.num_speakers), float(cfg.window_stride), int(cfg.subsampling_factor), voices)

    def __getitem__(self, cuts) -> tuple:
        return mixture_batch(cuts, *self.args)


def _attach_data(model) -> None:
    """Point the model's train/validation dataloaders at `_MixtureDataset` over its `train_ds`/`validation_ds`."""
    from nemo.collections.common.data.lhotse import get_lhotse_dataloader_from_config

    def loader(cfg: DictConfig, voices: list[str] | None = None):
        return get_lhotse_dataloader_from_config(
            cfg, global_rank=model.global_rank, world_size=model.world_size, dataset=_MixtureDataset(cfg, voices)
        )

    from mtasr.training.diarizer_model import VOICES_KEY

    # the voice head's labels in training batches only: NeMo's validation step takes four tensors
    model._train_dl = loader(model.cfg.train_ds, model.cfg.get(VOICES_KEY))
    model._validation_dl = loader(model.cfg.validation_ds)


def _set_chunk_len(model, chunk_len: int) -> None:
    model.sortformer_modules.chunk_len = int(chunk_len)


def _recipe_callback(train_chunk_len: int | None):
    """`train_chunk_len` while training, the checkpoint's chunk_len while validating; `train_loss` logged under the
    ASR recipe's name (NeMo's Sortformer logs it as `loss`)."""
    from lightning.pytorch.callbacks import LambdaCallback

    def serving(_trainer, model) -> None:
        _set_chunk_len(model, model.cfg.sortformer_modules.chunk_len)

    def training(_trainer, model) -> None:
        _set_chunk_len(model, train_chunk_len or model.cfg.sortformer_modules.chunk_len)

    def log_loss(_trainer, model, outputs, _batch, _batch_idx) -> None:
        model.log("train_loss", outputs["loss"].detach(), on_step=True, on_epoch=False)

    return LambdaCallback(
        on_train_start=training, on_validation_start=serving, on_validation_end=training, on_train_batch_end=log_loss
    )


def train_diarizer(
    corpus_dir: Path, out_dir: Path, recipe: DiarizerRecipe = DiarizerRecipe(), init_from: Path | None = None
) -> Path:
    """Train (or fine-tune `init_from`) on simulated mixtures of the corpus; returns `out_dir/diarizer.nemo`.

    Re-running with the same `out_dir` resumes from its `last.ckpt`; a model copied
    there without checkpoints (a finished stage) is returned as it is.
    """
    if done := finished_model(Path(out_dir) / CHECKPOINT_NAME):
        return done
    import lightning.pytorch
    from nemo.collections.asr.models import SortformerEncLabelModel
    from omegaconf import open_dict

    from mtasr.export.nemo_fixes import patch_fixed_normalization

    patch_fixed_normalization()
    out_dir, manifest, val_cuts = prepare_run(corpus_dir, out_dir, recipe.train, recipe.validation_mixtures)
    trainer = make_trainer(out_dir, recipe.train, MONITOR, MONITOR_MODE, [_recipe_callback(recipe.train_chunk_len)])
    if init_from is None:
        model = SortformerEncLabelModel(cfg=build_config(recipe, manifest, val_cuts), trainer=trainer)
    else:
        model = SortformerEncLabelModel.restore_from(str(init_from), trainer=trainer)
        train_ds, validation_ds = _data_config(recipe, manifest, val_cuts, model.cfg)
        with open_dict(model.cfg):
            model.cfg.train_ds, model.cfg.validation_ds = train_ds, validation_ds
            model.cfg.optim = optim_config(recipe.train)
            _adapt(model.cfg, recipe)
        _adapt_modules(model, recipe)
        _normalize_like_the_asr(model, recipe, manifest)
    if recipe.voice_head_weight:
        from mtasr.training.diarizer_model import with_voice_head

        model = with_voice_head(model, training_voices(manifest), recipe.voice_head_weight, trainer)
    _attach_data(model)
    # the model's __init__ re-seeds `random`, which the simulator draws from
    lightning.pytorch.seed_everything(recipe.train.seed, workers=True)
    with Stopwatch() as clock:
        trainer.fit(model, ckpt_path=resume_path(out_dir))
    best = best_checkpoint(trainer)
    if best:
        model = type(model).load_from_checkpoint(best, map_location="cpu")
    if hasattr(model, "to_plain_model"):
        model = model.to_plain_model()
    _set_chunk_len(model, model.cfg.sortformer_modules.chunk_len)
    return save_trained(model, trainer, out_dir / CHECKPOINT_NAME, clock.seconds)


# The default pair's stages, each fine-tuning the one before: lsmix mixtures from scratch, then with short
# conversations mixed in, then mostly minute-long stretches of conversations, then mostly short ones again,
# then those with the voice head, twice, then longer conversations of mostly three and four speakers.
DIARIZER_STAGES = {
    "mixtures": DiarizerRecipe(),
    "conversations": DiarizerRecipe(train=DIARIZER_FINE_TUNE, conversations=CONVERSATIONS),
    "long_conversations": DiarizerRecipe(
        train=DIARIZER_LONG_SESSIONS,
        conversations=LONG_CONVERSATIONS,
        conversation_s=60.0,
        stretch_s=40.0,
        conversation_weight=0.8,
    ),
    "conversations_restart": DiarizerRecipe(
        train=DIARIZER_RETURNING_SPEAKERS, conversations=CONVERSATIONS, conversation_weight=0.8
    ),
    "conversations_voice_head": DiarizerRecipe(
        train=DIARIZER_VOICES,
        conversations=CONVERSATIONS,
        conversation_weight=0.8,
        voice_head_weight=VOICE_HEAD_WEIGHT,
    ),
    "conversations_voice_head_again": DiarizerRecipe(
        train=DIARIZER_VOICES_AGAIN,
        conversations=CONVERSATIONS,
        conversation_weight=0.8,
        voice_head_weight=VOICE_HEAD_WEIGHT,
    ),
    "many_speaker_conversations": DiarizerRecipe(
        train=DIARIZER_MANY_SPEAKERS,
        conversations=MANY_SPEAKER_CONVERSATION_COUNT,
        conversation_weight=0.8,
        conversation_s=24.0,
        stretch_s=10.0,
        conversation_speakers=dict(MANY_SPEAKER_CONVERSATIONS),
        voice_head_weight=VOICE_HEAD_WEIGHT,
    ),
}
DIARIZER_CURRICULUM = tuple(DIARIZER_STAGES.values())


def train_diarizer_curriculum(corpus_dir: Path, out_dir: Path, stages: tuple = DIARIZER_CURRICULUM) -> Path:
    """Each stage in `out_dir/<its DIARIZER_STAGES name>`, the first from scratch, each next one fine-tuned
    from the one before (a finished stage is not trained again). Returns the last stage's `diarizer.nemo`."""
    model = None
    for name, recipe in zip(DIARIZER_STAGES, stages, strict=True):
        model = train_diarizer(corpus_dir, Path(out_dir) / name, recipe, init_from=model)
    return model
