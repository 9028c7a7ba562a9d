"""What ``mtasr serve`` runs around a :class:`~mtasr.server.TritonServer`: the ready banner, the
watch that notices a dead server, a dead stage stub or a failing readiness probe and restarts the
server, and the graceful stop (drain open streams, end what is left) on SIGINT/SIGTERM.

Standard library only, like :mod:`mtasr.server`.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from typing import BinaryIO

from mtasr.addresses import is_loopback, listen_urls
from mtasr.protocol import DRAIN_POLL_S
from mtasr.server import (
    ADMIN_KEY_HEADER,
    ENV_ADMIN_KEY,
    GRPC_HEADER_PREFIX,
    PROBE_TIMEOUT_S,
    RESTRICTED_APIS,
    ServerConfig,
    ServerStartError,
    TritonServer,
)

__all__ = ["DEFAULT_GRACE_S", "ready_banner", "serve_forever"]

logger = logging.getLogger(__name__)

#: Supervision (:func:`serve_forever`): how often the server, its stubs and readiness are checked,
#: and how many failed readiness probes in a row (each may take ``PROBE_TIMEOUT_S``) mean it is hung.
PROBE_INTERVAL_S = 0.5
PROBE_FAILURES = 3
#: Restarts that fail one after another before ``mtasr serve`` gives up (exit 1).
MAX_FAILED_RESTARTS = 5
#: Default time in-flight streams get to finish after SIGTERM/SIGINT (``mtasr serve --grace-period``).
DEFAULT_GRACE_S = 30.0
#: After the grace period: how long ``mtasr serve`` keeps ending streams the stages still hold.
END_ROUNDS_S = 5.0


def ready_banner(server: TritonServer) -> str:
    """What ``mtasr serve`` prints once the server is ready: every address it answers on, the log,
    how the restricted APIs are opened, and a warning when it listens beyond this machine."""
    host = server.config.host
    lines = [f"tritonserver ready (pid {server.pid}, {server.install.source} install)"]
    for label, proto, scheme, path in (
        ("HTTP   ", "http", "http", ""),
        ("gRPC   ", "grpc", "grpc", ""),
        ("metrics", "metrics", "http", "/metrics"),
    ):
        lines.append(f"  {label} {'  '.join(listen_urls(host, server.port(proto), scheme, path))}")
    log_note = " (removed after a clean stop)" if server.config.log_file is None else ""
    lines.append(f"  log     {server.log_path}{log_note}")
    if server.config.admin_key:
        key_note = f"need header {ADMIN_KEY_HEADER} (gRPC: {GRPC_HEADER_PREFIX}{ADMIN_KEY_HEADER}) = the admin key"
    else:
        key_note = f"closed (set ${ENV_ADMIN_KEY} to open them with header {ADMIN_KEY_HEADER})"
    lines.append(f"  admin   {', '.join(RESTRICTED_APIS)} APIs: {key_note}")
    if not is_loopback(host):
        lines.append(
            f"warning: listening on {host or 'every interface'}, not only on this machine: inference needs no "
            "authentication, so anyone who can reach these ports can stream audio and read transcripts. Bind "
            "127.0.0.1, or put a firewall or an authenticating proxy in front."
        )
    return "\n".join(lines)


class _Watch:
    """What is wrong with a running server, checked every :data:`PROBE_INTERVAL_S`: the process
    exited, a stub died (Triton 2.51 never restarts one, and its model still counts as ready), or
    readiness failed :data:`PROBE_FAILURES` times in a row."""

    def __init__(self, server: TritonServer) -> None:
        self.server = server
        self.stubs = server.stub_processes()
        self.failed_probes = 0

    def problem(self) -> str | None:
        code = self.server.returncode
        if code is not None:
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            return f"tritonserver {how}"
        stubs = self.server.stub_processes()
        for pid, model in self.stubs.items():
            # A stub gone while its model is still ready died; one gone with its model was unloaded.
            if pid not in stubs and self.server.http_get(f"/v2/models/{model}/ready")[0] == 200:
                return f"the python-backend stub of model '{model}' (pid {pid}) died"
        self.stubs = stubs
        status = self.server.http_get("/v2/health/ready")[0]
        self.failed_probes = 0 if status == 200 else self.failed_probes + 1
        if self.failed_probes >= PROBE_FAILURES:
            answer = f"HTTP {status}" if status else f"no answer within {PROBE_TIMEOUT_S:g} s"
            return f"the readiness probe failed {self.failed_probes} times in a row ({answer})"
        return None


def serve_forever(config: ServerConfig, echo_log: bool = True, grace_s: float = DEFAULT_GRACE_S) -> int:
    """Run and supervise the server until SIGINT/SIGTERM, then stop it gracefully.

    Supervision: a server that exits or crashes, a stage stub that dies, or a server that fails its
    readiness probe is killed with its stubs (the listeners close, so it is not ready at once) and
    started again on the same ports; streams that were in flight are lost (their clients get an
    error). On SIGINT/SIGTERM new streams are refused, open streams get up to ``grace_s`` seconds to
    end (a second signal cuts that short), then the server stops.

    Returns the process exit code for the CLI: 0 after a requested stop, 1 when the server could
    not be brought back, 2 when it could not start. ``echo_log`` copies the server log to stderr.
    """
    server = TritonServer(config)
    stop_requested: list[int] = []

    def _on_signal(signum: int, _frame: object) -> None:
        stop_requested.append(signum)

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    log = None
    try:
        try:
            server.start()
        except ServerStartError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return 2
        if stop_requested:
            server.stop()
            return 0
        print(ready_banner(server), flush=True)
        if echo_log and server.log_path is not None:
            # Held open: a clean stop removes a temp log, and its last lines must still be echoed.
            # Restarts append to the same file, so this one handle follows them too.
            log = open(server.log_path, "rb")  # noqa: SIM115 - closed in finally
        watch = _Watch(server)
        failed_restarts = 0
        while not stop_requested:
            _echo_new_log(log)
            time.sleep(PROBE_INTERVAL_S)
            why = None if stop_requested else watch.problem()
            if why is None:
                continue
            _echo_new_log(log)
            logger.warning("%s: restarting it; streams in flight are lost", why)
            began = time.monotonic()
            try:
                server.restart()
            except ServerStartError as exc:
                failed_restarts += 1
                logger.error("restart %d of %d failed: %s", failed_restarts, MAX_FAILED_RESTARTS, exc)
                if failed_restarts >= MAX_FAILED_RESTARTS:
                    return 1
                time.sleep(min(30.0, 2.0**failed_restarts))  # a crash loop must not spin
                continue
            failed_restarts = 0
            logger.warning(
                "tritonserver is back (pid %d), ready %.1f s after the restart began",
                server.pid,
                time.monotonic() - began,
            )
            watch = _Watch(server)
        try:
            _drain(server, grace_s, stop_requested, log)
        except Exception:  # a failed drain must not leave the server running: stop it all the same
            logger.exception("draining the open streams failed; stopping the server now")
        code = server.stop()
        _echo_new_log(log)
        if code in (0, -signal.SIGINT):
            return 0
        logger.error("tritonserver exited with code %s while stopping (its log above says why)", code)
        return code if code and code > 0 else 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server.is_running():
            server.stop()
        if log is not None:
            log.close()


def _drain(server: TritonServer, grace_s: float, stop_requested: list[int], log: BinaryIO | None) -> None:
    """Refuse new streams and wait up to ``grace_s`` for the open ones to end (or a second signal)."""
    if not server.is_running():
        return
    server.drain()
    deadline = time.monotonic() + grace_s
    still_open = server.open_streams()
    logger.warning(
        "stopping (signal %d): new streams are refused; %s open stream(s) get up to %g s to end",
        stop_requested[0],
        "?" if still_open is None else still_open,
        grace_s,
    )
    while still_open and time.monotonic() < deadline and len(stop_requested) < 2:
        _echo_new_log(log)
        time.sleep(0.2)
        still_open = server.open_streams()
    if still_open:
        logger.warning("%d stream(s) still open after the grace period: ending them", still_open)
    # Streams still open, and refused STARTs, hold Triton sequences that would stall its stop: END them.
    # The stages publish them every DRAIN_POLL_S; rounds repeat until one finds no stream it has not
    # ended yet (a START can race a round, and under load a stage publishes late), for at most END_ROUNDS_S.
    # A round that ends nothing new is the last only once the stages also count no open stream.
    deadline = time.monotonic() + END_ROUNDS_S
    ended: set[int | str] = set()
    while time.monotonic() < deadline:
        time.sleep(2 * DRAIN_POLL_S)
        new = server.end_open_streams(frozenset(ended))
        ended |= new
        if not new and not server.open_streams():
            break


def _echo_new_log(log: BinaryIO | None) -> None:
    """Copy what was appended to the server log since the last call to stderr."""
    if log is None:
        return
    data = log.read()
    if data:
        sys.stderr.write(data.decode(errors="replace"))
        sys.stderr.flush()
