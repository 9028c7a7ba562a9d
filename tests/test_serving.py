"""The served ensemble, against a real tritonserver: token-exact with NeMo's streaming multitalker
inference, many streams at once, and bad input answered per request while other streams carry on."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from nemo_files import with_config
from serving_client import OUTPUT_NAMES, chunked, stream_grpc, stream_http, tokens_by_speaker

from mtasr.bench.nemo_streaming import load_models, run_nemo_multitalker
from mtasr.deployment import STAGES, ServingSettings, load_manifest
from mtasr.deployment import chunk_samples as deployment_chunk_samples
from mtasr.export.compatibility import NEMO_SCRIPT_DIARIZER_CACHE
from mtasr.local_pipeline import LocalPipeline
from mtasr.server import ServerConfig, TritonServer
from mtasr.stages import TRANSCRIPT
from mtasr.training.mixtures import espeak_available, make_conversation
from mtasr.triton.stage_model import FREE_STREAMS_METRIC, OPEN_STREAMS_METRIC

RIGHT_CONTEXTS = [0, 1, 6, 13]
IDLE_TIMEOUT_S = 3.0

pytestmark = pytest.mark.skipif(not espeak_available(), reason="espeak-ng (Debian package 'espeak-ng') is needed")


def export(checkpoints: tuple[Path, Path], out: Path, right_context: int, *extra: str) -> Path:
    asr, diarizer = checkpoints
    cmd = [sys.executable, "-m", "mtasr.cli", "export", "--asr", str(asr), "--diarizer", str(diarizer)]
    cmd += ["--output", str(out), "--right-context", str(right_context), *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return out / "model_repository"


def triton(repo: Path) -> TritonServer:
    """A server on free local ports (started by `with` or `.start()`)."""
    config = ServerConfig(model_repository=repo, http_port=0, grpc_port=0, metrics_port=0, startup_timeout_s=180)
    return TritonServer(config)


def chunk_samples(repo: Path) -> int:
    """The deployment's chunk in samples (what clients are told to send)."""
    return deployment_chunk_samples(load_manifest(repo))


@pytest.fixture(scope="module")
def conversations():
    """1, 2 and 3 speakers with overlapping turns."""
    convs = [make_conversation(n, seed=n) for n in (1, 2, 3)]
    for conv in convs[1:]:
        assert conv.overlaps(), "the multi-speaker inputs must overlap"
    return convs


@pytest.fixture(scope="module")
def nemo_models(tiny_checkpoints):
    return load_models(*tiny_checkpoints)


@pytest.fixture(scope="module")
def served(tiny_checkpoints, tmp_path_factory):
    """The default latency (right context 13), short idle timeout, one server for the module."""
    out = tmp_path_factory.mktemp("served") / "export"
    repo = export(tiny_checkpoints, out, 13, "--idle-timeout", str(IDLE_TIMEOUT_S), "--max-streams", "8")
    server = triton(repo).start()
    yield server, repo
    server.stop()


# ------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("right_context", RIGHT_CONTEXTS)
def test_served_tokens_equal_nemo_streaming_multitalker_inference(
    right_context, tiny_checkpoints, nemo_models, conversations, tmp_path
):
    """Per speaker slot, exactly NeMo's tokens (parallel speakers, speaker kernels on), at every
    latency the checkpoint supports. NeMo's background-mask rule is corrected on its side (see the
    next test for the difference that rule makes)."""
    # Right context 6 runs the graphs as Triton models through BLS calls, as the TensorRT variant does.
    backend = "triton" if right_context == 6 else "onnxruntime"
    repo = export(tiny_checkpoints, tmp_path / "export", right_context, "--graph-backend", backend)
    with triton(repo) as server:
        streams = {10 + i: chunked(conv.audio, chunk_samples(repo)) for i, conv in enumerate(conversations)}
        served = stream_grpc(server.address("grpc"), streams)
    for i, conv in enumerate(conversations):
        nemo = run_nemo_multitalker(
            *tiny_checkpoints, conv.audio, right_context, fix_background_mask=True, models=nemo_models
        )
        want = {slot: tokens for slot, tokens in nemo.tokens.items() if tokens}
        assert want, "the reference decoded nothing: the comparison would be empty"
        assert tokens_by_speaker(served[10 + i]) == want, (
            f"{len(conv.segments)}-segment input, right context {right_context}"
        )


