"""Launch the real ``tritonserver`` binary and manage its lifetime.

:class:`TritonServer` starts the binary (found by :func:`mtasr.triton_install.find_tritonserver`)
bound to one host, waits until every model is ready and, when that fails, raises
:class:`ServerStartError` carrying the part of the server log that says why (which model failed to
load and the Python error). It runs the server in its own process group, so stopping it also ends
the python-backend stub processes: nothing is left behind. What ``mtasr serve`` runs around it
(supervision, graceful stop) is in :mod:`mtasr.supervisor`.

The administrative APIs (model repository: load/unload, whose ``file:`` overrides run code in the
server; shared memory; logging; trace) are restricted on HTTP and gRPC to requests carrying the
header :data:`ADMIN_KEY_HEADER` with the server's admin key: the operator's (``$MTASR_ADMIN_KEY``
for ``mtasr serve``), or a random one per start that only this process knows. Inference, health,
metadata, model configuration and statistics stay open.

Standard library only: this module is imported by the CLI and the tests, never by models.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import http.client
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mtasr.addresses import find_free_port, find_free_ports, port_taken, url_host
from mtasr.http_guard import GUARD_KEY_HEADER, HttpGuard
from mtasr.protocol import AUDIO, ENSEMBLE, ENV_DRAIN_FILE, OPEN_STREAMS_METRIC
from mtasr.triton_install import STUB_NAME, TritonInstall, TritonNotFoundError, find_tritonserver

__all__ = [
    "ADMIN_KEY_HEADER",
    "ENV_ADMIN_KEY",
    "GRPC_HEADER_PREFIX",
    "PROBE_TIMEOUT_S",
    "RESTRICTED_APIS",
    "ServerConfig",
    "ServerStartError",
    "TritonServer",
    "local_server_config",
]

Protocol = Literal["http", "grpc", "metrics"]

#: Environment variable holding the operator's key for the restricted APIs (``mtasr serve``).
ENV_ADMIN_KEY = "MTASR_ADMIN_KEY"
#: HTTP header carrying the admin key. gRPC carries it as metadata ``triton-grpc-protocol-<header>``
#: (Triton's prefix for restricted protocols); :meth:`TritonServer.admin_headers` gives either.
ADMIN_KEY_HEADER = "mtasr-admin-key"
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
#: Triton API groups that need the admin key. Clients use none of them: the repository API loads
#: code (``file:`` overrides) and unloads models; system shared memory would let a client map the
#: python backend's own regions; logging and trace change the server's behaviour.
RESTRICTED_APIS = ("model-repository", "shared-memory", "logging", "trace")
# Every other HTTP API group: behind the guard, Triton answers them only with the guard's key.
_GUARDED_APIS = ("health", "metadata", "inference", "model-config", "statistics")
# Header values must survive Triton's `<apis>:<key>=<value>` flag syntax and HTTP/gRPC metadata.
_ADMIN_KEY_FORM = re.compile(r"[A-Za-z0-9._~+/-]{16,}")

#: How long one HTTP request to the running server (a readiness probe, the metrics, an END) may take.
PROBE_TIMEOUT_S = 5.0
#: What a local HTTP call raises when the server did not answer it in full (a reset, a cut-off body, a timeout).
NO_ANSWER = (urllib.error.URLError, http.client.HTTPException, OSError)

# Log lines that look like errors on every CPU-only start and say nothing about the models.
_BENIGN_LOG_PATTERNS = (
    "CudaDriverHelper has not been initialized",
    "Unable to allocate pinned system memory",
    "CUDA driver version is insufficient",
    "Failed to init DCGM",
)
_ERROR_LINE = re.compile(r"^E\d{4} |error|failed|exception|traceback", re.IGNORECASE)
_TABLE_LINE = re.compile(r"^\s*[+|]")


class ServerStartError(RuntimeError):
    """tritonserver could not be started or did not become ready; the message says why."""


def _default_python_env() -> Path:
    """The environment (venv or installation prefix) of the running interpreter."""
    return Path(sys.prefix)


@dataclass
class ServerConfig:
    """How to run tritonserver. Ports set to 0 are replaced by free ones at start."""

    model_repository: str | Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    log_verbose: int = 0
    #: Appended last, so they override the flags set here (later flags win in tritonserver).
    extra_args: Sequence[str] = ()
    startup_timeout_s: float = 60.0
    #: ``none`` loads every model at start; ``explicit`` (with ``--load-model=...``) lets a client
    #: load and unload models.
    model_control_mode: str = "none"
    #: Load only these models (and what an ensemble among them composes); empty loads every model.
    load_models: Sequence[str] = ()
    #: How long the server waits for in-flight requests after SIGINT (``--exit-timeout-secs``).
    exit_timeout_s: int = 10
    #: Where the server's stdout/stderr (and the models' prints) go. None: a temp file
    #: (``$TMPDIR/tritonserver-<http port>-*.log``), removed after a clean stop, kept when the server
    #: failed to start or died (the error names it).
    log_file: str | Path | None = None
    #: The Python environment the python-backend stubs run in (its ``bin`` goes first on PATH).
    python_env: str | Path = field(default_factory=_default_python_env)
    #: Have the kernel SIGTERM the server when the thread that started it dies, so a crashed
    #: parent cannot leave it running. Turn off when starting it from a short-lived thread.
    kill_on_parent_exit: bool = True
    #: Extra environment variables for the server (and so the models).
    env: dict[str, str] = field(default_factory=dict)
    #: Key for the restricted APIs (:data:`RESTRICTED_APIS`); None: a random one per start, so
    #: nobody but this process can use them.
    admin_key: str | None = None
    #: Put :class:`~mtasr.http_guard.HttpGuard` on the HTTP port, Triton's own HTTP behind it on a
    #: private loopback port: requests whose declared shapes would crash Triton get a 400 instead.
    http_guard: bool = True


def local_server_config(repo_dir: str | Path, **overrides) -> ServerConfig:
    """What `mtasr serve` runs for an exported repository, on free local ports (tools, demo, tests)."""
    from mtasr.deployment import load_manifest, models_to_load

    settings = {"http_port": 0, "grpc_port": 0, "metrics_port": 0, **overrides}
    return ServerConfig(
        model_repository=Path(repo_dir), load_models=models_to_load(load_manifest(repo_dir)), **settings
    )


def _gpu_present() -> bool:
    """Whether an NVIDIA driver is loaded; without one, CUDA-only features are switched off."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def _group_members(pgid: int) -> list[int]:
    """PIDs of live (non-zombie) processes in process group ``pgid`` (Linux /proc scan)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp ...
        rest = stat.rsplit(")", 1)[-1].split()
        if len(rest) >= 3 and int(rest[2]) == pgid and rest[0] != "Z":
            members.append(int(entry))
    return members


def _process_label(cmdline: list[str]) -> str:
    """A server process's name in `TritonServer.cpu_seconds`: a python-backend stub is named after the model
    whose `model.py` it runs (its first argument, `<repository>/<model>/<version>/model.py`)."""
    if cmdline and cmdline[0].endswith("triton_python_backend_stub") and len(cmdline) > 1:
        return Path(cmdline[1]).parts[-3] if len(Path(cmdline[1]).parts) >= 3 else cmdline[1]
    return Path(cmdline[0]).name if cmdline else "?"


class TritonServer:
    """A tritonserver child process: ``with TritonServer(cfg) as srv: ... srv.url("http")``.

    ``start()`` returns only once ``/v2/health/ready`` answers 200 (with ``--strict-readiness``:
    every model loaded); otherwise it raises :class:`ServerStartError` and leaves nothing
    running. ``stop()`` asks for a graceful shutdown, then escalates, and reaps the whole
    process group (the python-backend stubs included).
    """

    def __init__(self, config: ServerConfig, install: TritonInstall | None = None) -> None:
        self.config = config
        self._install = install
        self._popen: subprocess.Popen[bytes] | None = None
        self._log_fh = None
        self._log_path: Path | None = None
        self._ports: dict[str, int] = {}
        self._command: list[str] = []
        self._returncode: int | None = None
        self._admin_key = config.admin_key or secrets.token_urlsafe(32)
        self._log_is_temp = False
        self._became_ready = False
        self._restarting = False
        self._guard: HttpGuard | None = None
        # Stages refuse new streams while this file exists (see drain()); the stubs inherit its path.
        self._drain_file = Path(tempfile.gettempdir()) / f"mtasr-drain-{os.getpid()}-{id(self):x}"

    # -- properties ---------------------------------------------------------------------------

    @property
    def install(self) -> TritonInstall:
        """The tritonserver installation used (found on first use)."""
        if self._install is None:
            self._install = find_tritonserver()
        return self._install

    @property
    def pid(self) -> int | None:
        """PID of the server process (also its process-group id), None before start."""
        return self._popen.pid if self._popen is not None else None

    def rss_mb(self) -> float:
        """Resident memory of the server and its python-backend stub processes, in MiB."""
        import psutil

        if self.pid is None:
            raise RuntimeError("the server is not running")
        root = psutil.Process(self.pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) each of the server's processes has used so far: "tritonserver" and, for
        each python-backend stub, the name of the model it runs (instances of one model summed)."""
        import psutil

        if self.pid is None:
            raise RuntimeError("the server is not running")
        root = psutil.Process(self.pid)
        used: dict[str, float] = {}
        for process in [root, *root.children(recursive=True)]:
            try:
                times, name = process.cpu_times(), _process_label(process.cmdline())
            except psutil.NoSuchProcess:
                continue
            used[name] = used.get(name, 0.0) + times.user + times.system
        return used

    @property
    def log_path(self) -> Path | None:
        """File receiving the server's output (a temp one is removed after a clean stop, see ``log_file``)."""
        return self._log_path

    @property
    def admin_key(self) -> str:
        """The key the restricted APIs (:data:`RESTRICTED_APIS`) expect: the configured one, or this start's own."""
        return self._admin_key

    def admin_headers(self, protocol: Literal["http", "grpc"]) -> dict[str, str]:
        """Headers (tritonclient's ``headers=``) that open the restricted APIs on ``protocol``."""
        name = ADMIN_KEY_HEADER if protocol == "http" else GRPC_HEADER_PREFIX + ADMIN_KEY_HEADER
        return {name: self._admin_key}

    @property
    def command(self) -> list[str]:
        """The command line of the last start."""
        return list(self._command)

    @property
    def returncode(self) -> int | None:
        """Exit status once the server has exited (negative: killed by that signal)."""
        if self._popen is not None:
            return self._popen.poll()
        return self._returncode

    def port(self, protocol: Protocol) -> int:
        """The port actually used for ``protocol`` (differs from the config when that was 0)."""
        if protocol in self._ports:
            return self._ports[protocol]
        return int(getattr(self.config, f"{protocol}_port"))

    def address(self, protocol: Protocol) -> str:
        """``host:port`` for ``protocol``: what tritonclient's ``InferenceServerClient(url=...)`` takes."""
        return f"{url_host(self.config.host)}:{self.port(protocol)}"

    def url(self, protocol: Protocol = "http") -> str:
        """Full URL: ``http://host:port``, ``grpc://host:port`` or ``http://host:port/metrics``."""
        if protocol == "http":
            return f"http://{self.address('http')}"
        if protocol == "grpc":
            return f"grpc://{self.address('grpc')}"
        if protocol == "metrics":
            return f"http://{self.address('metrics')}/metrics"
        raise ValueError(f"unknown protocol {protocol!r} (http, grpc or metrics)")

    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self._popen is not None and self._popen.poll() is None

    # -- start --------------------------------------------------------------------------------

    def _resolve_ports(self) -> dict[str, int]:
        cfg = self.config
        ports = {proto: int(getattr(cfg, f"{proto}_port")) for proto in ("http", "grpc", "metrics")}
        if self._guard is not None:  # a restart: the guard keeps the port
            ports["http"] = self._guard.port
        unset = [proto for proto, port in ports.items() if port == 0]
        ports.update(zip(unset, find_free_ports(len(unset), cfg.host), strict=True))
        dup = {p for p in ports.values() if list(ports.values()).count(p) > 1}
        if dup:
            raise ServerStartError(f"http, grpc and metrics ports must differ, got {ports}")
        for proto, port in ports.items():
            if proto == "http" and self._guard is not None:
                continue
            why = port_taken(cfg.host, port)
            if why is not None:
                raise ServerStartError(
                    f"cannot start tritonserver: {proto} port {port} on {cfg.host} is already in use "
                    f"({why}); stop whatever holds it or choose another port"
                )
        return ports

    def build_args(self, ports: dict[str, int] | None = None) -> list[str]:
        """The full command line (binary first) for the configured server."""
        cfg = self.config
        ports = ports or {p: self.port(p) for p in ("http", "grpc", "metrics")}
        inst = self.install
        gpu = _gpu_present()
        # Shared-memory regions of the python backend are named prefix + model instance: two
        # servers with the same model names would collide without a per-server prefix.
        shm_prefix = f"mtasr_{os.getpid()}_{ports['http']}_"
        # Behind the guard, Triton's HTTP is private and answers only requests the guard forwarded.
        http_host, http_port = (
            ("127.0.0.1", ports["triton_http"]) if "triton_http" in ports else (cfg.host, ports["http"])
        )
        args = [
            str(inst.binary),
            f"--model-repository={Path(cfg.model_repository).resolve()}",
            f"--backend-directory={inst.backend_dir}",
            f"--model-control-mode={'explicit' if cfg.load_models else cfg.model_control_mode}",
            *(f"--load-model={name}" for name in cfg.load_models),
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--exit-timeout-secs={int(cfg.exit_timeout_s)}",
            f"--log-verbose={int(cfg.log_verbose)}",
            "--allow-http=true",
            f"--http-address={http_host}",
            f"--http-port={http_port}",
            "--allow-grpc=true",
            f"--grpc-address={cfg.host}",
            f"--grpc-port={ports['grpc']}",
            "--allow-metrics=true",
            f"--metrics-address={cfg.host}",
            f"--metrics-port={ports['metrics']}",
            f"--allow-gpu-metrics={'true' if gpu else 'false'}",
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
            f"--http-restricted-api={','.join(RESTRICTED_APIS)}:{ADMIN_KEY_HEADER}={self._admin_key}",
            f"--grpc-restricted-protocol={','.join(RESTRICTED_APIS)}:{ADMIN_KEY_HEADER}={self._admin_key}",
        ]
        if self._guard is not None:
            args.append(f"--http-restricted-api={','.join(_GUARDED_APIS)}:{GUARD_KEY_HEADER}={self._guard.key}")
        if not gpu:
            args.append("--pinned-memory-pool-byte-size=0")  # nothing to pin without CUDA
        args.extend(str(a) for a in cfg.extra_args)
        return args

    def child_env(self) -> dict[str, str]:
        """Environment for the server: this Python env first on PATH, the install's libraries."""
        env = dict(os.environ)
        env.update(self.config.env)
        py_bin = Path(self.config.python_env) / "bin"
        if not py_bin.is_dir():
            py_bin = Path(sys.executable).parent
        env["PATH"] = os.pathsep.join([str(py_bin), *[p for p in env.get("PATH", "").split(os.pathsep) if p]])
        libs = [str(d) for d in self.install.lib_dirs]
        if libs:
            old = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
            env["LD_LIBRARY_PATH"] = os.pathsep.join(old + [lib for lib in libs if lib not in old])
        env.pop("PYTHONHOME", None)  # would point the stub's embedded Python elsewhere
        env[ENV_DRAIN_FILE] = str(self._drain_file)
        return env

    def start(self) -> TritonServer:
        """Spawn the server and block until it is ready; :class:`ServerStartError` otherwise."""
        if self.is_running():
            raise ServerStartError(f"tritonserver already running (pid {self.pid})")
        cfg = self.config
        repo = Path(cfg.model_repository)
        if not repo.is_dir():
            raise ServerStartError(f"model repository {repo} is not a directory")
        if not _ADMIN_KEY_FORM.fullmatch(self._admin_key):
            raise ServerStartError(
                f"the admin key (${ENV_ADMIN_KEY}) must be at least 16 characters of A-Z a-z 0-9 . _ ~ + / -"
            )
        try:
            install = self.install
        except TritonNotFoundError as exc:
            raise ServerStartError(str(exc)) from exc
        self._ports = self._resolve_ports()
        if cfg.http_guard:
            try:
                self._start_guard()
            except OSError as exc:
                raise ServerStartError(f"cannot listen on {cfg.host}:{self._ports['http']} ({exc})") from exc
        self._command = self.build_args(self._ports)

        self._became_ready = False
        # A restart (see restart()) appends to the same log: one file tells the whole story.
        restarting = self._restarting and self._log_path is not None
        self._log_is_temp = cfg.log_file is None
        if restarting:
            pass
        elif cfg.log_file is None:
            # Removed again after a clean stop (see stop()); kept when the server fails, for its error.
            fd, name = tempfile.mkstemp(prefix=f"tritonserver-{self._ports['http']}-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        else:
            self._log_path = Path(cfg.log_file)
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_fh = open(self._log_path, "ab" if restarting else "wb")  # noqa: SIM115 - lives as long as the server

        preexec = _set_parent_death_signal if cfg.kill_on_parent_exit else None
        try:
            self._remove_drain_files()
            self._popen = subprocess.Popen(
                self._command,
                stdin=subprocess.DEVNULL,
                stdout=self._log_fh,
                stderr=subprocess.STDOUT,
                env=self.child_env(),
                start_new_session=True,  # own process group: stop() can reap the stubs too
                preexec_fn=preexec,
                close_fds=True,
            )
        except OSError as exc:
            self._close_log()
            self._stop_guard_unless_restarting()
            raise ServerStartError(f"cannot execute {install.binary}: {exc}") from exc
        atexit.register(self.stop)
        try:
            self._wait_ready(time.monotonic() + cfg.startup_timeout_s)
        except ServerStartError:
            self._stop_guard_unless_restarting()
            raise
        return self

    def _stop_guard_unless_restarting(self) -> None:
        # A failed restart keeps the guard: its clients get "unavailable" until the next try.
        if self._guard is not None and not self._restarting:
            self._guard.stop()
            self._guard = None

    def _start_guard(self) -> None:
        """The HTTP guard on the public port (once; it outlives restarts), Triton on a new private port."""
        upstream = find_free_port("127.0.0.1")
        if self._guard is None:
            self._guard = HttpGuard(self.config.host, self._ports["http"], upstream)
            self._ports["http"] = self._guard.port
        self._guard.upstream_port = upstream
        self._ports["triton_http"] = upstream

    def _wait_ready(self, deadline: float) -> None:
        ready_url = f"{self.url('http')}/v2/health/ready"
        while True:
            code = self._popen.poll()
            if code is not None:
                self._reap_group()
                self._close_log()
                raise ServerStartError(
                    self._failure_message(f"tritonserver exited with code {code} before it was ready")
                )
            try:
                with urllib.request.urlopen(ready_url, timeout=1.0) as resp:
                    if resp.status == 200:
                        self._became_ready = True
                        return
            except NO_ANSWER:
                pass  # not listening yet, or 400 while models load
            if time.monotonic() >= deadline:
                not_ready = self._not_ready_models()
                self.stop()
                summary = f"tritonserver was not ready within {self.config.startup_timeout_s:g} s"
                if not_ready:
                    summary += f"; models not ready: {not_ready}"
                raise ServerStartError(self._failure_message(summary))
            time.sleep(0.1)

    def _not_ready_models(self) -> str:
        """Model states from the repository index, for a timeout message (best effort)."""
        import json

        try:
            req = urllib.request.Request(
                f"{self.url('http')}/v2/repository/index", data=b"{}", method="POST", headers=self.admin_headers("http")
            )
            with urllib.request.urlopen(req, timeout=2.0) as resp:
                index = json.loads(resp.read())
        except (OSError, ValueError):
            return ""
        return ", ".join(
            f"{m.get('name')} ({m.get('state', '?')}{': ' + m['reason'] if m.get('reason') else ''})"
            for m in index
            if m.get("state") != "READY"
        )

    def log_text(self) -> str:
        """Everything the server has written so far."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")

    def _failure_message(self, summary: str, tail_lines: int = 25) -> str:
        lines = self.log_text().splitlines()
        errors = [
            ln.strip()
            for ln in lines
            if _ERROR_LINE.search(ln) and not _TABLE_LINE.match(ln) and not any(b in ln for b in _BENIGN_LOG_PATTERNS)
        ]
        loading = dict.fromkeys(re.findall(r"loading: ([^:\s]+):\d+", "\n".join(lines)))
        done = set(re.findall(r"(?:successfully loaded|failed to load) '([^']+)'", "\n".join(lines)))
        still_loading = [m for m in loading if m not in done]
        # The tail without the banner tables, except model rows that say what went wrong.
        tail = [
            ln
            for ln in lines
            if ln.strip()
            and (not _TABLE_LINE.match(ln) or "UNAVAILABLE" in ln)
            and not re.search(r"\.cc:\d+\]\s*$", ln)  # table headings
        ][-tail_lines:]
        if still_loading and not errors:
            summary += f" (still loading: {', '.join(still_loading)})"
        parts = [summary + "."]
        if errors:
            parts.append("Errors in the server log:\n  " + "\n  ".join(errors[-20:]))
        parts.append(f"Last lines of {self._log_path}:\n  " + "\n  ".join(tail or ["(empty)"]))
        command = " ".join(self._command).replace(self._admin_key, "<admin key>")
        if self._guard is not None:
            command = command.replace(self._guard.key, "<guard key>")
        parts.append("Command: " + command)
        return "\n".join(parts)

    # -- stop ---------------------------------------------------------------------------------

    def stop(self, grace_s: float | None = None) -> int | None:
        """Stop the server: SIGINT, then SIGTERM and SIGKILL to its group; returns its exit code.

        ``grace_s`` is how long SIGINT gets (default: the exit timeout plus 5 s).
        """
        atexit.unregister(self.stop)
        popen = self._popen
        if popen is None:
            return self._returncode
        if grace_s is None:
            grace_s = self.config.exit_timeout_s + 5.0
        if popen.poll() is None:
            for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
                try:
                    if sig == signal.SIGINT:
                        os.kill(popen.pid, sig)  # the server shuts its models (and stubs) down
                    else:
                        os.killpg(popen.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    popen.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._reap_group()
        self._returncode = popen.wait()
        self._close_log()
        self._remove_drain_files()
        self._stop_guard_unless_restarting()
        if self._log_is_temp and self._became_ready and self._returncode == 0 and self._log_path is not None:
            # A clean run's temp log says nothing anyone needs; a failed one's is kept (errors name it).
            self._log_path.unlink(missing_ok=True)
        return self._returncode

    def restart(self) -> TritonServer:
        """Kill the server and its stubs at once (their state is lost either way) and start it again on
        the same ports, appending to the same log; :class:`ServerStartError` when it does not come back."""
        if self._popen is not None:
            if self._popen.poll() is None:
                try:
                    os.killpg(self._popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._reap_group()
            self._returncode = self._popen.wait()
            self._close_log()
            self._popen = None
        self._restarting = True
        try:
            return self.start()
        finally:
            self._restarting = False

    def stub_processes(self) -> dict[int, str]:
        """The live python-backend stubs of this server: pid -> the model each one runs."""
        if not self.is_running():
            return {}
        stubs = {}
        for pid in _group_members(self._popen.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue  # exited meanwhile
            if len(argv) > 1 and argv[0].decode(errors="replace").endswith(STUB_NAME):
                # argv[1] is <repository>/<model>/<version>/model.py
                stubs[pid] = Path(argv[1].decode(errors="replace")).parent.parent.name
        return stubs

    def http_get(self, path: str, timeout_s: float = PROBE_TIMEOUT_S) -> tuple[int, bytes]:
        """GET ``path`` on the server's HTTP port: (status, body); status 0 when it did not answer."""
        try:
            with urllib.request.urlopen(f"{self.url('http')}{path}", timeout=timeout_s) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, b""
        except NO_ANSWER:
            return 0, b""

    def open_streams(self) -> int | None:
        """Streams the server holds state for (the most any stage holds), None when unreadable."""

        try:
            with urllib.request.urlopen(self.url("metrics"), timeout=PROBE_TIMEOUT_S) as resp:
                text = resp.read().decode(errors="replace")
        except NO_ANSWER:
            return None
        per_stage: dict[str, float] = {}
        for stage, value in re.findall(
            rf'^{OPEN_STREAMS_METRIC}\{{[^}}]*stage="([^"]+)"[^}}]*\}}\s+(\S+)', text, re.MULTILINE
        ):
            per_stage[stage] = per_stage.get(stage, 0.0) + float(value)
        return int(max(per_stage.values())) if per_stage else None

    def drain(self) -> None:
        """From now on the stages refuse every START ("server shutting down"); open streams carry on."""
        self._drain_file.touch()

    def end_open_streams(self, already_ended: frozenset = frozenset()) -> set[int | str]:
        """Send END for every stream the stages still hold (they publish them while draining) and not in
        `already_ended`; returns the ids it ended.

        Triton counts an open sequence as an inference in flight: stopping with one waits out the exit
        timeout and then crashes. The stream's client gets an error on its next chunk."""
        import json

        ids: set[int | str] = set()
        for path in self._drain_file.parent.glob(f"{self._drain_file.name}.*.json"):
            try:
                ids.update(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue  # being replaced; the next call reads it
        ids -= already_ended  # refused STARTs stay published until their idle timeout; one END frees each
        for stream in ids:
            body = {
                "parameters": {"sequence_id": stream, "sequence_start": False, "sequence_end": True},
                "inputs": [{"name": AUDIO, "shape": [1, 0], "datatype": "FP32", "data": []}],
            }
            request = urllib.request.Request(
                f"{self.url('http')}/v2/models/{ENSEMBLE}/infer", data=json.dumps(body).encode(), method="POST"
            )
            try:
                urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S).close()
            except NO_ANSWER:
                pass  # ended meanwhile by its client, or refused: either way no longer open
        return ids

    def _remove_drain_files(self) -> None:
        self._drain_file.unlink(missing_ok=True)
        for path in self._drain_file.parent.glob(f"{self._drain_file.name}.*"):
            path.unlink(missing_ok=True)

    def _reap_group(self) -> None:
        """Kill whatever is left in the server's process group (stubs of a crashed server)."""
        pgid = self._popen.pid
        deadline = time.monotonic() + 5.0
        while True:
            members = [p for p in _group_members(pgid) if p != os.getpid()]
            if not members:
                return
            for pid in members:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def _close_log(self) -> None:
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the server to exit on its own; its exit code, or None on timeout."""
        if self._popen is None:
            return self._returncode
        try:
            return self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:
        try:
            if self.is_running():
                self.stop(grace_s=2.0)
        except Exception:
            pass


def _set_parent_death_signal() -> None:
    """Runs in the child before exec: SIGTERM it when the parent goes away."""
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
