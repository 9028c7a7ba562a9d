"""The tritonserver launcher against the real binary (nvidia-pytriton wheel or Triton container).

Each server start is bounded; the whole file takes well under two minutes on 2 CPU cores.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from mtasr.addresses import find_free_ports, port_taken
from mtasr.server import ServerConfig, ServerStartError, TritonServer, _group_members
from mtasr.triton_install import STUB_NAME, TritonNotFoundError, find_tritonserver

try:
    INSTALL = find_tritonserver()
except TritonNotFoundError as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"no tritonserver: {exc}", allow_module_level=True)

pytestmark = pytest.mark.timeout(120)

CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [
  {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }},
  {{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }}
]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""

# TEXT carries the stub's sys.prefix and numpy version: proves BYTES outputs work and that the
# stub runs in this test's Python environment.
MODEL_PY = """\
import sys
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        time.sleep({init_sleep})

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            text = f"{{sys.prefix}}|{{np.__version__}}".encode()
            texts = np.array([[text]] * x.shape[0], dtype=np.object_)
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor("OUTPUT0", x + 1.0), pb_utils.Tensor("TEXT", texts)]
                )
            )
        return responses

    def finalize(self):
        pass
"""


def write_model(repo: Path, name: str = "add_one", model_py: str | None = None, config: str | None = None) -> Path:
    """Write one python-backend model into ``repo``."""
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(config if config is not None else CONFIG.format(name=name))
    (repo / name / "1" / "model.py").write_text(model_py if model_py is not None else MODEL_PY.format(init_sleep=0))
    return repo


def free_ports() -> dict[str, int]:
    http, grpc, metrics = find_free_ports(3)
    return {"http_port": http, "grpc_port": grpc, "metrics_port": metrics}


def make_config(repo: Path, tmp_path: Path, **kw: object) -> ServerConfig:
    kw.setdefault("startup_timeout_s", 60.0)
    return ServerConfig(model_repository=repo, log_file=tmp_path / "server.log", **free_ports(), **kw)


def assert_no_processes(pgid: int | None) -> None:
    assert pgid is not None
    deadline = time.monotonic() + 5
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _group_members(pgid) == [], "processes left in the server's group"
    with pytest.raises(ProcessLookupError):
        os.kill(pgid, 0)


def test_backend_dir_is_built_and_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if INSTALL.source != "pytriton":
        pytest.skip("backend dir is only assembled for the nvidia-pytriton wheel")
    monkeypatch.setenv("MTASR_CACHE_DIR", str(tmp_path / "cache"))
    install = find_tritonserver()
    stub = install.backend_dir / "python" / STUB_NAME
    assert install.backend_dir.is_relative_to(tmp_path / "cache")
    assert stub.exists() and os.access(stub, os.X_OK)
    assert (install.backend_dir / "python" / "libtriton_python.so").exists()
    assert any((d / "libtritonserver").exists() or list(d.glob("libtritonserver*")) for d in install.lib_dirs)
    stub.unlink()  # a damaged cache entry is rebuilt
    again = find_tritonserver()
    assert again.backend_dir == install.backend_dir and stub.exists()


def test_start_infer_stop(tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    repo = write_model(tmp_path / "repo")
    server = TritonServer(make_config(repo, tmp_path))
    t0 = time.monotonic()
    with server:
        startup_s = time.monotonic() - t0
        print(f"tritonserver ready in {startup_s:.2f} s")
        assert server.is_running()
        assert server.url("http") == f"http://127.0.0.1:{server.port('http')}"
        members = _group_members(server.pid)
        assert server.pid in members and len(members) >= 2, "stub should run in the server's group"

        x = np.array([[1.0, 2.0, 3.5]], dtype=np.float32)
        expected_text = f"{sys.prefix}|{np.__version__}".encode()

        http = httpclient.InferenceServerClient(url=server.address("http"))
        assert http.is_server_ready() and http.is_model_ready("add_one")
        inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = http.infer("add_one", [inp])
        np.testing.assert_allclose(res.as_numpy("OUTPUT0"), x + 1)
        assert res.as_numpy("TEXT").tolist() == [[expected_text]]
        http.close()

        grpc = grpcclient.InferenceServerClient(url=server.address("grpc"))
        ginp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
        ginp.set_data_from_numpy(x)
        gres = grpc.infer("add_one", [ginp])
        np.testing.assert_allclose(gres.as_numpy("OUTPUT0"), x + 1)
        assert gres.as_numpy("TEXT").tolist() == [[expected_text]]
        grpc.close()

        with socket.create_connection(("127.0.0.1", server.port("metrics")), timeout=5):
            pass
    assert server.returncode == 0
    assert_no_processes(server.pid)
    assert "successfully loaded 'add_one'" in server.log_path.read_text()


def test_free_ports_asked_for_together_are_distinct_and_bindable() -> None:
    for _ in range(50):  # one port handed out twice broke a CI run when ports were asked for singly
        ports = find_free_ports(3)
        assert len(set(ports)) == 3
        assert all(port_taken("127.0.0.1", port) is None for port in ports)


def test_port_in_use_fails_fast(tmp_path: Path) -> None:
    repo = write_model(tmp_path / "repo")
    cfg = make_config(repo, tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", cfg.grpc_port))
        holder.listen()
        server = TritonServer(cfg)
        t0 = time.monotonic()
        with pytest.raises(ServerStartError, match=rf"grpc port {cfg.grpc_port} .*already in use"):
            server.start()
        assert time.monotonic() - t0 < 5
    assert server.pid is None  # nothing was spawned


def test_model_syntax_error_names_model(tmp_path: Path) -> None:
    repo = write_model(tmp_path / "repo", model_py=MODEL_PY.format(init_sleep=0) + "\ndef broken(:\n")
    server = TritonServer(make_config(repo, tmp_path, startup_timeout_s=60))
    t0 = time.monotonic()
    with pytest.raises(ServerStartError) as info:
        server.start()
    assert time.monotonic() - t0 < 60
    msg = str(info.value)
    assert "exited with code" in msg
    assert re.search(r"failed to load 'add_one'.*SyntaxError", msg), msg
    assert not server.is_running()
    assert_no_processes(server.pid)


def test_initialize_exception_is_reported(tmp_path: Path) -> None:
    model_py = MODEL_PY.format(init_sleep=0).replace(
        "time.sleep(0)", "raise RuntimeError('weights file missing: /models/enc.onnx')"
    )
    repo = write_model(tmp_path / "repo", name="asr", model_py=model_py)
    server = TritonServer(make_config(repo, tmp_path))
    with pytest.raises(ServerStartError) as info:
        server.start()
    assert re.search(r"failed to load 'asr'.*weights file missing: /models/enc\.onnx", str(info.value))
    assert_no_processes(server.pid)


def test_a_failed_start_keeps_its_temp_log_and_names_it(tmp_path: Path) -> None:
    repo = write_model(tmp_path / "repo", model_py=MODEL_PY.format(init_sleep=0) + "\ndef broken(:\n")
    server = TritonServer(ServerConfig(model_repository=repo, **free_ports()))  # log_file None: a temp file
    with pytest.raises(ServerStartError) as info:
        server.start()
    try:
        assert f"Last lines of {server.log_path}" in str(info.value)
        assert "SyntaxError" in server.log_path.read_text()
    finally:
        server.log_path.unlink()


def test_unparsable_config_names_model(tmp_path: Path) -> None:
    repo = write_model(tmp_path / "repo", name="bad", config='backend: "python"\nmax_batch_size: oops {\n')
    server = TritonServer(make_config(repo, tmp_path))
    with pytest.raises(ServerStartError) as info:
        server.start()
    msg = str(info.value)
    assert re.search(r"model directory 'bad'.*config\.pbtxt", msg), msg
    assert "Expected integer" in msg
    assert_no_processes(server.pid)


def test_startup_timeout_stops_server(tmp_path: Path) -> None:
    repo = write_model(tmp_path / "repo", name="slow", model_py=MODEL_PY.format(init_sleep=300))
    server = TritonServer(make_config(repo, tmp_path, startup_timeout_s=6))
    t0 = time.monotonic()
    with pytest.raises(ServerStartError, match="not ready within 6 s") as info:
        server.start()
    assert time.monotonic() - t0 < 30
    assert "slow" in str(info.value)
    assert_no_processes(server.pid)


def test_serve_forever_stops_on_sigterm(tmp_path: Path) -> None:
    repo = write_model(tmp_path / "repo")
    ports = free_ports()
    code = textwrap.dedent(
        f"""
        import sys
        from mtasr.server import ServerConfig
        from mtasr.supervisor import serve_forever
        sys.exit(serve_forever(ServerConfig(model_repository={str(repo)!r}, http_port={ports["http_port"]},
                 grpc_port={ports["grpc_port"]}, metrics_port={ports["metrics_port"]})))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()  # blocks until ready (or the child fails)
        m = re.search(r"pid (\d+)", first)
        assert m, first + proc.stderr.read()
        server_pid = int(m.group(1))
        rest = "".join(proc.stdout.readline() for _ in range(4))
        assert f"http://127.0.0.1:{ports['http_port']}" in rest
        assert f"grpc://127.0.0.1:{ports['grpc_port']}" in rest
        log = Path(re.search(r"log\s+(\S+)", rest).group(1))
        assert log.is_file()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_no_processes(server_pid)
    assert "warning" not in proc.stdout.read()  # loopback only: nothing to warn about
    assert not log.exists(), "a clean stop leaves no temp log behind"
    # The log is echoed to the end, its shutdown lines too, though the file is gone.
    assert "successfully unloaded 'add_one'" in proc.stderr.read()


