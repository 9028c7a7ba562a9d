"""The four stateful stages of the served pipeline, free of Triton so they run and test in process.

features -> diarization -> speaker_kernels -> asr, one class each. A stage takes a batch of
requests (many streams; see :class:`mtasr.streams.StageRequest`), returns one result per request
(a dict of output tensors, or a :class:`RequestError` for that request alone), and keeps per-stream
state in a :class:`mtasr.streams.StreamTable`. Graph calls are batched across every stream (and,
in the ASR stage, every active speaker) of the batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mtasr import graph_io, sortformer_state
from mtasr.chunker import ChunkGeometry, FeatureChunker, FeatureChunks
from mtasr.features import FeatureConfig, StreamingLogMel, padded_frames
from mtasr.gating import GatingConfig, SpeakerGate, mask_features
from mtasr.graphs import Graph
from mtasr.protocol import (  # noqa: F401  (re-exported: the stages' tensor names)
    ACTIVE_SPEAKERS,
    AUDIO,
    BACKGROUND_MASKS,
    CLIENT_INPUTS,
    CLIENT_OUTPUTS,
    DIARIZER_FRAMES,
    DROP_FRAMES,
    ENCODER_FRAMES,
    FEATURE_LENGTHS,
    FEATURE_MASKS,
    FEATURES,
    SPEAKER_MASKS,
    SPEAKER_PROBS,
    STAGE_IO,
    TOKEN_IDS,
    TOKEN_SPEAKERS,
    TOKEN_TIMES,
    TRANSCRIPT,
    WORD_ENDS,
    WORD_SPEAKERS,
    WORD_STARTS,
    WORDS,
)
from mtasr.rnnt import DecoderGeometry, Hypothesis, greedy_decode, start_hypotheses
from mtasr.streams import RequestError, StageRequest, StreamTable, waves
from mtasr.transcript import Tokenizer, Word, WordAssembler, seglst

Result = dict[str, np.ndarray] | RequestError


def _in_waves(
    requests: list[StageRequest],
    admit: Callable[[StageRequest], None],
    run: Callable[[list[int]], dict[int, Result]],
) -> list[Result]:
    """The batched stages' loop: per wave (at most one request per stream), `admit` each request
    (a RequestError answers that request alone), then one `run` over the admitted ones; an
    exception there (a graph failure) answers that wave's requests only."""
    results: list[Any] = [None] * len(requests)
    for wave in waves(requests):
        ready = []
        for i in wave:
            try:
                admit(requests[i])
                ready.append(i)
            except RequestError as err:
                results[i] = err
        try:
            for i, result in run(ready).items():
                results[i] = result
        except Exception as err:
            for i in ready:
                results[i] = RequestError(f"internal error, request not applied: {err}")
    return results


# ---------------------------------------------------------------------------------------------- features


@dataclass
class _FeatureStream:
    log_mel: StreamingLogMel
    chunker: FeatureChunker


