"""A checking front for Triton's HTTP port: requests that would crash Triton never reach it.

Triton 2.51's HTTP front end trusts the shapes a request declares. ``"shape": [1, 2**40]`` with
JSON data makes it allocate before it looks at the data (``std::bad_alloc``, the whole server
aborts); ``[1, 2**62]`` FP32 with 0 binary bytes passes its size check because 2^62 x 4 wraps to
0, and kills the python-backend stub that loads it; a ``data`` array nested 100,000 deep
overflows its parser's stack. One such request would end every stream on the server.

:class:`HttpGuard` listens on the public HTTP port, reads each inference request whole (up to
the same byte limit Triton applies), checks it with :func:`infer_request_problem` and answers a
bad one with Triton's own error form (400, ``{"error": ...}``); everything else is forwarded
byte for byte to Triton on a private loopback port. Triton refuses requests on that port that
lack :attr:`HttpGuard.key` (its restricted-API option), so nothing bypasses the checks. gRPC
is not proxied: its binary requests are sized by protobuf, and what still kills a stub there is
recovered from by the supervisor (supervisor.serve_forever).
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import re
import secrets
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["GUARD_KEY_HEADER", "MAX_REQUEST_BYTES", "HttpGuard", "infer_request_problem"]

logger = logging.getLogger(__name__)

#: Header the guard adds to every forwarded request; Triton answers none on its private port without it.
GUARD_KEY_HEADER = "mtasr-guard-key"
#: Largest request body accepted (Triton's own default, ``--http-max-input-size``): a chunk of
#: audio is ~70 kB, so this bounds only abuse.
MAX_REQUEST_BYTES = 64 * 2**20
_INFER_PATH = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$")
# Triton's generate extension turns free-form JSON into tensors: nothing here is served through it.
_GENERATE_PATH = re.compile(r"/generate(_stream)?$")
_ITEM_BYTES = {
    "BOOL": 1,
    "UINT8": 1,
    "INT8": 1,
    "UINT16": 2,
    "INT16": 2,
    "FP16": 2,
    "BF16": 2,
    "UINT32": 4,
    "INT32": 4,
    "FP32": 4,
    "UINT64": 8,
    "INT64": 8,
    "FP64": 8,
    "BYTES": 1,  # at least one byte per element, whatever its length
}
# Hop-by-hop headers (RFC 9110 7.6.1): they describe one connection, not the request.
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
_UPSTREAM_TIMEOUT_S = 600.0  # a long inference is Triton's to time out, not ours


def infer_request_problem(body: bytes, header_length: int | None) -> str | None:
    """Why Triton must not see this inference request, or None when it may.

    `header_length` is the ``Inference-Header-Content-Length`` header (binary tensor data follows
    the JSON), None for an all-JSON request. Checked: the JSON parses without deep nesting; every
    input's shape is a list of non-negative integers whose size fits the request limit; binary
    data sizes match shape x datatype exactly and add up to the bytes sent; JSON data holds exactly
    the elements its shape declares.
    """
    if header_length is not None and not 0 < header_length <= len(body):
        return f"Inference-Header-Content-Length {header_length} does not fit a {len(body)}-byte body"
    try:
        request = json.loads(body[:header_length] if header_length is not None else body)
    except RecursionError:
        return "the request JSON is nested too deeply"
    except ValueError as err:
        return f"the request is not valid JSON ({err})"
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        return "the request must be a JSON object with an 'inputs' list"
    binary_total = 0
    for tensor in request["inputs"]:
        if not isinstance(tensor, dict):
            return "each input must be a JSON object"
        name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            return f"input {name!r}: 'shape' must be a list of non-negative integers"
        if datatype not in _ITEM_BYTES:
            return f"input {name!r}: unknown datatype {datatype!r}"
        elements = math.prod(shape)  # Python integers: no wrap-around
        if elements * _ITEM_BYTES[datatype] > MAX_REQUEST_BYTES:
            return f"input {name!r}: shape {shape} is larger than the {MAX_REQUEST_BYTES} bytes a request may carry"
        parameters = tensor.get("parameters") or {}
        binary = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if binary is not None:
            if type(binary) is not int or binary < 0:
                return f"input {name!r}: 'binary_data_size' must be a non-negative integer"
            if datatype != "BYTES" and binary != elements * _ITEM_BYTES[datatype]:
                return (
                    f"input {name!r}: shape {shape} of {datatype} needs {elements * _ITEM_BYTES[datatype]} "
                    f"bytes, binary_data_size says {binary}"
                )
            binary_total += binary
        elif "data" in tensor:
            counted = _count_elements(tensor["data"], elements)
            if counted != elements:
                return f"input {name!r}: shape {shape} declares {elements} elements, 'data' holds {counted}"
    sent = len(body) - header_length if header_length is not None else 0
    if binary_total != sent:
        return f"the binary data sizes add up to {binary_total} bytes, the request carries {sent}"
    return None


def _count_elements(data: object, limit: int) -> int:
    """Leaves of a nested JSON list (stops counting past `limit`: the answer is then wrong anyway)."""
    count, pending = 0, [data]
    while pending and count <= limit:
        item = pending.pop()
        if isinstance(item, list):
            pending.extend(item)
        else:
            count += 1
    return count + len(pending)


def _refuse_deep_json(body: bytes) -> None:
    """Any other JSON body (the restricted APIs') may still not nest deeply enough to crash a parser."""
    try:
        json.loads(body)
    except RecursionError:
        raise _ProblemError(400, "the request JSON is nested too deeply") from None
    except ValueError:
        pass  # not JSON: Triton says what it expected


class _ProblemError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Triton's own front end
    # A reply goes out as headers, then body: with Nagle's algorithm the body waits for the client's
    # delayed ACK of the headers, about 40 ms on every request (measured: 84 ms a chunk instead of 37).
    disable_nagle_algorithm = True
    server: _GuardServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._forward()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_GET  # noqa: N815

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        logger.debug("%s " + format, self.address_string(), *args)

    def _forward(self) -> None:
        try:
            body = self._read_body()
            path = self.path.split("?", 1)[0]
            if _GENERATE_PATH.search(path):
                raise _ProblemError(404, "the generate extension is not served here; use .../infer")
            if self.command == "POST" and _INFER_PATH.match(path):
                length = self.headers.get("Inference-Header-Content-Length")
                if length is not None and not length.strip().isdigit():
                    raise _ProblemError(400, "Inference-Header-Content-Length must be a number")
                problem = infer_request_problem(body, int(length) if length is not None else None)
                if problem:
                    raise _ProblemError(400, problem)
            elif body:
                _refuse_deep_json(body)
        except _ProblemError as err:
            self.close_connection = err.status != 400 or self.close_connection
            self._reply(err.status, [("Content-Type", "application/json")], json.dumps({"error": str(err)}).encode())
            return
        try:
            status, headers, answer = self._upstream(body)
        except OSError:
            message = "the inference server is restarting or unavailable; try again shortly"
            self._reply(503, [("Content-Type", "application/json")], json.dumps({"error": message}).encode())
            return
        self._reply(status, headers, answer)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length", "0").strip() or "0"
        if not length.isdigit():
            self.close_connection = True
            raise _ProblemError(400, "Content-Length must be a number")
        if int(length) > MAX_REQUEST_BYTES:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            raise _ProblemError(413, f"the request is larger than {MAX_REQUEST_BYTES} bytes")
        return self.rfile.read(int(length))

    def _read_chunked(self) -> bytes:
        parts, total = [], 0
        while True:
            size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                self.close_connection = True
                raise _ProblemError(400, "malformed chunked request body") from None
            total += size
            if total > MAX_REQUEST_BYTES:
                self.close_connection = True
                raise _ProblemError(413, f"the request is larger than {MAX_REQUEST_BYTES} bytes")
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailers, then the empty line
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)  # CRLF after the chunk

    def _upstream(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=_UPSTREAM_TIMEOUT_S)
        try:
            connection.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP and name.lower() not in ("content-length", GUARD_KEY_HEADER):
                    connection.putheader(name, value)
            connection.putheader("Content-Length", str(len(body)))
            connection.putheader(GUARD_KEY_HEADER, self.server.key)
            connection.endheaders(body)
            response = connection.getresponse()
            answer = response.read()
            headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP | {"content-length"}]
            return response.status, headers, answer
        finally:
            connection.close()

    def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _GuardServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], upstream_port: int, key: str) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.upstream_port, self.key = upstream_port, key
        super().__init__(address, _Handler)


class HttpGuard:
    """The checking front on ``host:port``, forwarding to Triton's HTTP on ``127.0.0.1:upstream_port``.

    Runs in a background thread of the process that starts it; it outlives Triton restarts
    (requests meanwhile get 503) and stops with :meth:`stop`.
    """

    def __init__(self, host: str, port: int, upstream_port: int) -> None:
        #: What Triton demands on its private port (``--http-restricted-api``); new per guard.
        self.key = secrets.token_urlsafe(32)
        self._server = _GuardServer((host, port), upstream_port, self.key)
        self._thread = threading.Thread(target=self._server.serve_forever, name="mtasr-http-guard", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def upstream_port(self) -> int:
        return self._server.upstream_port

    @upstream_port.setter
    def upstream_port(self, port: int) -> None:
        """Where Triton listens now (a restarted server gets a fresh private port)."""
        self._server.upstream_port = port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