@pytest.mark.parametrize("fifo_len", [0, 124])
def test_a_diarizer_saved_with_any_fifo_is_served_with_the_cache_nemos_script_forces(
    fifo_len, tiny_checkpoints, nemo_models, conversations, tmp_path
):
    """NeMo's script runs every diarizer with spkcache_len = fifo_len = 188 whatever its checkpoint says
    (NeMo's v2 training config saves fifo_len 0); export serves the same by default and records what the
    checkpoint said. Over 40 s the FIFO and the speaker cache both fill and the cache is compressed."""
    asr, diarizer = tiny_checkpoints
    saved = with_config(diarizer, tmp_path / "d.nemo", lambda c: c["sortformer_modules"].update(fifo_len=fifo_len))
    repo = export((asr, saved), tmp_path / "export", 13)
    manifest = load_manifest(repo)
    geometry = manifest["diarizer"]["geometry"]
    assert (geometry["spkcache_len"], geometry["fifo_len"]) == NEMO_SCRIPT_DIARIZER_CACHE
    assert manifest["diarizer"]["checkpoint_cache"]["fifo_len"] == fifo_len

    audio = np.concatenate([conv.audio for conv in conversations] * 2)
    assert len(audio) / 16000 > sum(NEMO_SCRIPT_DIARIZER_CACHE) * geometry["frame_len_s"] + 5
    nemo = run_nemo_multitalker(asr, saved, audio, 13, fix_background_mask=True, models=nemo_models)
    want = {slot: tokens for slot, tokens in nemo.tokens.items() if tokens}
    settings = ServingSettings(graph_backend="onnxruntime")
    assert tokens_by_speaker(LocalPipeline(repo, settings).transcribe(audio, chunk_samples(repo))) == want


