"""`mtasr serve` as a supervisor, against the real tritonserver: a dead stage process, a dead server
and a request that kills a stage are noticed, reported not-ready, and recovered within seconds; in-flight
streams get a clear "lost" error; SIGTERM drains open streams and exits 0 within the grace period."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from mtasr.addresses import find_free_ports
from mtasr.client.stream import StreamError, StreamingClient
from mtasr.deployment import ENSEMBLE
from mtasr.stages import AUDIO
from mtasr.triton_install import STUB_NAME

RECOVERY_LIMIT_S = 30.0
AUDIO_S = 6.0


@pytest.fixture(scope="module")
def repo(tiny_checkpoints, tmp_path_factory) -> Path:
    asr, diarizer = tiny_checkpoints
    out = tmp_path_factory.mktemp("supervised") / "export"
    cmd = [sys.executable, "-m", "mtasr.cli", "export", "--asr", str(asr), "--diarizer", str(diarizer)]
    result = subprocess.run([*cmd, "--output", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return out / "model_repository"


def speech_like(seconds: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


class Serve:
    """`mtasr serve` in a child process on free loopback ports."""

    def __init__(self, repo: Path, *args: str) -> None:
        self.ports = dict(zip(("http", "grpc", "metrics"), find_free_ports(3), strict=True))
        cmd = [sys.executable, "-m", "mtasr.cli", "serve", str(repo), *args]
        cmd += [f"--{p}-port={port}" for p, port in self.ports.items()]
        self.stderr = open(repo.parent / f"serve-{self.ports['http']}.err", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        first = self.proc.stdout.readline()  # the banner's first line, once ready
        m = re.search(r"pid (\d+)", first)
        assert m, first + self.log()
        self.server_pid = int(m.group(1))
        self.grpc = f"127.0.0.1:{self.ports['grpc']}"

    def log(self) -> str:
        self.stderr.flush()
        return Path(self.stderr.name).read_text()

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['http']}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stubs(self) -> dict[str, int]:
        """Model name -> pid of the current server's python-backend stubs."""
        found = {}
        for child in psutil.Process(self.current_server_pid()).children():
            argv = child.cmdline()
            if argv and argv[0].endswith(STUB_NAME):
                found[Path(argv[1]).parent.parent.name] = child.pid
        return found

    def current_server_pid(self) -> int:
        children = [c for c in psutil.Process(self.proc.pid).children() if c.name() == "tritonserver"]
        assert len(children) == 1, children
        return children[0].pid

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.send_signal(signal.SIGINT)  # a second signal: no grace period
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def transcribe(url: str, audio: np.ndarray, realtime: bool = False) -> list:
    return StreamingClient(url, timeout_s=10).transcribe(audio, realtime=realtime).words


def served_again(serve: Serve, audio: np.ndarray, expected: list, since: float) -> float:
    """Seconds from `since` until a new stream is served with exactly the expected words."""
    while time.monotonic() - since < RECOVERY_LIMIT_S:
        try:
            words = transcribe(serve.grpc, audio)
        except StreamError:
            time.sleep(0.2)
            continue
        assert words == expected, "after the restart a new stream must be transcribed as before"
        return time.monotonic() - since
    pytest.fail(f"no stream served within {RECOVERY_LIMIT_S} s:\n{serve.log()[-3000:]}")


