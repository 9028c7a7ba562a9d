"""The `mtasr` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _export(args: argparse.Namespace) -> int:
    from mtasr.deployment import ServingSettings
    from mtasr.export.checkpoints import ExportError
    from mtasr.export.pipeline import ExportSettings, run_export

    try:
        settings = ExportSettings(
            right_context=args.right_context,
            max_streams_per_batch=args.max_streams,
            graph_instances=args.instances,
            intra_op_threads=args.threads,
            tensorrt=args.tensorrt,
            int8=args.int8,
            stage_instances=args.stage_instances,
            max_sequences=args.max_sequences,
            serving=ServingSettings(
                sequence_idle_s=args.idle_timeout,
                max_chunk_s=args.max_chunk_seconds,
                graph_backend=args.graph_backend,
                all_slots_active=args.all_slots_active,
            ),
        )
        if args.random:
            from mtasr.random_models import build_random_pair

            checkpoints = args.checkpoints or args.output.with_name(args.output.name + "-checkpoints")
            asr_path, diar_path = build_random_pair(args.random, checkpoints)
        else:
            if not (args.asr and args.diarizer):
                raise ExportError("give --asr and --diarizer checkpoints, or --random tiny|full")
            asr_path, diar_path = args.asr, args.diarizer
        run_export(asr_path, diar_path, args.output, settings, overwrite=args.overwrite)
    except (ExportError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _serve(args: argparse.Namespace) -> int:
    import logging
    import os

    from mtasr.deployment import load_manifest, models_to_load
    from mtasr.server import ENV_ADMIN_KEY, ServerConfig, serve_forever

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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s mtasr serve %(levelname)s: %(message)s")
    return serve_forever(config, grace_s=args.grace_period)


def build_parser() -> argparse.ArgumentParser:
    from mtasr.server import ADMIN_KEY_HEADER, DEFAULT_GRACE_S, ENV_ADMIN_KEY, RESTRICTED_APIS

    parser = argparse.ArgumentParser(
        prog="mtasr", description="Streaming multi-talker speech recognition served by NVIDIA Triton."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    export = sub.add_parser(
        "export",
        help="convert .nemo checkpoints to ONNX graphs and a Triton model repository",
        description="Export a multitalker ASR .nemo and a Streaming Sortformer .nemo to ONNX graphs, a manifest, "
        "a Triton model repository (ONNX Runtime in python-backend models) and the TensorRT variant with "
        "its engine build script. Writes OUTPUT/model_repository and OUTPUT/tensorrt.",
    )
    export.add_argument("--asr", type=Path, help="multitalker ASR checkpoint (.nemo, EncDecMultiTalkerRNNTBPEModel)")
    export.add_argument("--diarizer", type=Path, help="Streaming Sortformer checkpoint (.nemo)")
    export.add_argument(
        "--random",
        choices=["tiny", "full"],
        help="instead of checkpoints, build a random-initialised pair: tiny (tests) or full (released geometry: "
        "0.6B ASR, Sortformer v2) and export it",
    )
    export.add_argument(
        "--checkpoints", type=Path, help="where --random saves its .nemo files (default: OUTPUT-checkpoints)"
    )
    export.add_argument("--output", "-o", type=Path, required=True, help="output folder")
    export.add_argument(
        "--right-context",
        type=int,
        default=13,
        help="encoder lookahead frames (0, 1, 6, 13 = 0.08, 0.16, 0.56, 1.12 s latency); must be one the "
        "checkpoint supports (default: 13)",
    )
    export.add_argument(
        "--max-streams",
        type=int,
        default=8,
        help="streams per batched graph call; ASR graphs take 4x as many speaker instances (default: 8)",
    )
    export.add_argument("--instances", type=int, default=1, help="Triton instances per graph model (default: 1)")
    export.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads, 0 = all cores")
    export.add_argument(
        "--stage-instances", type=int, default=1, help="Triton instances per stateful stage model (default: 1)"
    )
    export.add_argument(
        "--max-sequences", type=int, default=1024, help="streams open at once per stage instance (default: 1024)"
    )
    export.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        help="seconds after which a stream that sent nothing is dropped and its state freed (default: 60)",
    )
    export.add_argument(
        "--max-chunk-seconds",
        type=float,
        default=0.0,
        help="longest audio one request may carry; 0 = two chunks, at least 1 s (default: 0)",
    )
    export.add_argument(
        "--graph-backend",
        choices=["triton", "onnxruntime"],
        default="onnxruntime",
        help="how the stages run the graphs: ONNX Runtime in the stage process (fastest on CPU), or calls to the "
        "graph models through Triton (what the TensorRT variant does) (default: onnxruntime)",
    )
    export.add_argument("--tensorrt", action="store_true", help="also build TensorRT engines here (needs TensorRT)")
    export.add_argument(
        "--int8",
        action="store_true",
        help="int8 dynamic quantisation of the encoder and diarizer weights (ONNX Runtime quantize_dynamic); smaller "
        "and faster on CPU, at an accuracy cost. Writes no TensorRT variant, and does not combine with --tensorrt",
    )
    export.add_argument(
        "--all-slots-active",
        action="store_true",
        help="benchmarking: run the ASR for every speaker slot every chunk, whatever the diarizer says (the "
        "worst-case load; random-weight diarizers activate speakers regardless of the audio)",
    )
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    export.set_defaults(func=_export)

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

    from mtasr import bench
    from mtasr.client import score, transcribe
    from mtasr.training import cli as training_cli

    transcribe.add_parser(sub)
    score.add_parser(sub)
    training_cli.add_parsers(sub)
    bench.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
