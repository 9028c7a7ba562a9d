"""Reading `.nemo` checkpoints: check what they are before spending minutes loading them."""

from __future__ import annotations

import hashlib
import importlib
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ASR_CLASS = "nemo.collections.asr.models.multitalker_asr_models.EncDecMultiTalkerRNNTBPEModel"
DIARIZER_CLASS = "nemo.collections.asr.models.sortformer_diar_models.SortformerEncLabelModel"


# NeMo's bpe tokenizer folder holds both; .nemo archives store them with a hash prefix.
TOKENIZER_FILES = ("tokenizer.model", "vocab.txt")


class ExportError(Exception):
    """A problem the user can fix (bad path, wrong checkpoint, unsupported setting): one clear line."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    target: str
    sha256: str
    config: dict[str, Any]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _members(archive: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    return {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}


def inspect_checkpoint(path: Path, role: str, expected_class: str) -> CheckpointInfo:
    """Read the config inside a `.nemo` and check its model class; raise ExportError otherwise."""
    if not path.exists():
        raise ExportError(f"{role} checkpoint not found: {path}")
    if not path.is_file():
        raise ExportError(f"{role} checkpoint is not a file: {path}")
    try:
        with tarfile.open(path) as archive:
            member = _members(archive).get("model_config.yaml")
            if member is None:
                raise ExportError(f"{role} checkpoint {path} has no model_config.yaml: not a .nemo archive")
            config = yaml.safe_load(archive.extractfile(member).read()) or {}
    except tarfile.TarError as err:
        raise ExportError(f"{role} checkpoint {path} is not a .nemo archive ({err})") from None
    target = str(config.get("target", "unknown"))
    check_model_class(target, expected_class, role, path)
    return CheckpointInfo(path=path, target=target, sha256=sha256_of(path), config=config)


def check_model_class(target: str, expected_class: str, role: str, path: Any) -> None:
    """`target` names `expected_class`, a path it is re-exported under, or a subclass of it.

    NeMo records the path the class was saved under (`nemo.collections.asr.models.X` or the defining
    module, or a user's subclass); the exact path is accepted without importing anything."""
    if target == expected_class:
        return
    expected_name = expected_class.rsplit(".", 1)[-1]
    found, expected = _import_class(target), _import_class(expected_class)
    if found is None:
        raise ExportError(
            f"{role} checkpoint {path} holds {target}, which does not import here; expected {expected_name} "
            "or a subclass of it"
        )
    if expected is None or not (isinstance(found, type) and issubclass(found, expected)):
        raise ExportError(f"{role} checkpoint {path} holds {target}, which is not {expected_name} or a subclass of it")


def _import_class(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    if not module:
        return None
    try:  # importing the module is what NeMo's restore_from does with the same path
        return getattr(importlib.import_module(module), name, None)
    except Exception:
        return None


def extract_tokenizer(path: Path, out_dir: Path) -> None:
    """Copy the SentencePiece model and vocabulary out of an ASR `.nemo` into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    missing = set(TOKENIZER_FILES)
    with tarfile.open(path) as archive:
        for name, member in _members(archive).items():
            for wanted in TOKENIZER_FILES:
                if name == wanted or name.endswith("_" + wanted):
                    (out_dir / wanted).write_bytes(archive.extractfile(member).read())
                    missing.discard(wanted)
    if missing:
        raise ExportError(f"ASR checkpoint {path} lacks tokenizer files: {', '.join(sorted(missing))}")


def load_model(info: CheckpointInfo):
    """Restore the NeMo model on CPU in eval mode."""
    from nemo.core.classes.modelPT import ModelPT

    model = ModelPT.restore_from(str(info.path), map_location="cpu")
    return model.eval()