def test_the_checkpoints_own_diarizer_cache_is_served_on_request_and_an_empty_fifo_refused(
    tiny_checkpoints, nemo_models, conversations, tmp_path
):
    """`--diarizer-cache checkpoint` serves the checkpoint's sizes (here with NeMo 3.0's own background-mask
    rule, `--nemo-background-mask`, so the reference is NeMo's script unmodified)."""
    asr, diarizer = tiny_checkpoints
    repo = export(tiny_checkpoints, tmp_path / "own", 13, "--diarizer-cache", "checkpoint", "--nemo-background-mask")
    manifest = load_manifest(repo)
    geometry = manifest["diarizer"]["geometry"]
    assert (geometry["spkcache_len"], geometry["fifo_len"]) != NEMO_SCRIPT_DIARIZER_CACHE
    assert manifest["deployment"]["serving"]["nemo_background_mask"]
    audio = np.concatenate([conv.audio for conv in conversations])  # fills the tiny model's small cache
    nemo = run_nemo_multitalker(asr, diarizer, audio, 13, diar_cache=None, models=nemo_models)
    assert nemo.bg_mask_differs_chunks, "the input must exercise NeMo's background rule"
    want = {slot: tokens for slot, tokens in nemo.tokens.items() if tokens}
    assert tokens_by_speaker(LocalPipeline(repo).transcribe(audio, chunk_samples(repo))) == want

    no_fifo = with_config(diarizer, tmp_path / "fifo0.nemo", lambda c: c["sortformer_modules"].update(fifo_len=0))
    cmd = [sys.executable, "-m", "mtasr.cli", "export", "--asr", str(asr), "--diarizer", str(no_fifo)]
    cmd += ["--output", str(tmp_path / "refused"), "--diarizer-cache", "checkpoint"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    assert "error: diarizer fifo_len 0 is not served" in result.stderr and "Traceback" not in result.stderr


def test_nemo_background_mask_rule_is_the_only_difference_and_is_corrected(
    tiny_checkpoints, nemo_models, conversations, served
):
    """NeMo builds a speaker's background mask from list positions (active [0, 3] -> speaker 0's
    background is slot 1). Where that changes the masks, NeMo's unmodified tokens differ from the
    served ones; the same stages with NeMo's rule switched on give NeMo's tokens exactly."""
    _, repo = served
    audio = conversations[2].audio
    nemo = run_nemo_multitalker(*tiny_checkpoints, audio, 13, models=nemo_models)
    assert nemo.bg_mask_differs_chunks, "this input must exercise the rule for the test to mean anything"
    nemo_tokens = {slot: tokens for slot, tokens in nemo.tokens.items() if tokens}

    correct = LocalPipeline(repo, ServingSettings(graph_backend="onnxruntime"))
    assert tokens_by_speaker(correct.transcribe(audio, chunk_samples(repo))) != nemo_tokens
    compatible = LocalPipeline(repo, ServingSettings(graph_backend="onnxruntime", nemo_background_mask=True))
    assert tokens_by_speaker(compatible.transcribe(audio, chunk_samples(repo))) == nemo_tokens


@pytest.mark.parametrize("right_context", [1, 13])
def test_masked_speaker_conditioning_gives_the_tokens_of_nemos_script_default(
    right_context, tiny_checkpoints, nemo_models, conversations, tmp_path
):
    """`--speaker-conditioning masked` serves what NeMo's script runs by default (masked_asr=True): each
    speaker's features masked by its diarizer output, the speaker kernels given no targets. Same tokens
    as NeMo per slot, through Triton at the default latency; and they are not the kernels' tokens."""
    repo = export(tiny_checkpoints, tmp_path / "masked", right_context, "--speaker-conditioning", "masked")
    assert load_manifest(repo)["deployment"]["serving"]["speaker_conditioning"] == "masked"
    if right_context == 13:
        with triton(repo) as server:
            streams = {20 + i: chunked(conv.audio, chunk_samples(repo)) for i, conv in enumerate(conversations)}
            served = {
                i: tokens_by_speaker(tokens) for i, tokens in stream_grpc(server.address("grpc"), streams).items()
            }
    else:
        pipeline = LocalPipeline(repo)
        served = {
            20 + i: tokens_by_speaker(pipeline.transcribe(c.audio, chunk_samples(repo)))
            for i, c in enumerate(conversations)
        }
    differs_from_kernels = False
    for i, conv in enumerate(conversations):
        nemo = run_nemo_multitalker(*tiny_checkpoints, conv.audio, right_context, masked_asr=True, models=nemo_models)
        want = {slot: tokens for slot, tokens in nemo.tokens.items() if tokens}
        assert want, "the reference decoded nothing: the comparison would be empty"
        assert served[20 + i] == want, f"{len(conv.segments)}-segment input, right context {right_context}"
        kernels = run_nemo_multitalker(*tiny_checkpoints, conv.audio, right_context, models=nemo_models)
        differs_from_kernels |= {s: t for s, t in kernels.tokens.items() if t} != want
    assert differs_from_kernels, "masking must change what is decoded, or this test shows nothing"


def test_binary_speaker_masks_give_the_tokens_of_nemos_binary_diar_preds(
    tiny_checkpoints, nemo_models, conversations, served
):
    """`--binary-speaker-masks` thresholds each speaker kernel's target mask at 0.5,
    as NeMo's script does with binary_diar_preds=True: the same tokens per slot, and not the soft masks' tokens."""
    _, repo = served
    pipeline = LocalPipeline(repo, ServingSettings(graph_backend="onnxruntime", binary_speaker_masks=True))
    differs_from_soft = False
    for conv in conversations:
        served_tokens = tokens_by_speaker(pipeline.transcribe(conv.audio, chunk_samples(repo)))
        nemo = run_nemo_multitalker(
            *tiny_checkpoints, conv.audio, 13, fix_background_mask=True, binary_diar_preds=True, models=nemo_models
        )
        want = {slot: tokens for slot, tokens in nemo.tokens.items() if tokens}
        assert want, "the reference decoded nothing: the comparison would be empty"
        assert served_tokens == want, f"{len(conv.segments)}-segment input"
        soft = run_nemo_multitalker(*tiny_checkpoints, conv.audio, 13, fix_background_mask=True, models=nemo_models)
        differs_from_soft |= {s: t for s, t in soft.tokens.items() if t} != want
    assert differs_from_soft, "thresholding must change what is decoded, or this test shows nothing"


def test_a_longer_gating_window_gives_nemo_tokens_with_that_buffer_size(
    tiny_checkpoints, nemo_models, conversations, served
):
    """`--gating-chunks N` keeps a speaker active while the diarizer heard it in the last N chunks, as the
    script's cache_gating_buffer_size=N does: the same tokens per slot, and other active speakers than N=2."""
    _, repo = served
    gating_chunks = 6
    pipeline = LocalPipeline(repo, ServingSettings(graph_backend="onnxruntime", gating_chunks=gating_chunks))
    activity_differs = False
    for conv in conversations:
        served_tokens = tokens_by_speaker(pipeline.transcribe(conv.audio, chunk_samples(repo)))
        nemo = run_nemo_multitalker(
            *tiny_checkpoints,
            conv.audio,
            13,
            fix_background_mask=True,
            cache_gating_buffer_size=gating_chunks,
            models=nemo_models,
        )
        want = {slot: tokens for slot, tokens in nemo.tokens.items() if tokens}
        assert want, "the reference decoded nothing: the comparison would be empty"
        assert served_tokens == want, f"{len(conv.segments)}-segment input"
        nemo_default = run_nemo_multitalker(
            *tiny_checkpoints, conv.audio, 13, fix_background_mask=True, models=nemo_models
        )
        activity_differs |= nemo_default.active_per_chunk != nemo.active_per_chunk
    assert activity_differs, "the window must change who is active, or this test shows nothing"


def test_all_slots_active_gives_nemo_tokens_with_its_cache_gating_off(
    tiny_checkpoints, nemo_models, conversations, served
):
    """The benchmarks' worst-case load: every slot decoded every chunk, on both sides the same
    (NeMo's own `cache_gating` off), and still NeMo's tokens exactly."""
    _, repo = served
    audio = conversations[1].audio
    nemo = run_nemo_multitalker(
        *tiny_checkpoints, audio, 13, fix_background_mask=True, all_slots_active=True, models=nemo_models
    )
    assert all(len(masks) == 4 for masks in nemo.masks_per_chunk)
    want = {slot: tokens for slot, tokens in nemo.tokens.items() if tokens}
    assert len(want) == 4, "every slot must have decoded something"
    settings = ServingSettings(graph_backend="onnxruntime", all_slots_active=True)
    assert tokens_by_speaker(LocalPipeline(repo, settings).transcribe(audio, chunk_samples(repo))) == want


def test_nemo_batches_streams_like_running_each_alone(tiny_checkpoints, nemo_models, conversations):
    """The benchmark's NeMo side batches streams as NeMo's script does; stream 0 of a batch decodes
    what it decodes alone (equal lengths: NeMo pads shorter streams of a batch)."""
    n = min(len(c.audio) for c in conversations[:2])
    audios = [c.audio[:n] for c in conversations[:2]]
    alone = run_nemo_multitalker(*tiny_checkpoints, audios[0], 13, models=nemo_models)
    batched = run_nemo_multitalker(*tiny_checkpoints, audios, 13, models=nemo_models)
    assert batched.batch_size == 2 and len(batched.step_s) == batched.n_chunks == alone.n_chunks
    assert batched.tokens == alone.tokens and any(batched.tokens.values())


def test_served_equals_in_process_pipeline_and_ends_with_seglst(served, conversations):
    server, repo = served
    audio = conversations[1].audio
    results = stream_grpc(server.address("grpc"), {5: chunked(audio, chunk_samples(repo))})[5]
    local = LocalPipeline(repo).transcribe(audio, chunk_samples(repo))
    assert tokens_by_speaker(results) == tokens_by_speaker(local)
    assert all(r[TRANSCRIPT][0] == b"" for r in results[:-1])
    segments = json.loads(results[-1][TRANSCRIPT][0])
    # The words streamed chunk by chunk are, per speaker, the words of the final SegLST.
    streamed: dict[str, list[str]] = {}
    for r in results:
        for slot, word in zip(r["WORD_SPEAKERS"].tolist(), r["WORDS"].tolist(), strict=True):
            streamed.setdefault(f"speaker_{slot}", []).append(word.decode())
    final: dict[str, list[str]] = {}
    for seg in sorted(segments, key=lambda s: s["start_time"]):
        final.setdefault(seg["speaker"], []).extend(seg["words"].split())
    assert streamed and final == streamed
    for seg in segments:
        assert set(seg) == {"session_id", "speaker", "start_time", "end_time", "words"}
        assert seg["session_id"] == "5" and seg["start_time"] <= seg["end_time"]


# -------------------------------------------------------------------------------------- concurrency


def test_eight_interleaved_streams_equal_each_stream_alone_over_grpc_and_http(served, conversations):
    server, repo = served
    size = chunk_samples(repo)
    # Eight streams of different lengths and contents (rotations and cuts of the conversations).
    audios = {
        100 + k: np.roll(conversations[k % 3].audio, 7919 * k)[: len(conversations[k % 3].audio) - 3000 * k]
        for k in range(8)
    }
    alone = {
        sid: tokens_by_speaker(stream_grpc(server.address("grpc"), {sid: chunked(a, size)})[sid])
        for sid, a in audios.items()
    }
    streams = {sid: chunked(a, size) for sid, a in audios.items()}

    back_to_back = stream_grpc(server.address("grpc"), {sid + 1000: c for sid, c in streams.items()})
    paced = stream_grpc(server.address("grpc"), {sid + 2000: c for sid, c in streams.items()}, pace_s=0.02)
    over_http = stream_http(server.address("http"), {sid + 3000: c for sid, c in streams.items()})
    for sid in audios:
        assert tokens_by_speaker(back_to_back[sid + 1000]) == alone[sid]
        assert tokens_by_speaker(paced[sid + 2000]) == alone[sid]
        assert tokens_by_speaker(over_http[sid + 3000]) == alone[sid]


def test_string_ids_sharing_long_prefixes_and_a_number_with_the_same_digits_are_separate_streams(served, conversations):
    """A stream is keyed by its whole sequence id: string ids equal but for their last character, and
    the numeric id 4242 beside the string "4242", are four streams. Interleaved chunk by chunk (gRPC)
    or side by side (HTTP), each gets exactly its transcript alone, named by its own id."""
    server, repo = served
    size = chunk_samples(repo)
    streams = {
        "meeting-room-0001": chunked(conversations[1].audio, size),
        "meeting-room-0002": chunked(conversations[2].audio, size),
        4242: chunked(conversations[0].audio, size),
        "4242": chunked(np.roll(conversations[2].audio, 5003), size),
    }
    alone = {sid: stream_grpc(server.address("grpc"), {sid: chunks})[sid] for sid, chunks in streams.items()}
    assert len({json.dumps(tokens_by_speaker(r)) for r in alone.values()}) == 4, "inputs must differ to tell"
    interleaved = stream_grpc(server.address("grpc"), streams)
    over_http = stream_http(server.address("http"), streams)
    for sid in streams:
        for together in (interleaved, over_http):
            assert tokens_by_speaker(together[sid]) == tokens_by_speaker(alone[sid]), sid
            assert {seg["session_id"] for seg in json.loads(together[sid][-1][TRANSCRIPT][0])} <= {str(sid)}


def test_sequence_ids_are_non_zero_uint64s_or_non_empty_strings(served, conversations):
    """The id forms docs/protocol.md documents, sent as HTTP JSON: a uint64 or any non-empty
    string (spaces, non-ASCII) is a stream; 0 and "" are refused; any other JSON value is refused by
    Triton's HTTP front end before model code runs, with an error naming `sequence_id`."""
    import urllib.error
    import urllib.request

    server, repo = served
    chunk = chunked(conversations[0].audio, chunk_samples(repo))[0]

    def post(sequence_id) -> tuple[int, str]:
        body = {
            "parameters": {"sequence_id": sequence_id, "sequence_start": True, "sequence_end": True},
            "inputs": [{"name": "AUDIO", "shape": [1, len(chunk)], "datatype": "FP32", "data": chunk.tolist()}],
        }
        url = f"{server.url('http')}/v2/models/multitalker_asr/infer"
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    for good in (2**64 - 1, "room 7 · Zürich"):
        status, text = post(good)
        assert status == 200, text
        transcript = next(o for o in json.loads(text)["outputs"] if o["name"] == TRANSCRIPT)["data"][0]
        assert {seg["session_id"] for seg in json.loads(transcript)} <= {str(good)}
    for empty in (0, ""):
        assert post(empty)[0] == 400 and "non-zero or non-empty correlation ID" in post(empty)[1]
    for bad in (-1, 1.5, True, None, 2**64):
        status, text = post(bad)
        assert status >= 400 and "sequence_id" in text, (bad, text)


# -------------------------------------------------------------------------------------- bad input


def send(server, sid: int, audio: np.ndarray, start: bool, end: bool, dtype: str = "FP32"):
    """One request over HTTP; the result dict or the error message."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.address("http"))
    tensor = httpclient.InferInput("AUDIO", list(audio.shape), dtype)
    tensor.set_data_from_numpy(audio, binary_data=True)
    try:
        result = client.infer("multitalker_asr", [tensor], sequence_id=sid, sequence_start=start, sequence_end=end)
        return {name: result.as_numpy(name)[0] for name in OUTPUT_NAMES}
    except Exception as err:  # noqa: BLE001 - the message is what the test checks
        return str(err)
    finally:
        client.close()


def test_bad_requests_get_their_own_clear_error_while_a_good_stream_carries_on(served, conversations):
    server, repo = served
    size = chunk_samples(repo)
    good = chunked(conversations[1].audio, size)
    want = tokens_by_speaker(stream_grpc(server.address("grpc"), {1: good})[1])
    chunk = good[1]
    limit = 2 * size
    bad_cases = [
        ("wrong dtype", lambda: send(server, 50, chunk.astype(np.float64)[None], True, False, "FP64"), "FP64"),
        ("wrong shape", lambda: send(server, 51, np.stack([chunk, chunk])[None], True, False), "dims"),
        ("batch of two", lambda: send(server, 52, np.stack([chunk, chunk]), True, False), "batch-size 1"),
        (
            "NaN",
            lambda: send(
                server, 53, np.where(np.arange(len(chunk)) == 5, np.nan, chunk).astype(np.float32)[None], True, False
            ),
            "NaN",
        ),
        ("infinite", lambda: send(server, 54, np.full((1, 100), np.inf, np.float32), True, False), "infinite"),
        ("empty", lambda: send(server, 55, np.zeros((1, 0), np.float32), True, False), "empty"),
        ("too long", lambda: send(server, 56, np.zeros((1, limit + 1), np.float32), True, False), "maximum"),
        ("never started", lambda: send(server, 57, chunk[None], False, False), "START"),
        ("END of unknown", lambda: send(server, 58, chunk[None], False, True), "START"),
    ]
    # The good stream is sent chunk by chunk, one bad request between each of its chunks.
    good_results, errors = [], {}
    for k, piece in enumerate(good):
        good_results.append(send(server, 2, piece[None], k == 0, k == len(good) - 1))
        if k < len(bad_cases):
            name, call, expected = bad_cases[k]
            errors[name] = (call(), expected)
    assert all(not isinstance(r, str) for r in good_results), good_results
    for name, (message, expected) in errors.items():
        assert isinstance(message, str), f"{name}: accepted"
        assert expected.lower() in message.lower(), f"{name}: {message}"
    # Bad START requests leave nothing behind: the same ids start cleanly afterwards.
    assert not isinstance(send(server, 53, chunk[None], True, True), str)
    # And the good stream's tokens are exactly its tokens alone.
    assert tokens_by_speaker(good_results) == want


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, str]:
    """A raw HTTP POST: (status, body text); status 0 when nothing answered."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except OSError as err:
        return 0, str(err)


def test_requests_that_would_crash_triton_are_refused_in_front_of_it_while_streams_carry_on(served, conversations):
    server, repo = served
    infer = f"{server.url('http')}/v2/models/multitalker_asr/infer"
    binary_header = json.dumps(
        {
            "parameters": {"sequence_id": 61, "sequence_start": True, "sequence_end": True},
            "inputs": [
                {"name": "AUDIO", "shape": [1, 2**62], "datatype": "FP32", "parameters": {"binary_data_size": 0}}
            ],
        }
    ).encode()
    deep = b'{"inputs": [{"name": "AUDIO", "shape": [1, 1], "datatype": "FP32", "data": ' + b"[" * 100_000
    crashers = {
        # Triton 2.51 allocates what the shape says before reading the data: std::bad_alloc, abort.
        "JSON shape 2^40": (
            json.dumps(
                {"inputs": [{"name": "AUDIO", "shape": [1, 2**40], "datatype": "FP32", "data": [0.0]}]}
            ).encode(),
            {},
        ),
        # 2^62 x 4 bytes wraps to 0 in Triton's arithmetic: the features stub dies loading it.
        "binary 2^62 samples, 0 bytes": (
            binary_header,
            {"Inference-Header-Content-Length": str(len(binary_header)), "Content-Type": "application/octet-stream"},
        ),
        # Triton's JSON parser recurses per level: 100,000 levels overflow its stack (SIGSEGV).
        "data nested 100,000 deep": (deep + b"]" * 100_000 + b"}]}", {"Content-Type": "text/plain"}),
    }
    size = chunk_samples(repo)
    good = chunked(conversations[1].audio, size)
    want = tokens_by_speaker(stream_grpc(server.address("grpc"), {1: good})[1])
    pid = server.pid
    good_results = []
    for k, piece in enumerate(good):
        good_results.append(send(server, 62, piece[None], k == 0, k == len(good) - 1))
        if k < len(crashers):  # one crashing request between each of the stream's chunks
            name, (body, headers) = list(crashers.items())[k]
            status, text = post(infer, body, headers)
            assert status == 400 and json.loads(text)["error"], f"{name}: {status} {text[:200]}"
    assert tokens_by_speaker(good_results) == want, "the stream in flight was not disturbed"
    assert server.pid == pid and server.is_running(), "the same server process served it all"
    status, text = post(f"{server.url('http')}/v2/models/multitalker_asr/generate", b'{"AUDIO": [[0.0]]}')
    assert status == 404 and "generate" in text
    # Triton's own HTTP port is private to the guard: without the guard's key it answers nothing.
    (private,) = [arg.split("=", 1)[1] for arg in server.command if arg.startswith("--http-port=")]
    assert int(private) != server.port("http")
    status, _ = post(
        f"http://127.0.0.1:{private}/v2/models/multitalker_asr/infer",
        json.dumps({"inputs": [{"name": "AUDIO", "shape": [1, 1], "datatype": "FP32", "data": [0.0]}]}).encode(),
    )
    assert status == 403, status
    status, _ = post(f"http://127.0.0.1:{private}/v2/repository/models/multitalker_asr/unload", b"{}")
    assert status == 403, status


def test_second_start_restarts_the_stream(served, conversations):
    """A START on a live sequence begins it afresh: its result is that of the new audio alone."""
    server, repo = served
    size = chunk_samples(repo)
    first, second = chunked(conversations[0].audio, size), chunked(conversations[2].audio, size)
    want = tokens_by_speaker(stream_grpc(server.address("grpc"), {70: second})[70])
    flags = {(71, 0): (True, False), (71, 1): (False, False), (71, 2): (True, False)}
    mixed = first[:2] + second
    flags.update({(71, 2 + k): (k == 0, k == len(second) - 1) for k in range(len(second))})
    results = stream_grpc(server.address("grpc"), {71: mixed}, flags=flags, wait_each=True)[71]
    assert tokens_by_speaker(results[2:]) == want


def open_streams(server) -> dict[str, int]:
    """Streams each stage holds state for, from the server's Prometheus metrics."""
    import urllib.request

    text = urllib.request.urlopen(server.url("metrics"), timeout=10).read().decode()
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith(OPEN_STREAMS_METRIC + "{"):
            stage = line.split('stage="')[1].split('"')[0]
            counts[stage] = counts.get(stage, 0) + int(float(line.rsplit(" ", 1)[1]))
    return counts


def test_abandoned_streams_are_evicted_and_memory_stays_flat(served, conversations):
    server, repo = served
    chunk = chunked(conversations[1].audio, chunk_samples(repo))[0]

    def abandon(first_id: int, n: int) -> None:
        streams = {sid: [chunk] for sid in range(first_id, first_id + n)}
        flags = {(sid, 0): (True, False) for sid in streams}  # START, then never END
        results = stream_grpc(server.address("grpc"), streams, flags=flags)
        errors = [r for rs in results.values() for r in rs if isinstance(r, str)]
        assert not errors, errors[:3]

    # 200 streams abandoned in waves of 50; each wave is evicted before the next. A leak would grow
    # the server by every wave's state; eviction keeps it at the first wave's level.
    rss = []
    for wave in range(4):
        abandon(20_000 + 50 * wave, 50)
        # The stages hold them now (the earlier ones may already be evicting: the timeout is short).
        assert sum(open_streams(server).values()) > 0
        time.sleep(IDLE_TIMEOUT_S * 2)
        assert open_streams(server) == {stage: 0 for stage in STAGES}
        rss.append(server.rss_mb())
    assert rss[-1] - rss[0] < 15, f"server memory per wave of 50 abandoned streams: {[round(m) for m in rss]} MB"
    # An evicted stream is gone: continuing it is refused, starting it again works.
    assert "START" in send(server, 20_000, chunk[None], False, True)
    assert not isinstance(send(server, 20_000, chunk[None], True, True), str)


def stage_metric(server, name: str, stage: str) -> float:
    """One stage's gauge `name`, summed over its instances, from the server's Prometheus metrics."""
    import urllib.request

    text = urllib.request.urlopen(server.url("metrics"), timeout=10).read().decode()
    lines = [ln for ln in text.splitlines() if ln.startswith(name + "{") and f'stage="{stage}"' in ln]
    assert lines, f"no {name} for {stage}"
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)


