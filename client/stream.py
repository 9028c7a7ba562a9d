"""Stream audio to the served `multitalker_asr` ensemble and get per-speaker results back.

    client = StreamingClient("127.0.0.1:8001", protocol="grpc")
    transcript = client.transcribe(audio_16k_mono)            # or: for update in client.stream(chunks): ...
    transcript.seglst                                          # final per-speaker segments

One stream is one Triton sequence (a random 63-bit id unless given). Chunks go in order, one at
a time over HTTP, back to back over one gRPC stream (or paced in real time). A server that is
down or goes away mid-stream raises :class:`StreamError` within `timeout_s`, never hangs; the
error carries the words that were final before the failure.
"""

from __future__ import annotations

import json
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from mtasr.protocol import AUDIO, CLIENT_OUTPUTS, ENSEMBLE, speaker_name

OUTPUTS = tuple(name for name, _, _ in CLIENT_OUTPUTS)


class StreamError(RuntimeError):
    """The stream failed; `final_words` are the words the server had completed before that.

    `lost` is true when the server no longer holds the stream's state (it restarted, was stopped, or
    went away mid-stream): the stream cannot continue, but a new stream can start once it is back."""

    def __init__(self, message: str, final_words: list[Word] | None = None, lost: bool = False) -> None:
        super().__init__(message)
        self.final_words = final_words or []
        self.lost = lost


# How a stream whose state is gone shows itself: the connection broke or was refused (the server
# died, restarted or stopped), a chunk reached a server that never saw the stream's START, or the
# model was being unloaded (a server stopping after its grace period) when the chunk arrived.
_LOST_SIGNS = (
    "must specify the START flag",
    "is not active here",
    "has no available versions",
    "UNAVAILABLE",
    "Socket closed",
    "no longer in valid state",
    "Connection refused",
    "Connection reset",
    "Broken pipe",
    "RemoteDisconnected",
)


def _failure(url: str, index: int, err: object, words: list[Word]) -> StreamError:
    """The error for chunk `index` failing with `err`, saying so plainly when the stream was lost."""
    text = str(err) or type(err).__name__
    if index > 0 and any(sign.lower() in f"{text} {type(err).__name__}".lower() for sign in _LOST_SIGNS):
        return StreamError(
            f"the stream was lost at chunk {index}: the server at {url} restarted, stopped or went away, and "
            f"this stream's state is gone; start a new stream to go on ({text})",
            words,
            lost=True,
        )
    return StreamError(f"chunk {index} failed: {text}", words)


@dataclass(frozen=True)
class Word:
    speaker: str
    text: str
    start: float
    end: float


@dataclass
class Update:
    """One response: the tokens and completed words of one chunk; `seglst` on the last one only."""

    index: int
    token_ids: list[int]
    token_speakers: list[int]
    words: list[Word]
    seglst: list[dict] | None
    latency_s: float = 0.0  # from sending the chunk to receiving its answer


@dataclass
class Transcript:
    sequence_id: int
    words: list[Word] = field(default_factory=list)
    seglst: list[dict] = field(default_factory=list)
    chunks: int = 0


@dataclass(frozen=True)
class StreamSettings:
    """Published by the server in the ensemble's config parameters."""

    sample_rate: int
    chunk_samples: int
    max_chunk_samples: int

    @property
    def chunk_s(self) -> float:
        return self.chunk_samples / self.sample_rate


def _update(index: int, outputs: dict[str, np.ndarray], latency_s: float) -> Update:
    words = [
        Word(speaker_name(slot), text.decode(), float(start), float(end))
        for slot, text, start, end in zip(
            outputs["WORD_SPEAKERS"].tolist(),
            outputs["WORDS"].tolist(),
            outputs["WORD_STARTS"].tolist(),
            outputs["WORD_ENDS"].tolist(),
            strict=True,
        )
    ]
    final = outputs["TRANSCRIPT"].reshape(-1)[0]
    return Update(
        index,
        outputs["TOKEN_IDS"].tolist(),
        outputs["TOKEN_SPEAKERS"].tolist(),
        words,
        json.loads(final) if final else None,
        latency_s,
    )


