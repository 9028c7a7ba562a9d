"""Find a runnable ``tritonserver`` and the backend directory that goes with it.

Two installations are supported: NVIDIA's Triton container (``tritonserver`` on PATH and
``/opt/tritonserver/backends``) and the binary that ships in the ``nvidia-pytriton`` wheel. The
wheel keeps the python-backend stub apart from the backend (one stub per Python version), so
:func:`find_tritonserver` assembles a backend directory with the stub that matches this
interpreter, once, in a user cache directory.

Standard library only.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ENV_BACKEND_DIR",
    "ENV_BINARY",
    "ENV_CACHE_DIR",
    "STUB_NAME",
    "SYSTEM_BACKEND_DIR",
    "TritonInstall",
    "TritonNotFoundError",
    "find_tritonserver",
    "pytriton_root",
    "user_cache_dir",
]

#: Where NVIDIA's Triton container keeps its backends.
SYSTEM_BACKEND_DIR = Path("/opt/tritonserver/backends")
#: Environment variable naming a tritonserver binary to use instead of searching.
ENV_BINARY = "MTASR_TRITONSERVER"
#: Environment variable naming the backend directory that goes with ``MTASR_TRITONSERVER``.
ENV_BACKEND_DIR = "MTASR_TRITON_BACKEND_DIR"
#: Environment variable overriding the cache directory (default ``$XDG_CACHE_HOME/mtasr``).
ENV_CACHE_DIR = "MTASR_CACHE_DIR"
#: The python-backend stub's file name (in the backend directory's python/, and its processes' argv[0]).
STUB_NAME = "triton_python_backend_stub"


class TritonNotFoundError(RuntimeError):
    """No usable tritonserver installation was found."""


@dataclass(frozen=True)
class TritonInstall:
    """Everything needed to run one tritonserver installation.

    ``lib_dirs`` go on the child's LD_LIBRARY_PATH: the wheel's binaries find their bundled
    libraries through an ``$ORIGIN``-relative RPATH, which does not hold for copies made when
    symlinks are not possible, and the stub needs ``libpython`` of this interpreter.
    """

    binary: Path
    backend_dir: Path
    lib_dirs: tuple[Path, ...] = ()
    source: str = "system"  # "system", "pytriton" or "env"
    version: str | None = None


def user_cache_dir() -> Path:
    """The per-user cache root for mtasr (respects MTASR_CACHE_DIR and XDG_CACHE_HOME)."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mtasr"


def _python_libdirs() -> list[Path]:
    """Directories holding this interpreter's libpython, which the python-backend stub links."""
    libdir = sysconfig.get_config_var("LIBDIR")
    pattern = f"libpython{sys.version_info.major}.{sys.version_info.minor}*.so*"
    if libdir and any(Path(libdir).glob(pattern)):
        return [Path(libdir)]
    return []


def pytriton_root() -> Path | None:
    """The installed ``pytriton`` package folder, found without importing it (import is slow)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _link_or_copy(src: Path, dst: Path) -> None:
    """Symlink ``dst`` to ``src``; copy where the filesystem refuses symlinks."""
    try:
        os.symlink(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _backends_complete(backend_dir: Path, src_backends: Path) -> bool:
    """True when every file of the wheel's backends (and the stub) is present and resolvable."""
    if not (backend_dir / "python" / STUB_NAME).exists():  # exists() follows symlinks
        return False
    for src in src_backends.rglob("*"):
        if "__pycache__" in src.parts or src.is_dir():
            continue
        if not (backend_dir / src.relative_to(src_backends)).exists():
            return False
    return True


