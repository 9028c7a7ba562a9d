"""The package's shape: no import cycle, a runtime that imports only the runtime, and `mtasr serve` and the
Triton python-backend models working with only the folder NVIDIA's container mounts (`mtasr/`) on the path."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _package_dirs() -> dict[str, Path]:
    """Import name -> folder, from pyproject's package-dir (one import root: the stage folders are subpackages)."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {name: ROOT / folder for name, folder in setuptools["package-dir"].items()}


def _modules() -> dict[str, Path]:
    modules = {}
    for package, folder in _package_dirs().items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            if any(p.startswith(".") or p == "templates" for p in parts):
                continue
            modules[".".join([package, *parts])] = path
    return modules


MODULES = _modules()


def imported_names(name: str, path: Path) -> set[str]:
    """Every name `path` imports, anywhere in it (function-level imports too), as absolute dotted names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def internal_imports(name: str, path: Path) -> set[str]:
    """The package's own modules that `name` imports (`from mtasr import x` counts as mtasr.x)."""
    found = set()
    for imported in imported_names(name, path):
        while imported and imported not in MODULES:
            imported = imported.rpartition(".")[0]
        if imported and imported != name and imported != "mtasr":
            found.add(imported)
    return found


GRAPH = {name: internal_imports(name, path) for name, path in MODULES.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    assert len(GRAPH) > 50  # every module of every subpackage was read
    assert find_cycles(GRAPH) == []


def _model_shims() -> list[Path]:
    shims = sorted((ROOT / "model_repository").glob("*/1/model.py"))
    assert shims, "the committed model repository has python-backend models"
    return shims


# What `mtasr serve` and the Triton python-backend models import: the serve subcommand of the lazy
# command line, the server launcher, and the models' shims.
RUNTIME_ROOTS = ("mtasr.cli", "mtasr.server", "mtasr.triton.stage_model", "mtasr.triton.graph_model")
# Third-party packages the runtime may import: the four the GPU container installs, Triton's own module, and
# psutil, which only `TritonServer.rss_mb` (a tools' method) imports, when called.
RUNTIME_THIRD_PARTY = {
    "numpy",
    "onnxruntime",
    "sentencepiece",
    "threadpoolctl",
    "triton_python_backend_utils",
    "psutil",
}


def runtime_closure() -> tuple[set[str], set[str]]:
    """(the package's modules, the top-level third-party names) reachable from the runtime's roots."""
    roots = set(RUNTIME_ROOTS)
    for shim in _model_shims():
        roots |= internal_imports("model", shim)
    seen: set[str] = set()
    todo = sorted(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(GRAPH[name] - seen)
    stdlib = sys.stdlib_module_names | {"__future__"}
    external = set()
    for name in seen:
        for imported in imported_names(name, MODULES[name]):
            top = imported.split(".")[0]
            if top and top != "mtasr" and top not in stdlib:
                external.add(top)
    return seen, external


def test_the_runtime_imports_only_the_runtime():
    modules, external = runtime_closure()
    assert "mtasr.stages" in modules and "mtasr.server" in modules
    # Only modules of the runtime folder: no bench, training, client or export module.
    runtime_folder = ROOT / "mtasr"
    assert {m for m in modules if not MODULES[m].is_relative_to(runtime_folder)} == set()
    assert {m for m in modules if m.startswith(("mtasr.bench", "mtasr.bench.nemo_streaming"))} == set()
    assert external <= RUNTIME_THIRD_PARTY, external - RUNTIME_THIRD_PARTY


def _bare_python(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """A python that sees only a copy of `mtasr/` and the venv's third-party packages: `-S` skips site, so no
    .pth file (the editable install's finder, which maps mtasr.client & co. to their folders) runs."""
    shutil.copytree(ROOT / "mtasr", tmp_path / "mtasr", ignore=shutil.ignore_patterns("__pycache__"))
    site_packages = sysconfig.get_paths()["purelib"]
    env = {"PYTHONPATH": f"{tmp_path}:{site_packages}", "PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"}
    return [sys.executable, "-S"], env


def test_serve_and_the_backend_models_need_only_the_mounted_folder(tmp_path):
    python, env = _bare_python(tmp_path)
    probe = subprocess.run(
        [*python, "-c", "import mtasr.client"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert probe.returncode != 0, "the bare interpreter must not see the other subpackages"

    out = subprocess.run(
        [*python, "-m", "mtasr.cli", "serve", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "model_repository" in out.stdout
    out = subprocess.run(
        [*python, "-m", "mtasr.cli", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr

    code = "\n".join(
        [
            "import importlib.util, sys",
            "for path in sys.argv[1:]:",
            "    spec = importlib.util.spec_from_file_location('model', path)",
            "    module = importlib.util.module_from_spec(spec)",
            "    spec.loader.exec_module(module)",
            "    assert module.TritonPythonModel",
            "bad = ('mtasr.client', 'mtasr.export', 'mtasr.training', 'mtasr.bench', 'mtasr.server', 'nemo', 'torch')",
            "print(sorted(m for m in sys.modules if m.startswith(bad)))",
        ]
    )
    shims = [str(p) for p in _model_shims()]
    out = subprocess.run(
        [*python, "-c", code, *shims], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["export", "serve", "transcribe", "score", "train", "evaluate", "demo", "bench"])
def test_the_static_subcommand_table_matches_each_module(name):
    """`mtasr --help` lists the subcommands from cli.SUBCOMMANDS without importing them; each line there must
    be the help its module registers."""
    import argparse

    from mtasr.cli import SUBCOMMANDS, build_parser

    parser = build_parser([name])
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    (choice,) = [c for c in action._choices_actions if c.dest == name]
    assert choice.help == SUBCOMMANDS[name][2]
    assert action.choices[name]._actions[1:]  # registered in full: it has options


def _closure(*roots: str) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(GRAPH[name] - seen)
    return seen


def test_the_client_takes_only_wire_names_from_the_runtime():
    """The streaming client needs the ensemble's name and its tensors: `mtasr.protocol`, not the stages."""
    runtime = {m for m in MODULES if MODULES[m].parent == ROOT / "mtasr"}
    assert _closure("mtasr.client.stream", "mtasr.client.audio") & runtime == {"mtasr.protocol"}


def test_the_protocol_imports_nothing():
    assert imported_names("mtasr.protocol", MODULES["mtasr.protocol"]) <= {"__future__", "__future__.annotations"}


def test_the_client_public_api():
    import mtasr.client

    assert sorted(mtasr.client.__all__) == ["StreamError", "StreamingClient", "Transcript", "Update", "load_audio"]
    assert all(hasattr(mtasr.client, name) for name in mtasr.client.__all__)