class FeatureStage:
    """Audio samples -> complete encoder chunks of log-mel frames."""

    def __init__(
        self,
        features: FeatureConfig,
        geometry: ChunkGeometry,
        max_chunk_samples: int,
        idle_timeout_s: float,
        max_streams: int | None = None,
    ) -> None:
        """``max_streams``: streams open at once; the first stage refuses a START beyond it ("server
        full"), so a request the later stages see always belongs to an admitted stream."""
        self.features = features
        self.geometry = geometry
        self.max_chunk_samples = max_chunk_samples
        self.streams: StreamTable[_FeatureStream] = StreamTable(idle_timeout_s, capacity=max_streams)

    def _check(self, request: StageRequest) -> np.ndarray:
        audio = request.inputs.get(AUDIO)
        if audio is None:
            raise RequestError(f"missing input '{AUDIO}'")
        if audio.dtype != np.float32:
            raise RequestError(f"'{AUDIO}' must be float32 samples in [-1, 1] at 16 kHz, got {audio.dtype}")
        if audio.ndim != 1:
            raise RequestError(f"'{AUDIO}' must be [1, samples] (one mono chunk), got {[1, *audio.shape]}")
        if audio.size == 0 and not request.end:
            raise RequestError(f"'{AUDIO}' is empty; only the END request may carry no samples")
        if audio.size > self.max_chunk_samples:
            raise RequestError(
                f"'{AUDIO}' has {audio.size} samples, more than this deployment's maximum of "
                f"{self.max_chunk_samples}; send the audio in smaller chunks"
            )
        if not np.isfinite(audio).all():
            raise RequestError(f"'{AUDIO}' contains NaN or infinite samples")
        return audio

    def _new_stream(self) -> _FeatureStream:
        return _FeatureStream(StreamingLogMel(self.features), FeatureChunker(self.geometry, self.features.n_mels))

    def process(self, requests: list[StageRequest]) -> list[Result]:
        self.streams.evict_idle()
        return [self._one(r) for r in requests]

    def _one(self, request: StageRequest) -> Result:
        try:
            audio = self._check(request)
            stream = self.streams.admit(request, self._new_stream)
        except RequestError as err:
            return err
        parts = [stream.chunker.accept(stream.log_mel.accept(audio))]
        if request.end:
            tail = stream.log_mel.flush()
            # NeMo's buffer also chunks the preprocessor's padding frame(s) past the valid length.
            n_pad = padded_frames(self.features, stream.log_mel.num_samples) - stream.log_mel.num_frames
            tail = np.concatenate(
                [tail, np.full((self.features.n_mels, n_pad), self.features.pad_value, np.float32)], 1
            )
            parts += [stream.chunker.accept(tail), stream.chunker.finish()]
            self.streams.end(request.stream)
        lengths, drop = np.concatenate([p.lengths for p in parts]), np.concatenate([p.drop for p in parts])
        return {
            FEATURES: np.concatenate([p.features for p in parts]),
            FEATURE_LENGTHS: lengths,
            DROP_FRAMES: drop,
            ENCODER_FRAMES: self.geometry.encoder_frames(lengths, drop),
        }


def _chunks_of(request: StageRequest) -> FeatureChunks:
    try:
        chunks = FeatureChunks(request.inputs[FEATURES], request.inputs[FEATURE_LENGTHS], request.inputs[DROP_FRAMES])
    except KeyError as err:
        raise RequestError(f"missing input {err}") from None
    if chunks.features.ndim != 3 or not (len(chunks) == chunks.features.shape[0] == chunks.drop.shape[0]):
        raise RequestError(f"malformed feature chunks: {chunks.features.shape}")
    return chunks


# ------------------------------------------------------------------------------------------- diarization


