"""NVIDIA's ``perf_analyzer`` against the served ``multitalker_asr`` ensemble, with real sequences.

``perf_analyzer`` 2.51.0 is the C++ binary shipped in the ``tritonclient==2.51.0`` wheel (its
``bin/``). It is kept out of the project's environment: it lives in a venv of its own (with
``protobuf<5``) under the user cache, and it is run through a small wrapper script that puts the
two shared libraries the wheel does not bundle (``libb64.so.0d``, ``libcudart.so.12``) on
``LD_LIBRARY_PATH``; both come from the ``nvidia-pytriton`` wheel's ``nvidia_pytriton.libs/``.

    wrapper = provision()                       # once: ~/.cache/mtasr/perf_analyzer/perf_analyzer
    write_input_data(streams, Path("in.json"))  # one sequence per stream, one step per chunk
    result = run(wrapper, "127.0.0.1:8001", "grpc", Path("in.json"), 4, streaming=True)

Every perf_analyzer sequence is one whole stream of the input data (no ``--sequence-length``, so
a sequence is as long as its data stream), with at most one request in flight per sequence
(``--serial-sequences``: HTTP does not keep the order of a sequence's requests otherwise).
Latencies are per request (one chunk), client side, in microseconds as perf_analyzer reports them.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import fcntl
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import venv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from mtasr.protocol import AUDIO, ENSEMBLE
from mtasr.triton_install import pytriton_root, user_cache_dir

VERSION = "2.51.0"
MODEL_NAME = ENSEMBLE
INPUT_NAME = AUDIO
# perf_analyzer's sonames that the tritonclient wheel leaves to the system, and where the
# pytriton wheel keeps them (auditwheel renames them ``<name>-<hash>.so.<ver>``).
REQUIRED_LIBS = {
    "libb64.so.0d": ("libb64.so.0d*", "libb64-*.so.0d*"),
    "libcudart.so.12": ("libcudart.so.12*", "libcudart-*.so.12*"),
}
PIP_TIMEOUT_S = 600
_READY = "READY"

Protocol = Literal["grpc", "http"]


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer could not be provisioned, failed, or its output could not be read."""


# --------------------------------------------------------------------------------------- provision


def default_cache_dir() -> Path:
    """``perf_analyzer`` in the server launcher's user cache (``$MTASR_CACHE_DIR`` or ``$XDG_CACHE_HOME/mtasr``)."""
    return user_cache_dir() / "perf_analyzer"


def pytriton_libs_dir() -> Path | None:
    """The installed ``nvidia_pytriton.libs/`` folder (found without importing pytriton)."""
    root = pytriton_root()
    libs = root.parent / "nvidia_pytriton.libs" if root is not None else None
    return libs if libs is not None and libs.is_dir() else None


def _find_lib(folder: Path, patterns: Sequence[str]) -> Path | None:
    for pattern in patterns:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    return None


def _link_libs(lib_dir: Path, sources: Sequence[Path]) -> list[str]:
    """Give every required soname a link in ``lib_dir``; returns the sonames not found anywhere."""
    lib_dir.mkdir(parents=True, exist_ok=True)
    missing = []
    for soname, patterns in REQUIRED_LIBS.items():
        target = lib_dir / soname
        found = next((p for src in sources if (p := _find_lib(src, patterns)) is not None), None)
        if found is None:
            missing.append(soname)
            continue
        if target.is_symlink() or target.exists():
            target.unlink()
        try:
            os.symlink(found.resolve(), target)
        except OSError:
            shutil.copy2(found, target)
    return missing