class StreamingClient:
    """A connection to one server; `protocol` is "grpc" (streaming) or "http"."""

    def __init__(self, url: str | None = None, protocol: str = "grpc", timeout_s: float = 10.0) -> None:
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        self.protocol = protocol
        self.url = url or ("127.0.0.1:8001" if protocol == "grpc" else "127.0.0.1:8000")
        self.timeout_s = timeout_s
        self._settings: StreamSettings | None = None

    def _client(self):
        if self.protocol == "grpc":
            import tritonclient.grpc as grpcclient

            return grpcclient.InferenceServerClient(self.url)
        import tritonclient.http as httpclient

        return httpclient.InferenceServerClient(
            self.url, connection_timeout=self.timeout_s, network_timeout=max(60.0, self.timeout_s)
        )

    def settings(self) -> StreamSettings:
        """Check the server is up and serving the ensemble; read its chunk size. StreamError if not."""
        if self._settings is None:
            client = self._client()
            try:
                kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
                if not client.is_model_ready(ENSEMBLE, **kwargs):
                    raise StreamError(f"the server at {self.url} does not serve '{ENSEMBLE}' (not loaded or not ready)")
                if self.protocol == "grpc":
                    config = client.get_model_config(ENSEMBLE, as_json=True, **kwargs)["config"]
                else:
                    config = client.get_model_config(ENSEMBLE)
            except StreamError:
                raise
            except Exception as err:  # connection refused, timeout, DNS...
                raise StreamError(f"cannot reach a Triton server at {self.url} ({self.protocol}): {err}") from None
            finally:
                client.close()
            params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
            try:
                names = ("sample_rate", "chunk_samples", "max_chunk_samples")
                self._settings = StreamSettings(**{k: int(params[k]) for k in names})
            except KeyError:
                raise StreamError(
                    f"'{ENSEMBLE}' at {self.url} does not publish its chunk size (an older export?)"
                ) from None
        return self._settings

    def stream(
        self,
        chunks: Iterable[np.ndarray],
        sequence_id: int | None = None,
        *,
        realtime: bool = False,
    ) -> Iterator[Update]:
        """Send `chunks` (float32 mono at the server's rate) as one stream; yield one Update per chunk.

        The last chunk closes the stream (an empty END request if `chunks` is empty).
        """
        settings = self.settings()
        sequence_id = sequence_id or secrets.randbits(63) or 1
        pieces = _with_last_flag(chunks)
        send = self._grpc_stream if self.protocol == "grpc" else self._http_stream
        yield from send(pieces, sequence_id, settings.chunk_s if realtime else 0.0)

    def transcribe(
        self,
        audio: np.ndarray | Iterable[np.ndarray],
        sequence_id: int | None = None,
        *,
        realtime: bool = False,
        on_update: Callable[[Update], None] | None = None,
    ) -> Transcript:
        """Stream a signal in the server's chunk size; return the final transcript. `audio` is the
        whole signal, or its blocks of any sizes as they are read (see client.audio.open_audio)."""
        settings = self.settings()
        if isinstance(audio, np.ndarray):
            whole = np.ascontiguousarray(audio, dtype=np.float32)
            size = settings.chunk_samples
            chunks: Iterable[np.ndarray] = (whole[i : i + size] for i in range(0, len(whole), size))
        else:
            chunks = rechunk(audio, settings.chunk_samples)
        transcript = Transcript(sequence_id or secrets.randbits(63) or 1)
        # A StreamError from stream() already carries every word it yielded.
        for update in self.stream(chunks, transcript.sequence_id, realtime=realtime):
            transcript.words += update.words
            transcript.chunks += 1
            if update.seglst is not None:
                transcript.seglst = update.seglst
            if on_update:
                on_update(update)
        return transcript

    def _grpc_stream(self, pieces, sequence_id: int, period_s: float) -> Iterator[Update]:
        import tritonclient.grpc as grpcclient

        answers: queue.Queue = queue.Queue()
        client = grpcclient.InferenceServerClient(self.url)
        outputs = [grpcclient.InferRequestedOutput(name) for name in OUTPUTS]
        words: list[Word] = []
        index = 0
        awaiting_answer = False
        try:
            client.start_stream(callback=lambda result, error: answers.put((result, error)))
            start = time.perf_counter()
            for index, (chunk, last) in enumerate(pieces):
                _pace(start, index, period_s)
                tensor = grpcclient.InferInput(AUDIO, [1, len(chunk)], "FP32")
                tensor.set_data_from_numpy(np.ascontiguousarray(chunk, dtype=np.float32)[None])
                sent = time.perf_counter()
                client.async_stream_infer(
                    ENSEMBLE,
                    [tensor],
                    outputs=outputs,
                    sequence_id=sequence_id,
                    sequence_start=index == 0,
                    sequence_end=last,
                )
                awaiting_answer = True
                try:
                    result, error = answers.get(timeout=self.timeout_s + 60.0 * (index == 0))
                except queue.Empty:
                    raise StreamError(
                        f"no answer from {self.url} for chunk {index} within the timeout", words
                    ) from None
                awaiting_answer = False
                latency = time.perf_counter() - sent
                if error is not None:
                    raise _failure(self.url, index, error, words)
                update = _update(index, {name: result.as_numpy(name)[0] for name in OUTPUTS}, latency)
                words += update.words
                yield update
        except StreamError:
            raise
        except Exception as err:  # the channel broke
            raise _failure(self.url, index, f"the stream broke: {err}", words) from None
        finally:
            _close_grpc_stream(client, cancel=awaiting_answer, timeout_s=self.timeout_s)

    def _http_stream(self, pieces, sequence_id: int, period_s: float) -> Iterator[Update]:
        import tritonclient.http as httpclient

        client = self._client()
        outputs = [httpclient.InferRequestedOutput(name, binary_data=True) for name in OUTPUTS]
        words: list[Word] = []
        try:
            start = time.perf_counter()
            for index, (chunk, last) in enumerate(pieces):
                _pace(start, index, period_s)
                tensor = httpclient.InferInput(AUDIO, [1, len(chunk)], "FP32")
                tensor.set_data_from_numpy(np.ascontiguousarray(chunk, dtype=np.float32)[None], binary_data=True)
                sent = time.perf_counter()
                try:
                    result = client.infer(
                        ENSEMBLE,
                        [tensor],
                        outputs=outputs,
                        sequence_id=sequence_id,
                        sequence_start=index == 0,
                        sequence_end=last,
                    )
                except Exception as err:
                    raise _failure(self.url, index, err, words) from None
                latency = time.perf_counter() - sent
                update = _update(index, {name: result.as_numpy(name)[0] for name in OUTPUTS}, latency)
                words += update.words
                yield update
        finally:
            client.close()


