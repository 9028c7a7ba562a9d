"""The client library and `mtasr transcribe`, end to end against a real server."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile

from mtasr.addresses import find_free_port
from mtasr.client.audio import AudioError, load_audio, open_audio, resample, resample_blocks
from mtasr.client.stream import StreamError, StreamingClient, rechunk
from mtasr.server import ServerConfig, TritonServer
from mtasr.training.mixtures import espeak_available, make_conversation

pytestmark = pytest.mark.skipif(not espeak_available(), reason="espeak-ng (Debian package 'espeak-ng') is needed")


def mtasr(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtasr.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def server(tiny_checkpoints, tmp_path_factory):
    asr, diarizer = tiny_checkpoints
    out = tmp_path_factory.mktemp("client") / "export"
    result = mtasr("export", "--asr", str(asr), "--diarizer", str(diarizer), "--output", str(out))
    assert result.returncode == 0, result.stderr
    config = ServerConfig(
        model_repository=out / "model_repository", http_port=0, grpc_port=0, metrics_port=0, startup_timeout_s=180
    )
    with TritonServer(config) as running:
        yield running


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    """A 3-speaker conversation as 16 kHz mono, 8 kHz mono and 44.1 kHz stereo WAV, and as FLAC."""
    folder = tmp_path_factory.mktemp("audio")
    conv = make_conversation(3, seed=3)
    files = {"meeting": folder / "meeting.wav", "flac": folder / "meeting_flac.flac"}
    soundfile.write(files["meeting"], conv.audio, 16000)
    soundfile.write(files["flac"], conv.audio, 16000)
    files["8k"] = folder / "meeting_8k.wav"
    soundfile.write(files["8k"], resample(conv.audio, 16000, 8000), 8000)
    stereo = resample(conv.audio, 16000, 44100)
    files["44k_stereo"] = folder / "meeting_44k.wav"
    soundfile.write(files["44k_stereo"], np.stack([stereo, 0.5 * stereo], axis=1), 44100)
    return conv, files


def test_grpc_and_http_give_the_same_seglst_and_valid_files(server, audio_files, tmp_path):
    import meeteval

    from mtasr.client.formats import read_rttm

    _, files = audio_files
    outs = {}
    for protocol in ("grpc", "http"):
        out = tmp_path / protocol
        result = mtasr(
            "transcribe",
            str(files["meeting"]),
            "--protocol",
            protocol,
            "--url",
            server.address(protocol),
            "-o",
            str(out),
        )
        assert result.returncode == 0, result.stderr
        outs[protocol] = out
    grpc_seglst = json.loads((outs["grpc"] / "meeting.seglst.json").read_text())
    assert grpc_seglst and grpc_seglst == json.loads((outs["http"] / "meeting.seglst.json").read_text())
    assert {s["session_id"] for s in grpc_seglst} == {"meeting"}
    parsed = meeteval.io.SegLST.load(outs["grpc"] / "meeting.seglst.json")
    assert len(parsed) == len(grpc_seglst)
    turns = read_rttm(outs["grpc"] / "meeting.rttm")
    assert len(turns) == len(grpc_seglst)
    assert (outs["grpc"] / "meeting.txt").read_text().count("\n") == len(grpc_seglst)


def test_other_rates_and_channels_are_resampled_to_the_servers_rate(server, audio_files):
    conv, files = audio_files
    back = load_audio(files["44k_stereo"], 16000)
    # 44.1 kHz stereo (right channel at half level) -> 16 kHz mono = 0.75 x the original, band-limited.
    assert abs(len(back) - len(conv.audio)) <= 1
    n = min(len(back), len(conv.audio))
    assert np.corrcoef(back[:n], conv.audio[:n])[0, 1] > 0.99
    assert abs(float(np.std(back[:n]) / np.std(conv.audio[:n])) - 0.75) < 0.02
    low = load_audio(files["8k"], 16000)
    assert abs(len(low) - len(conv.audio)) <= 2
    client = StreamingClient(server.address("grpc"))
    for name in ("8k", "44k_stereo", "flac"):
        transcript = client.transcribe(load_audio(files[name], 16000))
        assert transcript.seglst and transcript.chunks > 1, name


def test_four_jobs_give_the_same_outputs_as_one_at_a_time(server, audio_files, tmp_path):
    _, files = audio_files
    inputs = [str(files[k]) for k in ("meeting", "flac", "8k", "44k_stereo")]
    one, four = tmp_path / "one", tmp_path / "four"
    assert mtasr("transcribe", *inputs, "--url", server.address("grpc"), "-o", str(one)).returncode == 0
    assert mtasr("transcribe", *inputs, "--url", server.address("grpc"), "-o", str(four), "--jobs", "4").returncode == 0
    for path in sorted(one.iterdir()):
        assert path.read_text() == (four / path.name).read_text(), path.name
    assert len(list(one.iterdir())) == 12


def test_bad_files_are_reported_and_the_good_one_is_still_transcribed(server, audio_files, tmp_path):
    _, files = audio_files
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00not really a wave file" * 10)
    unsupported = tmp_path / "notes.mp3"
    unsupported.write_text("this is text, not audio")
    out = tmp_path / "out"
    result = mtasr(
        "transcribe",
        str(tmp_path / "missing.wav"),
        str(empty),
        str(corrupt),
        str(files["meeting"]),
        str(unsupported),
        "--url",
        server.address("grpc"),
        "-o",
        str(out),
    )
    assert result.returncode == 1
    assert "missing.wav: no such file" in result.stderr
    assert "empty.wav: the file is empty" in result.stderr
    assert "corrupt.wav: cannot read it as WAV, FLAC or OGG audio" in result.stderr
    assert "notes.mp3: cannot read it as WAV, FLAC or OGG audio" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["meeting.rttm", "meeting.seglst.json", "meeting.txt"]


def test_a_file_name_with_spaces_gives_all_three_outputs_with_a_safe_session_id(server, audio_files, tmp_path):
    """`my meeting.flac`: the outputs keep the file's name, the session id inside them replaces the
    space (RTTM and STM are whitespace-separated), and every output is written."""
    from mtasr.client.formats import read_rttm, read_seglst

    _, files = audio_files
    spaced = tmp_path / "my meeting.flac"
    spaced.write_bytes(files["flac"].read_bytes())
    out = tmp_path / "out"
    result = mtasr("transcribe", str(spaced), "--url", server.address("grpc"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["my meeting.rttm", "my meeting.seglst.json", "my meeting.txt"]
    segments = read_seglst(out / "my meeting.seglst.json")
    assert segments and {s["session_id"] for s in segments} == {"my_meeting"}
    assert {s["session_id"] for s in read_rttm(out / "my meeting.rttm")} == {"my_meeting"}


def test_an_output_that_cannot_be_written_is_that_files_error_line_and_the_others_are_written(
    server, audio_files, tmp_path
):
    _, files = audio_files
    out = tmp_path / "out"
    (out / "meeting.rttm").mkdir(parents=True)  # a folder where the RTTM file should go
    result = mtasr("transcribe", str(files["meeting"]), "--url", server.address("grpc"), "-o", str(out))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"cannot write {out / 'meeting.rttm'}" in errors[0], result.stderr
    assert (out / "meeting.seglst.json").is_file() and (out / "meeting.txt").is_file()


@pytest.mark.parametrize(("source_rate", "target_rate"), [(44100, 16000), (8000, 16000), (48000, 16000), (16000, 8000)])
def test_resampling_block_by_block_equals_resampling_the_whole_signal(source_rate, target_rate):
    # half a second: over 50 times the filter's reach, and one-sample blocks stay quick
    signal = np.random.default_rng(0).standard_normal(source_rate // 2 + 17).astype(np.float32)
    whole = resample(signal, source_rate, target_rate)
    for block in (1, 441, 4000, len(signal)):
        pieces = [signal[i : i + block] for i in range(0, len(signal), block)]
        joined = np.concatenate(list(resample_blocks(pieces, source_rate, target_rate)))
        assert joined.shape == whole.shape
        np.testing.assert_allclose(joined, whole, atol=1e-6)


def test_chunks_are_cut_at_the_same_samples_whatever_the_block_sizes():
    signal = np.arange(10_000, dtype=np.float32)
    blocks = [signal[:3], signal[3:3000], signal[3000:3001], signal[3001:]]
    chunks = list(rechunk(blocks, 1792))
    assert [len(c) for c in chunks] == [1792] * 5 + [10_000 - 5 * 1792]
    np.testing.assert_array_equal(np.concatenate(chunks), signal)


def test_a_long_file_is_read_in_flat_memory(tmp_path):
    import tracemalloc

    path = tmp_path / "long.wav"
    minutes, rate = 10, 48000
    with soundfile.SoundFile(path, "w", rate, channels=2, subtype="PCM_16") as sound:
        minute = (np.random.default_rng(1).standard_normal((60 * rate, 2)) * 0.1).astype(np.float32)
        for _ in range(minutes):
            sound.write(minute)
    del minute
    source = open_audio(path, 16000)
    assert source.seconds == minutes * 60
    resample(np.zeros(100, np.float32), rate, 16000)  # scipy's import is not the file's memory
    tracemalloc.start()
    samples = sum(len(block) for block in source.blocks())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert samples == minutes * 60 * 16000
    whole_file_bytes = minutes * 60 * 16000 * 4  # the resampled signal alone, were it read whole
    assert peak < whole_file_bytes / 5, f"peak {peak / 1e6:.1f} MB while streaming a {minutes}-minute file"


def test_a_file_that_breaks_part_way_ends_its_stream_and_is_reported(server, tmp_path):
    path = tmp_path / "broken.wav"
    audio = (np.random.default_rng(2).standard_normal(16000 * 12) * 0.1).astype(np.float32)
    audio[16000 * 9] = np.nan  # read in blocks, so found only after several seconds have streamed
    soundfile.write(path, audio, 16000, subtype="FLOAT")
    result = mtasr("transcribe", str(path), "--url", server.address("grpc"), "-o", str(tmp_path / "out"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "holds NaN or infinite samples (after 5.0 s of it; nothing written)" in error
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_audio_errors_name_the_problem(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "nothing.flac", 16000)
    loop = tmp_path / "loop.wav"
    loop.symlink_to(loop)
    with pytest.raises(AudioError, match="symbolic link loop"):
        load_audio(loop, 16000)
    dangling = tmp_path / "dangling.wav"
    dangling.symlink_to(tmp_path / "gone.wav")
    with pytest.raises(AudioError, match="broken symbolic link"):
        load_audio(dangling, 16000)
    silent = tmp_path / "zero.wav"
    soundfile.write(silent, np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(AudioError, match="no samples"):
        load_audio(silent, 16000)


def test_a_server_that_is_down_is_reported_within_seconds(audio_files):
    _, files = audio_files
    port = find_free_port()
    started = time.monotonic()
    result = mtasr("transcribe", str(files["meeting"]), "--url", f"127.0.0.1:{port}", "--timeout", "3", timeout=60)
    assert result.returncode == 2
    assert "cannot reach a Triton server" in result.stderr
    assert time.monotonic() - started < 20  # includes the interpreter start


def test_a_server_that_dies_mid_stream_raises_with_the_final_words(tiny_checkpoints, audio_files, tmp_path):
    asr, diarizer = tiny_checkpoints
    out = tmp_path / "export"
    assert mtasr("export", "--asr", str(asr), "--diarizer", str(diarizer), "--output", str(out)).returncode == 0
    conv, _ = audio_files
    config = ServerConfig(model_repository=out / "model_repository", http_port=0, grpc_port=0, metrics_port=0)
    server = TritonServer(config).start()
    client = StreamingClient(server.address("grpc"), timeout_s=5)
    seen = []

    def kill_after_three(update):
        seen.append(update)
        if len(seen) == 3:
            server.stop(grace_s=0)

    started = time.monotonic()
    with pytest.raises(StreamError) as failure:
        client.transcribe(np.tile(conv.audio, 3), on_update=kill_after_three)
    assert time.monotonic() - started < 60
    assert failure.value.final_words == [w for u in seen for w in u.words]
    assert failure.value.final_words, "some words were final before the server went away"


def test_a_mid_stream_chunk_refused_by_an_unloading_model_says_the_stream_is_lost() -> None:
    from mtasr.client.stream import _failure

    unloading = "Request for unknown model: 'multitalker_asr' has no available versions"
    assert _failure("localhost:1", 9, unloading, []).lost
    # On the first chunk the same words mean the model was never there: a plain error, not a lost stream.
    assert not _failure("localhost:1", 0, unloading, []).lost
    assert not _failure("localhost:1", 9, "AUDIO: expected FP32, got INT16", []).lost