class DiarizationStage:
    """Feature chunks -> per-frame speaker probabilities, Sortformer cache and FIFO kept per stream."""

    def __init__(
        self,
        params: sortformer_state.SortformerParams,
        graph: Graph,
        idle_timeout_s: float,
        trim_cache: bool = False,
    ) -> None:
        self.params = params
        self.graph = graph
        self.trim_cache = trim_cache  # the graph takes any cache/FIFO width (sortformer_state.core_inputs)
        self.streams: StreamTable[sortformer_state.SortformerStreamState] = StreamTable(idle_timeout_s)

    def process(self, requests: list[StageRequest]) -> list[Result]:
        self.streams.evict_idle()

        def admit(request: StageRequest) -> None:
            _chunks_of(request)
            self.streams.admit(request, lambda: sortformer_state.init_state(self.params, 1))

        return _in_waves(
            requests, admit, lambda ready: self._run(requests, ready, {i: _chunks_of(requests[i]) for i in ready})
        )

    def _run(self, requests, ready: list[int], chunks: dict[int, FeatureChunks]) -> dict[int, Result]:
        results: dict[int, Result] = {}
        probs: dict[int, list[np.ndarray]] = {i: [] for i in ready}
        frames: dict[int, list[int]] = {i: [] for i in ready}
        for r in range(max((len(chunks[i]) for i in ready), default=0)):
            rows = [i for i in ready if len(chunks[i]) > r]
            states = [self.streams.get(requests[i].stream) for i in rows]
            calls = [np.arange(len(rows))]
            if self.trim_cache:  # fed as wide as each call needs: streams of similar fill called together
                calls = sortformer_state.width_batches(
                    np.concatenate([s.spkcache_lengths for s in states]),
                    np.concatenate([s.fifo_lengths for s in states]),
                    self.params.chunk_frames,
                )
            for call in calls:
                members = [rows[k] for k in call]
                state = sortformer_state.SortformerStreamState.stack([states[k] for k in call])
                chunk_preds, valid = self._call(requests, members, state, r, chunks)
                for row, i in enumerate(members):
                    probs[i].append(chunk_preds[row])
                    frames[i].append(int(valid[row]))
        for i in ready:
            stacked = np.stack(probs[i]) if probs[i] else np.zeros((0, 0, self.params.n_spk), np.float32)
            results[i] = {SPEAKER_PROBS: stacked.astype(np.float32), DIARIZER_FRAMES: np.array(frames[i], np.int64)}
            if requests[i].end:
                self.streams.end(requests[i].stream)
        return results

    def _call(
        self, requests, rows: list[int], state: sortformer_state.SortformerStreamState, r: int, chunks
    ) -> tuple[np.ndarray, np.ndarray]:
        """One graph call on chunk `r` of the requests `rows` (their streams' `state`, stacked): each stream's
        state advanced; returns the chunk's speaker probabilities and valid frames, a row per request."""
        feeds = sortformer_state.core_inputs(
            state,
            np.stack([chunks[i].features[r] for i in rows]),
            np.array([chunks[i].lengths[r] for i in rows]),
            np.array([chunks[i].drop[r] for i in rows]),
            trim=self.trim_cache,
        )
        out = self.graph.run(feeds)
        new_state, chunk_preds = sortformer_state.streaming_update(
            self.params,
            state,
            out[sortformer_state.CHUNK_PRE_ENCODE_EMBS],
            out[sortformer_state.CHUNK_PRE_ENCODE_LENGTHS],
            out[sortformer_state.SPKCACHE_FIFO_CHUNK_PREDS],
            sync=not self.params.async_streaming,
        )
        for row, i in enumerate(rows):
            self.streams.start(requests[i].stream, new_state.select([row]))
        return chunk_preds, out[sortformer_state.CHUNK_PRE_ENCODE_LENGTHS]


# --------------------------------------------------------------------------------------- speaker kernels