def stream_in_flight(url: str, seed: int) -> tuple[threading.Thread, list]:
    """A long stream paced in real time, in the background; its outcome lands in the list."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(transcribe(url, speech_like(60, seed), realtime=True))
        except StreamError as err:
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(3)  # a few chunks answered
    return thread, outcome


def test_a_killed_stage_process_and_a_killed_server_are_restarted(repo: Path) -> None:
    serve = Serve(repo)
    try:
        audio = speech_like(AUDIO_S, 0)
        expected = transcribe(serve.grpc, audio)
        for victim in ("asr", "diarization", "tritonserver"):
            thread, outcome = stream_in_flight(serve.grpc, 1)
            pid = serve.current_server_pid() if victim == "tritonserver" else serve.stubs()[victim]
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            # Reported at once: readiness fails (the server is killed with its stubs and restarted).
            while serve.ready() and time.monotonic() - killed < 5.0:
                time.sleep(0.05)
            assert time.monotonic() - killed < 2.0, f"still ready after the {victim} process was killed"
            recovery = served_again(serve, audio, expected, killed)
            print(f"{victim} killed: a new stream served correctly {recovery:.1f} s later")
            thread.join(timeout=30)
            (error,) = outcome
            assert isinstance(error, StreamError) and error.lost, error
            assert "lost" in str(error) and "start a new stream" in str(error)
            assert serve.proc.poll() is None
        log = serve.log()
        assert "the python-backend stub of model 'asr'" in log
        assert "the python-backend stub of model 'diarization'" in log
        assert "tritonserver was killed by SIGKILL" in log
    finally:
        serve.close()


def test_a_request_that_kills_a_stage_is_recovered_from(repo: Path) -> None:
    serve = Serve(repo)
    try:
        audio = speech_like(AUDIO_S, 0)
        expected = transcribe(serve.grpc, audio)
        # Over gRPC (HTTP has the guard in front): 2^62 FP32 samples in 0 bytes pass Triton's size
        # check (2^62 x 4 wraps to 0) and the features stub dies loading the tensor.
        request = service_pb2.ModelInferRequest(model_name=ENSEMBLE)
        for name, value in (("sequence_id", 7), ("sequence_start", True), ("sequence_end", True)):
            field = "int64_param" if name == "sequence_id" else "bool_param"
            setattr(request.parameters[name], field, value)
        request.inputs.add(name=AUDIO, datatype="FP32", shape=[1, 2**62])
        request.raw_input_contents.append(b"")
        sent = time.monotonic()
        with grpc.insecure_channel(serve.grpc) as channel:
            try:
                service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
            except grpc.RpcError:
                pass  # refused, or the stage went away: either way the service must come back
        recovery = served_again(serve, audio, expected, sent)
        print(f"2^62-sample request: a new stream served correctly {recovery:.1f} s later")
        assert serve.proc.poll() is None
    finally:
        serve.close()


def test_sigterm_drains_streams_in_flight_and_exits_0(repo: Path) -> None:
    grace_s = 4.0
    serve = Serve(repo, f"--grace-period={grace_s:g}")
    try:
        in_flight = [stream_in_flight(serve.grpc, seed) for seed in (1, 2)]
        # A stream that ends within the grace period is answered in full.
        short: list = []
        finisher = threading.Thread(target=lambda: short.append(transcribe(serve.grpc, speech_like(3, 3), True)))
        finisher.start()
        time.sleep(2.0)  # paced: its START goes out after one chunk's time
        signalled = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        with pytest.raises(StreamError, match="server shutting down"):
            transcribe(serve.grpc, speech_like(2, 4))  # new streams are refused
        code = serve.proc.wait(timeout=grace_s + 15)
        assert code == 0, f"exit code {code}; its log ends:\n{serve.log()[-4000:]}"
        took = time.monotonic() - signalled
        print(f"SIGTERM with streams in flight: exited 0 after {took:.1f} s (grace {grace_s:g} s)")
        assert took < grace_s + 10
        finisher.join(timeout=10)
        assert len(short) == 1 and short[0], "the short stream ended within the grace period, in full"
        for thread, outcome in in_flight:
            thread.join(timeout=10)
            (error,) = outcome
            assert isinstance(error, StreamError) and error.lost, error  # 60 s streams outlive the grace
        log = serve.log()
        assert "3 open stream(s) get up to 4 s to end" in log
        assert "2 stream(s) still open after the grace period: ending them" in log
        for crash in ("Signal (11)", "Signal (6)", "Exit timeout expired", "malloc"):
            assert crash not in log
    finally:
        serve.close()