def test_banner_on_every_interface_lists_each_address_and_warns_of_no_authentication(tmp_path: Path) -> None:
    """`--host 0.0.0.0`: the banner names every address the server answers on, not 127.0.0.1 alone,
    and warns that inference is open to anyone who can reach it (no server needed to check the text)."""
    from mtasr.supervisor import ready_banner

    ports = free_ports()
    server = TritonServer(ServerConfig(model_repository=tmp_path, host="0.0.0.0", **ports))
    banner = ready_banner(server)
    http_line = next(line for line in banner.splitlines() if line.strip().startswith("HTTP"))
    hosts = re.findall(rf"http://([\d.]+):{ports['http_port']}", http_line)
    assert "127.0.0.1" in hosts
    for host in hosts:  # each is an address of this machine
        with socket.socket() as s:
            s.bind((host, 0))
    ip = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True) if shutil.which("ip") else None
    if ip is not None and ip.returncode == 0:
        reported = set(re.findall(r"inet ([\d.]+)/", ip.stdout))
        assert set(hosts) <= reported  # one address per interface (secondary addresses may be left out)
        assert any(not h.startswith("127.") for h in hosts) == any(not h.startswith("127.") for h in reported)
    assert re.search(r"warning: listening on 0\.0\.0\.0.*no authentication", banner, re.DOTALL), banner
    assert "warning" not in ready_banner(TritonServer(ServerConfig(model_repository=tmp_path, **ports)))


