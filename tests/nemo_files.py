"""Edited copies of `.nemo` archives: checkpoints saved with another setting, without training one."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import yaml


def with_config(nemo: Path, out: Path, change: Callable[[dict], object]) -> Path:
    """A copy of the `.nemo` archive `nemo` whose model_config.yaml `change(config)` has edited."""
    with tarfile.open(nemo) as source, tarfile.open(out, "w") as target:
        for member in source.getmembers():
            data = source.extractfile(member).read() if member.isfile() else None
            if Path(member.name).name == "model_config.yaml":
                config = yaml.safe_load(data)
                change(config)
                data = yaml.safe_dump(config).encode()
                member.size = len(data)
            target.addfile(member, io.BytesIO(data) if data is not None else None)
    return out
