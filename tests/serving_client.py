"""A bare tritonclient driver for the serving tests: many streams, gRPC streaming or HTTP.

Deliberately plain tritonclient (what docs/protocol.md tells users to write); the project's client library
is separate. Each stream is a list of audio chunks; results come back per stream, in order, as
dicts of output arrays (batch dimension removed) or an error string.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict

import numpy as np

from mtasr.deployment import ENSEMBLE
from mtasr.stages import AUDIO, CLIENT_OUTPUTS, TOKEN_IDS, TOKEN_SPEAKERS

OUTPUT_NAMES = [name for name, _, _ in CLIENT_OUTPUTS]
Result = dict[str, np.ndarray] | str


def _decode(result) -> dict[str, np.ndarray]:
    return {name: result.as_numpy(name)[0] for name in OUTPUT_NAMES}


def _schedule(streams: dict[int, list[np.ndarray]], interleave: bool) -> list[tuple[int, int]]:
    """(stream, chunk index) in sending order: round-robin across streams, or one stream after another."""
    if not interleave:
        return [(sid, k) for sid, chunks in streams.items() for k in range(len(chunks))]
    order, longest = [], max(len(c) for c in streams.values())
    for k in range(longest):
        order += [(sid, k) for sid, chunks in streams.items() if k < len(chunks)]
    return order


def stream_grpc(
    address: str,
    streams: dict[int, list[np.ndarray]],
    *,
    interleave: bool = True,
    pace_s: float = 0.0,
    wait_each: bool = False,
    flags: dict[tuple[int, int], tuple[bool, bool]] | None = None,
    timeout_s: float = 120.0,
) -> dict[int, list[Result]]:
    """Send every chunk over one gRPC stream. `pace_s` sleeps between sends; `wait_each` waits for
    each response before the next send. `flags` overrides (start, end) for chosen chunks."""
    import tritonclient.grpc as grpcclient

    answers: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(address)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    results: dict[int, list[Result]] = defaultdict(list)
    pending: dict[str, int] = {}

    def collect(n: int, last_sid: int) -> None:
        for _ in range(n):
            result, error = answers.get(timeout=timeout_s)
            if error is not None:
                # An error on the stream does not say which request failed: with `wait_each` it is
                # the one just sent; otherwise it is filed under -1 (tests expect none there).
                results[last_sid if wait_each else -1].append(str(error))
            else:
                rid = result.get_response().id
                results[pending.pop(rid)].append(_decode(result))

    try:
        sent = 0
        for n, (sid, k) in enumerate(_schedule(streams, interleave)):
            chunks = streams[sid]
            start, end = (flags or {}).get((sid, k), (k == 0, k == len(chunks) - 1))
            audio = grpcclient.InferInput(AUDIO, [1, len(chunks[k])], "FP32")
            audio.set_data_from_numpy(chunks[k][None])
            rid = str(n)
            pending[rid] = sid
            client.async_stream_infer(
                ENSEMBLE,
                [audio],
                outputs=[grpcclient.InferRequestedOutput(o) for o in OUTPUT_NAMES],
                request_id=rid,
                sequence_id=sid,
                sequence_start=start,
                sequence_end=end,
            )
            sent += 1
            if wait_each:
                collect(1, sid)
                sent -= 1
            if pace_s:
                time.sleep(pace_s)
        collect(sent, -1)
    finally:
        client.stop_stream()
        client.close()
    return dict(results)


def stream_http(
    address: str,
    streams: dict[int, list[np.ndarray]],
    *,
    threads: int = 8,
    flags: dict[tuple[int, int], tuple[bool, bool]] | None = None,
) -> dict[int, list[Result]]:
    """Each stream on its own thread, one request at a time (HTTP carries no stream order)."""
    import tritonclient.http as httpclient

    results: dict[int, list[Result]] = {}

    def run(sid: int, chunks: list[np.ndarray]) -> None:
        client = httpclient.InferenceServerClient(address)
        out: list[Result] = []
        for k, chunk in enumerate(chunks):
            start, end = (flags or {}).get((sid, k), (k == 0, k == len(chunks) - 1))
            audio = httpclient.InferInput(AUDIO, [1, len(chunk)], "FP32")
            audio.set_data_from_numpy(chunk[None], binary_data=True)
            try:
                result = client.infer(
                    ENSEMBLE,
                    [audio],
                    outputs=[httpclient.InferRequestedOutput(o, binary_data=True) for o in OUTPUT_NAMES],
                    sequence_id=sid,
                    sequence_start=start,
                    sequence_end=end,
                )
                out.append(_decode(result))
            except Exception as err:  # noqa: BLE001 - the test inspects the message
                out.append(str(err))
        client.close()
        results[sid] = out

    workers = [threading.Thread(target=run, args=item) for item in streams.items()]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    return results


def tokens_by_speaker(results: list[Result]) -> dict[int, list[int]]:
    """Concatenate each speaker slot's tokens over a stream's responses (errors are not allowed)."""
    tokens: dict[int, list[int]] = defaultdict(list)
    for result in results:
        assert not isinstance(result, str), result
        for slot, token in zip(result[TOKEN_SPEAKERS].tolist(), result[TOKEN_IDS].tolist(), strict=True):
            tokens[slot].append(token)
    return dict(tokens)


def chunked(audio: np.ndarray, samples: int) -> list[np.ndarray]:
    return [np.ascontiguousarray(audio[i : i + samples]) for i in range(0, len(audio), samples)]