def test_a_start_beyond_the_stream_limit_is_refused_at_once_and_held_streams_carry_on(
    tiny_checkpoints, conversations, tmp_path
):
    """With --max-sequences 2 and two streams held open, a third START gets "server full" within
    seconds (not a silent wait for a slot), the held streams finish with exactly their tokens alone,
    the free-slot gauge says 0 while they are held, and a stream starts again once one has ended."""
    import threading

    repo = export(tiny_checkpoints, tmp_path / "export", 13, "--max-sequences", "2", "--idle-timeout", "20")
    size = chunk_samples(repo)
    held = {1: chunked(conversations[1].audio, size), 2: chunked(conversations[2].audio, size)}
    with triton(repo) as server:
        alone = {sid: tokens_by_speaker(stream_grpc(server.address("grpc"), {sid: c})[sid]) for sid, c in held.items()}
        assert stage_metric(server, FREE_STREAMS_METRIC, "features") == 2
        results = {sid: [send(server, sid, c[0][None], True, False)] for sid, c in held.items()}
        assert stage_metric(server, FREE_STREAMS_METRIC, "features") == 0

        refused: list = []
        started = time.monotonic()
        third = threading.Thread(target=lambda: refused.append(send(server, 3, held[1][0][None], True, False)))
        third.start()
        third.join(timeout=10)
        assert refused, "the third START is still waiting for a slot"
        assert isinstance(refused[0], str) and "server full" in refused[0], refused[0]
        print(f"refused in {time.monotonic() - started:.2f} s")

        for sid, chunks in held.items():
            for k in range(1, len(chunks)):
                results[sid].append(send(server, sid, chunks[k][None], False, k == len(chunks) - 1))
            assert tokens_by_speaker(results[sid]) == alone[sid]
        assert not isinstance(send(server, 4, held[1][0][None], True, True), str)


def test_two_instances_per_stage_keep_each_stream_on_one_instance(tiny_checkpoints, conversations, tmp_path):
    """State lives in each instance's process: Triton must route a sequence to one instance."""
    repo = export(tiny_checkpoints, tmp_path / "export", 13, "--stage-instances", "2")
    size = chunk_samples(repo)
    streams = {200 + k: chunked(np.roll(conversations[k % 3].audio, 4001 * k), size) for k in range(6)}
    with triton(repo) as server:
        grpc = server.address("grpc")
        alone = {sid: tokens_by_speaker(stream_grpc(grpc, {sid: c})[sid]) for sid, c in streams.items()}
        together = stream_grpc(grpc, {sid + 1000: c for sid, c in streams.items()})
    for sid in streams:
        assert tokens_by_speaker(together[sid + 1000]) == alone[sid]