class SpeakerKernelStage:
    """Speaker probabilities -> active slots, the target/background masks of the speaker kernels and,
    with "masked" conditioning, each slot's feature mask."""

    def __init__(
        self, config: GatingConfig, n_slots: int, mask_width: int, feature_width: int, idle_timeout_s: float
    ) -> None:
        self.config = config
        self.n_slots = n_slots
        self.mask_width = mask_width
        # Feature masks are sent only when they are used: 0 frames wide tells the ASR stage "none".
        self.feature_width = feature_width if config.conditioning == "masked" else 0
        self.streams: StreamTable[SpeakerGate] = StreamTable(idle_timeout_s)

    def process(self, requests: list[StageRequest]) -> list[Result]:
        self.streams.evict_idle()
        return [self._one(r) for r in requests]

    def _one(self, request: StageRequest) -> Result:
        try:
            probs = request.inputs[SPEAKER_PROBS]
            diar_frames = request.inputs[DIARIZER_FRAMES]
            enc_frames = request.inputs[ENCODER_FRAMES]
            feature_frames = request.inputs[FEATURE_LENGTHS] if self.feature_width else np.zeros_like(enc_frames)
            gate = self.streams.admit(request, lambda: SpeakerGate(self.config, self.n_slots))
        except KeyError as err:
            return RequestError(f"missing input {err}")
        except RequestError as err:
            return err
        k, s, w = probs.shape[0], self.n_slots, self.mask_width
        active = np.zeros((k, s), bool)
        speaker = np.zeros((k, s, w), np.float32)
        background = np.zeros((k, s, w), np.float32)
        features = np.zeros((k, s, self.feature_width), np.float32)
        for c in range(k):
            masks = gate.step(
                probs[c, : int(diar_frames[c])], int(enc_frames[c]), w, int(feature_frames[c]), self.feature_width
            )
            active[c], speaker[c], background[c], features[c] = (
                masks.active,
                masks.speaker,
                masks.background,
                masks.features,
            )
        if request.end:
            self.streams.end(request.stream)
        return {ACTIVE_SPEAKERS: active, SPEAKER_MASKS: speaker, BACKGROUND_MASKS: background, FEATURE_MASKS: features}


# ------------------------------------------------------------------------------------------------- asr


@dataclass(frozen=True)
class CacheShapes:
    """Per-instance encoder cache shapes (batch dim excluded), from the manifest's streaming geometry."""

    channel: tuple[int, ...]
    time: tuple[int, ...]

    @classmethod
    def from_manifest(cls, streaming: dict) -> CacheShapes:
        layers, d = int(streaming["n_layers"]), int(streaming["d_model"])
        # The channel cache is d wide (NeMo's layer inputs) or 2d (projected keys and values).
        width = int(streaming.get("channel_cache_width", d))
        return cls(
            (layers, int(streaming["last_channel_cache_size"]), width),
            (layers, d, int(streaming["conv_cache_size"])),
        )


@dataclass
class _Speaker:
    cache_channel: np.ndarray
    cache_time: np.ndarray
    cache_len: int
    hypothesis: Hypothesis
    words: WordAssembler


@dataclass
class _AsrStream:
    speakers: dict[int, _Speaker] = field(default_factory=dict)
    frame_offset: int = 0  # encoder frames decoded so far
    words: list[Word] = field(default_factory=list)


@dataclass
class _Row:
    request: int
    stream: _AsrStream
    slot: int
    speaker: _Speaker