def _close_grpc_stream(client, cancel: bool, timeout_s: float) -> None:
    """End the gRPC stream: half-close it and let the server finish it when no answer is awaited, cancel
    it only when one is (a hung or abandoned chunk); close the channel within `timeout_s` either way.

    Why not always cancel: Triton's stream handler can leak a cancelled stream's last request (a race in
    its gRPC cancellation), and the ensemble it names then never unloads: the server's stop waits out its
    exit timeout and fails."""

    def stop() -> None:
        try:
            client.stop_stream(cancel_requests=cancel)
        except Exception:  # noqa: BLE001 - already broken; closing is best effort
            pass

    closer = threading.Thread(target=stop, daemon=True)
    closer.start()
    closer.join(timeout_s)  # a server that never ends the stream: closing the channel below cancels it
    client.close()


def _pace(start: float, index: int, period_s: float) -> None:
    """Real time: chunk `index` is complete `(index + 1) * period` after the stream began."""
    if period_s:
        time.sleep(max(0.0, start + (index + 1) * period_s - time.perf_counter()))


def rechunk(blocks: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Float32 chunks of exactly `size` samples (the last one shorter) from blocks of any sizes."""
    pending: list[np.ndarray] = []
    held = 0
    for block in blocks:
        pending.append(np.asarray(block, np.float32).ravel())
        held += len(pending[-1])
        if held >= size:
            joined = np.concatenate(pending)
            whole = len(joined) // size * size
            yield from (joined[i : i + size] for i in range(0, whole, size))
            pending, held = [joined[whole:]], len(joined) - whole
    if held:
        yield np.concatenate(pending)


def _with_last_flag(chunks: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, bool]]:
    iterator = iter(chunks)
    previous = next(iterator, None)
    if previous is None:
        yield np.zeros(0, np.float32), True
        return
    for chunk in iterator:
        yield previous, False
        previous = chunk
    yield previous, True
