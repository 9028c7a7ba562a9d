"""The `mtasr` command line: one entry point, one subcommand per job.

Lazy on purpose: `mtasr serve` runs inside NVIDIA's Triton container, where only the runtime folder
(`mtasr/`) is on the path. Each subcommand's parser and handler live in its own module, which is
imported only when that subcommand is chosen; `mtasr --help` lists them from the table below.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Iterable
from pathlib import Path

# name: (module, the function there that registers the subcommand, its one-line help).
# tests/test_cli.py checks each help against the one its module registers.
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "export": (
        "mtasr.export.cli",
        "add_parser",
        "convert .nemo checkpoints to ONNX graphs and a Triton model repository",
    ),
    "serve": ("mtasr.cli", "add_serve_parser", "run tritonserver on an exported model repository"),
    "transcribe": (
        "mtasr.client.transcribe",
        "add_parser",
        "stream audio files to a running server and write per-speaker transcripts",
    ),
    "score": ("mtasr.client.score", "add_parser", "score transcripts against references: cpWER, tcpWER, DER"),
    "train": ("mtasr.training.cli", "add_train_parser", "train the models in NeMo on simulated conversations"),
    "evaluate": (
        "mtasr.training.cli",
        "add_evaluate_parser",
        "WER/cpWER/DER of a model repository on the evaluation set (served)",
    ),
    "demo": (
        "mtasr.client.demo",
        "add_parser",
        "start Triton on the default models, stream a conversation, print per-speaker transcripts",
    ),
    "bench": (
        "mtasr.bench.run",
        "add_parser",
        "benchmark the served pipeline (perf_analyzer) against NeMo's PyTorch streaming loop",
    ),
}


def _serve(args: argparse.Namespace) -> int:
    import os

    from mtasr.deployment import load_manifest, models_to_load
    from mtasr.server import ENV_ADMIN_KEY, ServerConfig
    from mtasr.supervisor import serve_forever

    if not (args.model_repository / "manifest.json").is_file() and not args.any_repository:
        print(
            f"error: {args.model_repository} is not an exported model repository (no manifest.json)",
            file=sys.stderr,
        )
        return 2
    manifest = {} if args.any_repository else load_manifest(args.model_repository)
    config = ServerConfig(
        model_repository=args.model_repository,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        startup_timeout_s=args.startup_timeout,
        load_models=[] if args.any_repository or args.all_models else models_to_load(manifest),
        log_file=args.log_file,
        # From the environment, not a flag: a flag would show in every user's process list.
        admin_key=os.environ.get(ENV_ADMIN_KEY) or None,
    )
    # The supervisor says on stderr, beside the server's own log, why it restarted or stopped the server.
    for handler in logging.getLogger("mtasr").handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s mtasr serve %(levelname)s: %(message)s"))
    return serve_forever(config, grace_s=args.grace_period)


def add_serve_parser(sub) -> argparse.ArgumentParser:
    from mtasr.server import ADMIN_KEY_HEADER, ENV_ADMIN_KEY, RESTRICTED_APIS
    from mtasr.supervisor import DEFAULT_GRACE_S

    serve = sub.add_parser(
        "serve",
        help="run tritonserver on an exported model repository",
        description="Start the real tritonserver (the nvidia-pytriton wheel's, or the one on PATH inside NVIDIA's "
        "container) on a model repository, wait until it is ready, restart it within seconds when it or a stage "
        "process dies or stops answering, and stop it gracefully on Ctrl-C/SIGTERM. The "
        f"{', '.join(RESTRICTED_APIS)} APIs need the header {ADMIN_KEY_HEADER} with the key in ${ENV_ADMIN_KEY} "
        "(at least 16 characters); without it they are closed to everyone.",
    )
    serve.add_argument("model_repository", type=Path, help="e.g. OUTPUT/model_repository from `mtasr export`")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for readiness")
    serve.add_argument("--any-repository", action="store_true", help="serve a repository without manifest.json")
    serve.add_argument(
        "--log-file",
        type=Path,
        help="keep the server's log here (default: a temp file, removed after a clean stop; it is echoed to stderr)",
    )
    serve.add_argument(
        "--all-models",
        action="store_true",
        help="also load the graph models when the stages run the graphs themselves (default: only what is used)",
    )
    serve.add_argument(
        "--grace-period",
        type=float,
        default=DEFAULT_GRACE_S,
        metavar="SECONDS",
        help="on SIGTERM/Ctrl-C, new streams are refused and open streams get this long to end before the server "
        f"stops (default: {DEFAULT_GRACE_S:g}; a second signal stops at once)",
    )
    serve.set_defaults(func=_serve)
    return serve


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand in `commands` (default: all) registered in full; the others
    appear by name and help only, and their modules are not imported."""
    full = set(SUBCOMMANDS if commands is None else commands)
    parser = argparse.ArgumentParser(
        prog="mtasr", description="Streaming multi-talker speech recognition served by NVIDIA Triton."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, register, help_) in SUBCOMMANDS.items():
        if name in full:
            getattr(importlib.import_module(module), register)(sub)
        else:
            sub.add_parser(name, help=help_)
    return parser


class _ProgressFormatter(logging.Formatter):
    """One line per message, named by its module: `[export.pipeline] loading ...`."""

    def format(self, record: logging.LogRecord) -> str:
        return f"[{record.name.removeprefix('mtasr.')}] {record.getMessage()}"


def configure_logging() -> None:
    """The tooling's progress (export, training, bench) on stderr; other libraries' loggers are left alone."""
    log = logging.getLogger("mtasr")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_ProgressFormatter())
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    configure_logging()
    chosen = [argv[0]] if argv and argv[0] in SUBCOMMANDS else []
    args = build_parser(chosen).parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