def _build_backend_dir(src_backends: Path, stub: Path, target: Path) -> None:
    """Create ``target``: the wheel's backends/ with the stub added to python/ (caller holds the lock).

    Built beside the target and renamed into place, so a half-built directory is never used.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private
        for src in sorted(src_backends.rglob("*")):
            if "__pycache__" in src.parts:
                continue
            dst = tmp / src.relative_to(src_backends)
            if src.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(src.resolve(), dst)
        (tmp / "python").mkdir(exist_ok=True)
        _link_or_copy(stub.resolve(), tmp / "python" / STUB_NAME)
        if target.exists() or target.is_symlink():  # stale or broken: replace it
            shutil.rmtree(target, ignore_errors=True)
        os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _pytriton_install() -> TritonInstall | None:
    """The tritonserver inside the nvidia-pytriton wheel, with a backend dir holding our stub."""
    root = pytriton_root()
    if root is None:
        return None
    dist = root / "tritonserver"
    binary = dist / "bin" / "tritonserver"
    if not binary.is_file():
        return None
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / py / STUB_NAME
    if not stub.is_file():
        have = sorted(p.name for p in (dist / "python_backend_stubs").glob("*"))
        raise TritonNotFoundError(
            f"the nvidia-pytriton wheel at {root} has no python-backend stub for Python {py} "
            f"(it has: {', '.join(have) or 'none'}); run with one of those Python versions"
        )
    try:
        version = importlib.metadata.version("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    # One cache entry per wheel location: two venvs with the same version must not share links.
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:10]
    backend_dir = user_cache_dir() / "triton-backends" / f"pytriton-{version}-py{py}-{tag}" / "backends"
    src_backends = dist / "backends"
    if not _backends_complete(backend_dir, src_backends):
        try:
            backend_dir.parent.mkdir(parents=True, exist_ok=True)
            # Serialise builders (parallel test workers, two servers starting at once).
            with open(backend_dir.parent / ".lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not _backends_complete(backend_dir, src_backends):
                    _build_backend_dir(src_backends, stub, backend_dir)
        except OSError as exc:
            raise TritonNotFoundError(f"could not assemble the Triton backend directory {backend_dir}: {exc}") from exc
    lib_dirs = [root.parent / "nvidia_pytriton.libs", dist / "external_libs", *_python_libdirs()]
    return TritonInstall(
        binary=binary,
        backend_dir=backend_dir,
        lib_dirs=tuple(d for d in lib_dirs if d.is_dir()),
        source="pytriton",
        version=version,
    )


def find_tritonserver() -> TritonInstall:
    """Locate a runnable tritonserver and the backend directory to pass it.

    Order: ``$MTASR_TRITONSERVER`` (with ``$MTASR_TRITON_BACKEND_DIR``), then ``tritonserver`` on
    PATH with ``/opt/tritonserver/backends`` (NVIDIA's container, which has the GPU backends),
    then the nvidia-pytriton wheel. Raises :class:`TritonNotFoundError` saying what was tried.
    """
    tried = []
    env_bin = os.environ.get(ENV_BINARY)
    if env_bin:
        binary = Path(env_bin).expanduser()
        backend_dir = Path(os.environ.get(ENV_BACKEND_DIR) or binary.resolve().parent.parent / "backends")
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            raise TritonNotFoundError(f"${ENV_BINARY}={env_bin} is not an executable file")
        if not backend_dir.is_dir():
            raise TritonNotFoundError(f"backend directory {backend_dir} does not exist (set ${ENV_BACKEND_DIR})")
        return TritonInstall(binary=binary, backend_dir=backend_dir, source="env")

    on_path = shutil.which("tritonserver")
    if on_path:
        binary = Path(on_path)
        for backend_dir in (SYSTEM_BACKEND_DIR, binary.resolve().parent.parent / "backends"):
            if backend_dir.is_dir():
                return TritonInstall(binary=binary, backend_dir=backend_dir, source="system")
        tried.append(f"tritonserver on PATH ({binary}) but no {SYSTEM_BACKEND_DIR}")
    else:
        tried.append("no tritonserver on PATH")

    install = _pytriton_install()
    if install is not None:
        return install
    tried.append("no nvidia-pytriton wheel with pytriton/tritonserver/bin/tritonserver")
    raise TritonNotFoundError(
        "tritonserver not found: "
        + "; ".join(tried)
        + ". Install it with `pip install nvidia-pytriton==0.7.0` (CPU, python backend) or run inside "
        "NVIDIA's Triton container, or point $MTASR_TRITONSERVER at a binary."
    )
