"""README stays short, links only files in the repository, and every command it shows still works as written."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def readme_commands() -> list[list[str]]:
    """The `mtasr ...` lines of README's bash blocks, as argument lists (comments dropped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.DOTALL):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "mtasr":
                commands.append(words[1:])
    return commands


def test_readme_is_short_and_links_only_files_in_the_repository():
    assert len(README.encode()) <= 10_500
    assert "../" not in README and "DESIGN.md" not in README
    links = re.findall(r"\]\(([^)]+)\)", README)
    assert links
    for link in links:
        assert not link.startswith(("http:", "https:", "/")), link
        assert (ROOT / link.split("#")[0]).exists(), link


def test_readme_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"^make (\w+)", README, re.MULTILINE):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target


def test_readme_commands_parse_as_written():
    """Each documented command line is accepted by the parser (nothing runs)."""
    from mtasr.cli import build_parser

    commands = readme_commands()
    assert {c[0] for c in commands} >= {"export", "serve", "transcribe", "score", "demo", "bench", "train"}
    parser = build_parser()
    for args in commands:
        assert callable(parser.parse_args(args).func), args


@pytest.mark.parametrize("subcommand", sorted({c[0] for c in readme_commands()}))
def test_each_readme_subcommand_answers_help(subcommand):
    out = subprocess.run(
        [sys.executable, "-m", "mtasr.cli", subcommand, "--help"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: mtasr {subcommand}")


def test_the_readme_client_example_imports():
    (example,) = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
    first = example.splitlines()[0]
    assert first.startswith("from mtasr.client import")
    exec(compile(first, "README.md", "exec"), {})