# ------------------------------------------------------------------------------ restricted APIs


def http_post(url: str, body: bytes = b"{}", headers: dict[str, str] | None = None) -> int:
    """POST like a browser page could (text/plain, foreign Origin: no CORS preflight); the status."""
    import urllib.error
    import urllib.request

    all_headers = {"Content-Type": "text/plain", "Origin": "http://attacker.example", **(headers or {})}
    request = urllib.request.Request(url, data=body, method="POST", headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_repository_api_refuses_unload_and_code_loading_without_the_admin_key(tmp_path: Path) -> None:
    """Explicit model control (what `mtasr serve` runs) without the key: unload, a load whose `file:`
    override would run code, logging and shared-memory requests are refused on HTTP and gRPC, while
    inference carries on. The operator's key opens the repository API."""
    import base64
    import json

    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from mtasr.server import RESTRICTED_APIS

    assert {"model-repository", "shared-memory", "logging"} <= set(RESTRICTED_APIS)
    marker = tmp_path / "code-ran"
    evil = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('pwned')\n" + MODEL_PY.format(init_sleep=0)
    load_body = json.dumps(
        {
            "parameters": {
                "config": json.dumps({"name": "evil", "backend": "python", "max_batch_size": 8}),
                "file:1/model.py": base64.b64encode(evil.encode()).decode(),
            }
        }
    ).encode()
    repo = write_model(tmp_path / "repo")
    key = "operator-key-0123456789"
    server = TritonServer(make_config(repo, tmp_path, load_models=["add_one"], admin_key=key))
    with server:
        base = server.url("http")
        assert http_post(f"{base}/v2/repository/models/add_one/unload") == 403
        assert http_post(f"{base}/v2/repository/models/evil/load", load_body) == 403
        assert http_post(f"{base}/v2/repository/index", headers={"mtasr-admin-key": "wrong-key-0123456789"}) == 403
        assert http_post(f"{base}/v2/logging", b'{"log_verbose_level": 1}') == 403
        assert http_post(f"{base}/v2/systemsharedmemory/region/x/register", b'{"key": "/x", "byte_size": 8}') == 403

        grpc = grpcclient.InferenceServerClient(server.address("grpc"))
        for refused in (
            lambda: grpc.unload_model("add_one"),
            lambda: grpc.load_model("evil", config=load_body.decode(), files={"file:1/model.py": evil.encode()}),
            lambda: grpc.register_system_shared_memory("x", "/x", 8),
        ):
            with pytest.raises(InferenceServerException, match="restricted"):
                refused()

        assert grpc.is_model_ready("add_one")
        x = np.array([[1.0, 2.0]], dtype=np.float32)
        data = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
        data.set_data_from_numpy(x)
        np.testing.assert_allclose(grpc.infer("add_one", [data]).as_numpy("OUTPUT0"), x + 1)
        assert grpc.get_model_config("add_one", as_json=True)["config"]["name"] == "add_one"  # clients read it

        # The operator's key opens them, on both protocols.
        assert server.admin_key == key
        assert http_post(f"{base}/v2/repository/index", headers=server.admin_headers("http")) == 200
        index = grpc.get_model_repository_index(headers=server.admin_headers("grpc"), as_json=True)
        assert [m["name"] for m in index["models"]] == ["add_one"]
        grpc.close()
    assert not marker.exists(), "the load request ran its code"


def test_a_weak_admin_key_is_refused_before_anything_starts(tmp_path: Path) -> None:
    server = TritonServer(make_config(write_model(tmp_path / "repo"), tmp_path, admin_key="short"))
    with pytest.raises(ServerStartError, match=r"admin key \(\$MTASR_ADMIN_KEY\) must be at least 16 characters"):
        server.start()
    assert server.pid is None