class AsrStage:
    """Per (stream, active speaker): cache-aware encoder step with its masks, then greedy RNNT."""

    def __init__(
        self,
        geometry: ChunkGeometry,
        decoder: DecoderGeometry,
        caches: CacheShapes,
        encoder: Graph,
        prediction: Graph,
        joint: Graph,
        tokenizer: Tokenizer,
        idle_timeout_s: float,
        segment_gap_s: float = 1.0,
        pre_encoder: Graph | None = None,
    ) -> None:
        """`pre_encoder`: the encoder's front end, run once per stream before `encoder` runs the layers per
        speaker instance (`export --pre-encode stream`); None: `encoder` is the whole encoder."""
        self.geometry = geometry
        self.decoder = decoder
        self.caches = caches
        self.encoder, self.prediction, self.joint = encoder, prediction, joint
        self.pre_encoder = pre_encoder
        self.tokenizer = tokenizer
        self.segment_gap_s = segment_gap_s
        self.streams: StreamTable[_AsrStream] = StreamTable(idle_timeout_s)

    def _predict(self, tokens: np.ndarray, h: np.ndarray, c: np.ndarray):
        out = self.prediction.run(dict(zip(graph_io.DECODER_INPUTS, (tokens, h, c), strict=True)))
        return tuple(out[name] for name in graph_io.DECODER_OUTPUTS)

    def _joint(self, frames: np.ndarray, prediction: np.ndarray) -> np.ndarray:
        out = self.joint.run(dict(zip(graph_io.JOINT_INPUTS, (frames, prediction), strict=True)))
        return out[graph_io.JOINT_OUTPUTS[0]]

    def speaker_states(self) -> int:
        """Speaker instances held across every open stream (each one encoder cache and hypothesis)."""
        return sum(len(stream.speakers) for stream in self.streams.states())

    def process(self, requests: list[StageRequest]) -> list[Result]:
        self.streams.evict_idle()

        def admit(request: StageRequest) -> None:
            chunks = _chunks_of(request)
            for name in (ACTIVE_SPEAKERS, SPEAKER_MASKS, BACKGROUND_MASKS):
                if name not in request.inputs:
                    raise RequestError(f"missing input '{name}'")
            masks = request.inputs.get(FEATURE_MASKS)
            if masks is not None and masks.shape[-1] > 0:
                want = (len(chunks), request.inputs[ACTIVE_SPEAKERS].shape[-1], chunks.features.shape[1])
                if masks.shape != want:
                    raise RequestError(f"{FEATURE_MASKS} must be {list(want)}, got {list(masks.shape)}")
            self.streams.admit(request, _AsrStream)

        def run(ready: list[int]) -> dict[int, Result]:
            new_tokens: dict[int, list[tuple[int, int, int]]] = {i: [] for i in ready}  # (slot, token, frame)
            new_words: dict[int, list[Word]] = {i: [] for i in ready}
            self._run(requests, ready, new_tokens, new_words)
            return {i: self._respond(requests[i], new_tokens[i], new_words[i]) for i in ready}

        return _in_waves(requests, admit, run)

    def _run(self, requests, ready, new_tokens, new_words) -> None:
        n_chunks = {i: len(requests[i].inputs[FEATURE_LENGTHS]) for i in ready}
        for r in range(max(n_chunks.values(), default=0)):
            rows: list[_Row] = []
            fresh: list[_Row] = []
            for i in ready:
                if n_chunks[i] <= r:
                    continue
                stream = self.streams.get(requests[i].stream)
                for slot in np.flatnonzero(requests[i].inputs[ACTIVE_SPEAKERS][r]):
                    speaker = stream.speakers.get(int(slot))
                    row = _Row(i, stream, int(slot), speaker)
                    rows.append(row)
                    if speaker is None:
                        fresh.append(row)
            # A speaker seen for the first time starts from empty caches and a fresh hypothesis.
            for row, hyp in zip(fresh, start_hypotheses(self.decoder, len(fresh), self._predict), strict=True):
                row.speaker = _Speaker(
                    np.zeros(self.caches.channel, np.float32),
                    np.zeros(self.caches.time, np.float32),
                    0,
                    hyp,
                    WordAssembler(row.slot, self.geometry.encoder_frame_s),
                )
                row.stream.speakers[row.slot] = row.speaker
            if rows:
                self._step(requests, r, rows, new_tokens, new_words)
            for i in ready:
                if n_chunks[i] > r:
                    self.streams.get(requests[i].stream).frame_offset += int(requests[i].inputs[ENCODER_FRAMES][r])

    def _step(self, requests, r: int, rows: list[_Row], new_tokens, new_words) -> None:
        def instance_masks(row: _Row) -> np.ndarray | None:
            masks = requests[row.request].inputs.get(FEATURE_MASKS)
            return None if masks is None or masks.shape[-1] == 0 else masks[r][row.slot]  # None: speaker kernels only

        def features(row: _Row) -> np.ndarray:
            x = requests[row.request].inputs[FEATURES][r].T
            masks = instance_masks(row)
            return x if masks is None else mask_features(x, masks)

        def audio_feeds(audio_rows: list[_Row]) -> dict[str, np.ndarray]:
            inputs = [requests[row.request].inputs for row in audio_rows]
            return {
                "features": np.stack([features(row) for row in audio_rows]),
                "feature_lengths": np.stack([x[FEATURE_LENGTHS][r] for x in inputs]),
                "drop_extra_pre_encoded": np.stack([x[DROP_FRAMES][r] for x in inputs]),
            }

        def per_row(name: str) -> np.ndarray:
            return np.stack([requests[row.request].inputs[name][r][row.slot] for row in rows])

        feeds = {
            "cache_last_channel": np.stack([row.speaker.cache_channel for row in rows]),
            "cache_last_time": np.stack([row.speaker.cache_time for row in rows]),
            "cache_last_channel_len": np.array([row.speaker.cache_len for row in rows], np.int64),
            "speaker_mask": per_row(SPEAKER_MASKS),
            "background_mask": per_row(BACKGROUND_MASKS),
        }
        if self.pre_encoder is None:
            feeds.update(audio_feeds(rows))
            encoder_inputs = graph_io.ENCODER_INPUTS
        else:
            # Every speaker of a stream hears the same features (unless they are masked per speaker): the front
            # end runs once for them all.
            keys = [(row.request, -1 if instance_masks(row) is None else row.slot) for row in rows]
            audio_rows: list[_Row] = []
            position: dict[tuple[int, int], int] = {}  # each key's row of the front end's batch
            for row, key in zip(rows, keys, strict=True):
                if key not in position:
                    position[key] = len(audio_rows)
                    audio_rows.append(row)
            pre = self.pre_encoder.run({k: np.ascontiguousarray(v) for k, v in audio_feeds(audio_rows).items()})
            index = np.array([position[key] for key in keys])
            feeds.update({name: pre[name][index] for name in graph_io.PRE_ENCODER_OUTPUTS})
            encoder_inputs = graph_io.ENCODER_LAYER_INPUTS
        out = self.encoder.run({name: np.ascontiguousarray(feeds[name]) for name in encoder_inputs})
        encoded, lengths, channel, time, channel_len = (out[name] for name in graph_io.ENCODER_OUTPUTS)
        decoded = greedy_decode(
            self.decoder,
            np.ascontiguousarray(encoded.transpose(0, 2, 1)),
            lengths,
            [row.speaker.hypothesis for row in rows],
            np.array([row.stream.frame_offset for row in rows], np.int64),
            self._predict,
            self._joint,
        )
        for k, (row, tokens) in enumerate(zip(rows, decoded, strict=True)):
            sp = row.speaker
            sp.cache_channel, sp.cache_time, sp.cache_len = channel[k], time[k], int(channel_len[k])
            new_tokens[row.request] += [(row.slot, token, frame) for token, frame in tokens]
            words = sp.words.push(self.tokenizer, tokens)
            row.stream.words += words
            new_words[row.request] += words

    def _respond(self, request: StageRequest, tokens: list, words: list[Word]) -> dict[str, np.ndarray]:
        transcript = ""
        if request.end:
            stream = self.streams.get(request.stream)
            for slot in sorted(stream.speakers):
                last = stream.speakers[slot].words.finish(self.tokenizer)
                stream.words += last
                words = words + last
            transcript = json.dumps(seglst(stream.words, str(request.stream), self.segment_gap_s))
            self.streams.end(request.stream)
        frame_s = self.geometry.encoder_frame_s
        return {
            TOKEN_IDS: np.array([t for _, t, _ in tokens], np.int32),
            TOKEN_SPEAKERS: np.array([s for s, _, _ in tokens], np.int32),
            TOKEN_TIMES: np.array([f * frame_s for _, _, f in tokens], np.float32),
            WORDS: np.array([w.text.encode() for w in words], dtype=np.object_),
            WORD_SPEAKERS: np.array([w.slot for w in words], np.int32),
            WORD_STARTS: np.array([w.start for w in words], np.float32),
            WORD_ENDS: np.array([w.end for w in words], np.float32),
            TRANSCRIPT: np.array([transcript.encode()], dtype=np.object_),
        }