def env(wrapper_or_binary: Path | str | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment perf_analyzer needs: the provisioned ``lib/`` first on ``LD_LIBRARY_PATH``.

    The wrapper script sets it by itself; this is for running the raw binary (``venv/bin/...``).
    """
    out = dict(os.environ if base is None else base)
    path = Path(wrapper_or_binary) if wrapper_or_binary is not None else default_cache_dir() / "perf_analyzer"
    root = path.parent if path.parent.name != "bin" else path.parent.parent.parent
    lib_dir = root / "lib"
    if lib_dir.is_dir():
        out["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(lib_dir), out.get("LD_LIBRARY_PATH", "")) if p)
    return out


def _write_wrapper(root: Path) -> Path:
    wrapper = root / "perf_analyzer"
    wrapper.write_text(
        "#!/bin/sh\n"
        "# perf_analyzer " + VERSION + " from tritonclient, with the shared libraries it needs (mtasr).\n"
        'here="$(cd "$(dirname "$0")" && pwd)"\n'
        'LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"\n'
        "export LD_LIBRARY_PATH\n"
        'exec "$here/venv/bin/perf_analyzer" "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def version(wrapper: Path | str, timeout_s: float = 30.0) -> str:
    """``perf_analyzer --version`` (e.g. ``"2.51.0"``); raises PerfAnalyzerError if it does not run."""
    try:
        proc = subprocess.run(
            [str(wrapper), "--version"], capture_output=True, text=True, timeout=timeout_s, env=env(wrapper)
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PerfAnalyzerError(f"{wrapper} --version did not run: {exc}") from exc
    text = proc.stdout + proc.stderr
    match = re.search(r"Perf Analyzer Version (\S+)", text)
    if proc.returncode != 0 or match is None:
        hint = ""
        if "error while loading shared libraries" in text:
            hint = (
                " (a shared library is missing: install the serve extra, nvidia-pytriton==0.7.0,"
                " or put it on LD_LIBRARY_PATH)"
            )
        raise PerfAnalyzerError(f"{wrapper} --version failed{hint}: {_tail(text)}")
    return match.group(1)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def provision(cache_dir: Path | None = None, *, quiet: bool = False) -> Path:
    """A runnable perf_analyzer wrapper script, built once under ``cache_dir`` (idempotent).

    The first call creates ``cache_dir/venv`` with ``tritonclient==2.51.0`` and ``protobuf<5``
    (seconds from a local wheel cache; bounded by PIP_TIMEOUT_S), links the libraries from the
    pytriton wheel into ``cache_dir/lib``, writes ``cache_dir/perf_analyzer`` and checks that it
    prints its version. Later calls only re-run that check. Concurrent callers wait on a lock.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = root.expanduser().absolute()
    with _locked(root.parent / f".{root.name}.lock"):
        wrapper = root / "perf_analyzer"
        if (root / _READY).exists() and wrapper.exists():
            try:
                version(wrapper)
                return wrapper
            except PerfAnalyzerError:
                pass  # a broken cache (e.g. pytriton moved): rebuild below
        if not quiet:
            print(
                f"perf_analyzer: installing tritonclient=={VERSION} into {root} (first run only) ...",
                file=sys.stderr,
                flush=True,
            )
        start = time.monotonic()
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        venv_dir = root / "venv"
        venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
        pip = [
            str(venv_dir / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "-q",
        ]
        try:
            proc = subprocess.run(
                [*pip, f"tritonclient=={VERSION}", "protobuf<5"], capture_output=True, text=True, timeout=PIP_TIMEOUT_S
            )
        except subprocess.TimeoutExpired as exc:
            raise PerfAnalyzerError(f"pip install tritonclient=={VERSION} took over {PIP_TIMEOUT_S} s") from exc
        if proc.returncode != 0:
            raise PerfAnalyzerError(f"pip install tritonclient=={VERSION} failed: {_tail(proc.stderr + proc.stdout)}")
        binary = venv_dir / "bin" / "perf_analyzer"
        if not binary.exists():
            raise PerfAnalyzerError(f"tritonclient=={VERSION} installed but {binary} is missing (wheel without bin/?)")
        sources = [p for p in (pytriton_libs_dir(),) if p is not None]
        extra = os.environ.get("MTASR_PERF_ANALYZER_LIBS")
        if extra:
            sources.insert(0, Path(extra))
        missing = _link_libs(root / "lib", sources)
        wrapper = _write_wrapper(root)
        try:
            found = version(wrapper)
        except PerfAnalyzerError as exc:
            if missing:
                raise PerfAnalyzerError(
                    f"perf_analyzer needs {', '.join(missing)}, not found in nvidia-pytriton's nvidia_pytriton.libs "
                    f"(install mtasr[serve]) nor set by MTASR_PERF_ANALYZER_LIBS: {exc}"
                ) from exc
            raise
        (root / _READY).write_text(f"{found}\n")
        if not quiet:
            print(f"perf_analyzer: {found} ready in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
        return wrapper


# -------------------------------------------------------------------------------------- input data


def split_chunks(audio: np.ndarray, chunk_samples: int) -> list[np.ndarray]:
    """A stream's audio as consecutive chunks of ``chunk_samples`` (the last one shorter)."""
    audio = np.asarray(audio, np.float32).reshape(-1)
    if chunk_samples <= 0:
        raise ValueError("chunk_samples must be positive")
    return [audio[i : i + chunk_samples] for i in range(0, len(audio), chunk_samples)]


def write_input_data(streams: list[list[np.ndarray]], path: Path) -> Path:
    """perf_analyzer's ``--input-data`` JSON: one data stream (= one sequence) per stream.

    Each step is one request: ``AUDIO`` as little-endian float32 in base64 with its ``shape``
    (without the batch dimension, which perf_analyzer adds: ``-b 1``). Chunks may be ``[n]`` or
    ``[1, n]``; empty chunks are refused (perf_analyzer cannot send a zero-byte tensor).
    """
    if not streams:
        raise ValueError("no streams")
    data = []
    for s, stream in enumerate(streams):
        if not stream:
            raise ValueError(f"stream {s} has no chunks")
        steps = []
        for c, chunk in enumerate(stream):
            arr = np.asarray(chunk)
            if arr.ndim == 2 and arr.shape[0] == 1:
                arr = arr[0]
            if arr.ndim != 1:
                raise ValueError(
                    f"stream {s} chunk {c}: expected [samples] or [1, samples], got {list(np.shape(chunk))}"
                )
            if arr.size == 0:
                raise ValueError(f"stream {s} chunk {c} is empty")
            raw = np.ascontiguousarray(arr, dtype="<f4").tobytes()
            steps.append(
                {INPUT_NAME: {"content": {"b64": base64.b64encode(raw).decode("ascii")}, "shape": [int(arr.size)]}}
            )
        data.append(steps)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": data}))
    return path


# ---------------------------------------------------------------------------------------------- run


@dataclass(frozen=True)
class PerfResult:
    """One concurrency level as perf_analyzer measured it (latencies in microseconds)."""

    protocol: str
    streaming: bool
    concurrency: int
    throughput: float  # inferences (= chunk requests) per second
    latency_avg_us: float
    latency_p50_us: float
    latency_p90_us: float
    latency_p95_us: float
    latency_p99_us: float
    request_count: int | None = None  # requests completed in the measurement (stdout "Request count")
    sequence_count: int | None = None  # sequences completed in the measurement, where reported
    server_success_count: int | None = None  # the ensemble's successful requests in that window (server)
    server_queue_us: float | None = None
    server_compute_infer_us: float | None = None
    row: dict[str, str] = field(default_factory=dict)  # the raw CSV row
    stdout: str = ""

    @property
    def latency_ms(self) -> dict[str, float]:
        return {
            "avg": self.latency_avg_us / 1e3,
            "p50": self.latency_p50_us / 1e3,
            "p90": self.latency_p90_us / 1e3,
            "p95": self.latency_p95_us / 1e3,
            "p99": self.latency_p99_us / 1e3,
        }


def _tail(text: str, n: int = 2000) -> str:
    text = text.strip()
    return text if len(text) <= n else "..." + text[-n:]


def build_command(
    binary: Path | str,
    url: str,
    protocol: Protocol,
    input_data: Path,
    concurrency: int,
    *,
    streaming: bool,
    measurement_ms: int,
    csv_path: Path,
    model: str = MODEL_NAME,
    percentile: int | None = 99,
    stability_percentage: float = 10.0,
    max_trials: int = 10,
    serial_sequences: bool = True,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The perf_analyzer command line :func:`run` uses."""
    if protocol not in ("grpc", "http"):
        raise ValueError(f"protocol must be 'grpc' or 'http', not {protocol!r}")
    if streaming and protocol != "grpc":
        raise ValueError("streaming needs the gRPC protocol")
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    cmd = [str(binary), "-m", model, "-u", url, "-i", protocol, "-b", "1"]
    if streaming:
        cmd.append("--streaming")
    cmd += ["--input-data", str(input_data), f"--concurrency-range={concurrency}:{concurrency}"]
    if serial_sequences:
        cmd.append("--serial-sequences")
    cmd.append(f"--measurement-interval={measurement_ms}")
    if percentile is not None:  # stabilise on (and report) this percentile; None: on the average
        cmd.append(f"--percentile={percentile}")
    cmd += [f"--stability-percentage={stability_percentage:g}", f"--max-trials={max_trials}"]
    cmd += ["-f", str(csv_path), *extra_args]
    return cmd


def _num(row: dict[str, str], *names: str) -> float | None:
    for name in names:
        value = row.get(name)
        if value not in (None, ""):
            return float(value)
    return None


# The CSV's latency breakdown: its columns add up to the average client latency.
_BREAKDOWN = (
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
)


def _avg_latency(row: dict[str, str], stdout: str) -> float | None:
    """The average request latency: stdout's "Avg gRPC/HTTP time" (async) or "Avg latency" (sync).

    perf_analyzer 2.51's CSV has no average column; failing stdout, the breakdown columns' sum.
    """
    found = re.findall(r"Avg (?:gRPC time|HTTP time|latency):\s*(\d+(?:\.\d+)?) usec", stdout)
    if found:
        return float(found[-1])
    parts = [_num(row, name) for name in _BREAKDOWN]
    return sum(parts) if all(p is not None for p in parts) else None  # type: ignore[misc]


def parse_csv(text: str) -> list[dict[str, str]]:
    """perf_analyzer's ``-f`` CSV: the rows of its (first) table, keyed by header."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    # Some versions append a blank line and a second (metrics) table: keep the first table only.
    table = []
    for line in lines:
        if table and line.startswith("Concurrency,"):
            break
        table.append(line)
    return [
        {k.strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(io.StringIO("\n".join(table)))
    ]


def parse_result(csv_text: str, stdout: str, protocol: str, streaming: bool, concurrency: int) -> PerfResult:
    rows = parse_csv(csv_text)
    row = next((r for r in rows if r.get("Concurrency") == str(concurrency)), rows[0] if rows else None)
    if row is None:
        raise PerfAnalyzerError(f"perf_analyzer wrote no result rows: {_tail(csv_text)!r}; stdout: {_tail(stdout)}")
    values = {
        "throughput": _num(row, "Inferences/Second"),
        "latency_avg_us": _avg_latency(row, stdout),
        "latency_p50_us": _num(row, "p50 latency"),
        "latency_p90_us": _num(row, "p90 latency"),
        "latency_p95_us": _num(row, "p95 latency"),
        "latency_p99_us": _num(row, "p99 latency"),
    }
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise PerfAnalyzerError(f"perf_analyzer CSV lacks {missing}: columns {sorted(row)}")
    # The last "Request count" / "Sequence count" in stdout belong to the reported (final) window.
    req = re.findall(r"Request count:\s*(\d+)", stdout)
    seq = re.findall(r"Sequence count:\s*(\d+)", stdout)
    # The ensemble's own server-side count comes first after "Server:"; composing models follow.
    ok = re.findall(r"\n\s*Server:\s*\n(?:[^\n]*\n)*?\s*Successful request count:\s*(\d+)", stdout)
    return PerfResult(
        protocol=protocol,
        streaming=streaming,
        concurrency=int(float(row.get("Concurrency") or concurrency)),
        request_count=int(req[-1]) if req else None,
        sequence_count=int(seq[-1]) if seq else None,
        server_success_count=int(ok[-1]) if ok else None,
        server_queue_us=_num(row, "Server Queue"),
        server_compute_infer_us=_num(row, "Server Compute Infer"),
        row=row,
        stdout=stdout,
        **values,  # type: ignore[arg-type]
    )


def run(
    binary: Path | str,
    url: str,
    protocol: Protocol,
    input_data: Path,
    concurrency: int,
    *,
    streaming: bool,
    measurement_ms: int = 5000,
    csv_path: Path,
    model: str = MODEL_NAME,
    percentile: int | None = 99,
    stability_percentage: float = 10.0,
    max_trials: int = 10,
    serial_sequences: bool = True,
    timeout_s: float | None = None,
    extra_args: Sequence[str] = (),
) -> PerfResult:
    """Run perf_analyzer at one concurrency (= number of live streams) and parse its CSV.

    ``url`` is ``host:port`` of the chosen protocol. perf_analyzer keeps measuring windows of
    ``measurement_ms`` until the last three agree within ``stability_percentage`` (on throughput
    and p``percentile`` latency) or ``max_trials`` windows passed; the subprocess is killed after
    ``timeout_s`` (default: twice the longest possible measurement plus a minute).
    """
    cmd = build_command(
        binary,
        url,
        protocol,
        input_data,
        concurrency,
        streaming=streaming,
        measurement_ms=measurement_ms,
        csv_path=csv_path,
        model=model,
        percentile=percentile,
        stability_percentage=stability_percentage,
        max_trials=max_trials,
        serial_sequences=serial_sequences,
        extra_args=extra_args,
    )
    if timeout_s is None:
        timeout_s = 2 * max_trials * measurement_ms / 1000 + 60
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    if csv_path.exists():
        csv_path.unlink()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env(binary))
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = (exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        raise PerfAnalyzerError(
            f"perf_analyzer ran over {timeout_s:.0f} s: {' '.join(cmd)}\n{_tail(out + err)}"
        ) from exc
    except OSError as exc:
        raise PerfAnalyzerError(f"cannot run {binary}: {exc} (call provision() first)") from exc
    if proc.returncode != 0:
        why = ""
        if proc.returncode == 2 or "stable measurement" in proc.stdout + proc.stderr:
            why = (
                f" (no stable measurement in {max_trials} windows: raise measurement_ms, max_trials or"
                " stability_percentage, or stabilise on the average with percentile=None)"
            )
        raise PerfAnalyzerError(
            f"perf_analyzer exited {proc.returncode}{why}: {' '.join(cmd)}\n"
            f"stderr: {_tail(proc.stderr)}\nstdout: {_tail(proc.stdout)}"
        )
    if not csv_path.exists():
        raise PerfAnalyzerError(f"perf_analyzer wrote no {csv_path}: {_tail(proc.stdout + proc.stderr)}")
    return parse_result(csv_path.read_text(), proc.stdout, protocol, streaming, concurrency)
