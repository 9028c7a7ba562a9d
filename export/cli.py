"""`mtasr export`: its command-line parser and handler (imported only when that subcommand runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtasr.deployment import ServingSettings
from mtasr.export.kv_cache import CHANNEL_CACHES
from mtasr.export.pipeline import ExportSettings
from mtasr.gating import SPEAKER_CONDITIONINGS
from mtasr.graph_io import PRE_ENCODE_MODES

_DEFAULTS = ExportSettings()
_SERVING = ServingSettings()


def run(args: argparse.Namespace) -> int:
    from mtasr.export.checkpoints import ExportError
    from mtasr.export.pipeline import run_export

    try:
        if args.int8_graphs and not args.int8:
            raise ExportError("--int8-graphs needs --int8")
        settings = ExportSettings(
            right_context=args.right_context,
            max_streams_per_batch=args.max_streams,
            graph_instances=args.instances,
            intra_op_threads=args.threads,
            max_queue_delay_us=args.max_queue_delay_us,
            tensorrt=args.tensorrt,
            int8=args.int8,
            int8_graphs=tuple(args.int8_graphs.split(",")) if args.int8_graphs else _DEFAULTS.int8_graphs,
            encoder_cache=args.encoder_cache,
            pre_encode=args.pre_encode,
            graph_rewrites=not args.nemo_graphs,
            diarizer_cache=args.diarizer_cache,
            stage_instances=args.stage_instances,
            max_sequences=args.max_sequences,
            serving=ServingSettings(
                sequence_idle_s=args.idle_timeout,
                max_chunk_s=args.max_chunk_seconds,
                graph_backend=args.graph_backend,
                all_slots_active=args.all_slots_active,
                nemo_background_mask=args.nemo_background_mask,
                speaker_conditioning=args.speaker_conditioning,
                binary_speaker_masks=args.binary_speaker_masks,
                gating_chunks=args.gating_chunks,
            ),
        )
        if args.random:
            from mtasr.export.random_models import build_random_pair

            checkpoints = args.checkpoints or args.output.with_name(args.output.name + "-checkpoints")
            asr_path, diar_path = build_random_pair(args.random, checkpoints)
        else:
            if not (args.asr and args.diarizer):
                raise ExportError("give --asr and --diarizer checkpoints, or --random tiny|shrunk|full")
            asr_path, diar_path = args.asr, args.diarizer
        run_export(asr_path, diar_path, args.output, settings, overwrite=args.overwrite)
    except (ExportError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def diarizer_cache(value: str) -> tuple[int, int] | None:
    """--diarizer-cache: `script`, `checkpoint` or SPKCACHE,FIFO frames."""
    from mtasr.export.compatibility import NEMO_SCRIPT_DIARIZER_CACHE

    if value == "script":
        return NEMO_SCRIPT_DIARIZER_CACHE
    if value == "checkpoint":
        return None
    try:
        spkcache, fifo = (int(n) for n in value.split(","))
    except ValueError:
        message = f"expected script, checkpoint or SPKCACHE,FIFO (two integers), got {value!r}"
        raise argparse.ArgumentTypeError(message) from None
    return spkcache, fifo


def add_parser(sub) -> argparse.ArgumentParser:
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
        choices=["tiny", "shrunk", "full"],
        help="instead of checkpoints, build a random-initialised pair: tiny (tests), full (released geometry: "
        "0.6B ASR, Sortformer v2) or shrunk (the released geometry with one layer per stack) and export it",
    )
    export.add_argument(
        "--checkpoints", type=Path, help="where --random saves its .nemo files (default: OUTPUT-checkpoints)"
    )
    export.add_argument("--output", "-o", type=Path, required=True, help="output folder")
    export.add_argument(
        "--right-context",
        type=int,
        default=_DEFAULTS.right_context,
        help="encoder lookahead frames (0, 1, 6, 13 = 0.08, 0.16, 0.56, 1.12 s latency); must be one the "
        f"checkpoint supports (default: {_DEFAULTS.right_context})",
    )
    export.add_argument(
        "--diarizer-cache",
        type=diarizer_cache,
        default="script",
        metavar="script|checkpoint|SPKCACHE,FIFO",
        help="diarizer speaker-cache and FIFO frames to serve: NeMo's multitalker script sets "
        f"{','.join(map(str, _DEFAULTS.diarizer_cache))} at run time whatever the checkpoint says (script, the "
        "default); checkpoint keeps the checkpoint's own; or two numbers",
    )
    export.add_argument(
        "--max-streams",
        type=int,
        default=_DEFAULTS.max_streams_per_batch,
        help="streams per batched graph call; ASR graphs take 4x as many speaker instances "
        f"(default: {_DEFAULTS.max_streams_per_batch})",
    )
    export.add_argument(
        "--instances",
        type=int,
        default=_DEFAULTS.graph_instances,
        help=f"Triton instances per graph model (default: {_DEFAULTS.graph_instances})",
    )
    export.add_argument(
        "--threads",
        type=int,
        default=_DEFAULTS.intra_op_threads,
        help="ONNX Runtime intra-op threads of each serving process that runs graphs; 0 (default): the "
        "machine's cores shared between the diarization and ASR stages in proportion to what each cost per chunk "
        "when the export timed them on the bundled conversation (on 2 cores: one each when they cost alike)",
    )
    export.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=_DEFAULTS.max_queue_delay_us,
        help="how long Triton's batchers wait for more requests to batch, in microseconds "
        f"(default: {_DEFAULTS.max_queue_delay_us})",
    )
    export.add_argument(
        "--stage-instances",
        type=int,
        default=_DEFAULTS.stage_instances,
        help=f"Triton instances per stateful stage model (default: {_DEFAULTS.stage_instances})",
    )
    export.add_argument(
        "--max-sequences",
        type=int,
        default=_DEFAULTS.max_sequences,
        help=f"streams open at once per stage instance (default: {_DEFAULTS.max_sequences})",
    )
    export.add_argument(
        "--idle-timeout",
        type=float,
        default=_SERVING.sequence_idle_s,
        help="seconds after which a stream that sent nothing is dropped and its state freed "
        f"(default: {_SERVING.sequence_idle_s:g})",
    )
    export.add_argument(
        "--max-chunk-seconds",
        type=float,
        default=_SERVING.max_chunk_s,
        help=f"longest audio one request may carry; 0 = two chunks, at least 1 s (default: {_SERVING.max_chunk_s:g})",
    )
    export.add_argument(
        "--graph-backend",
        choices=["triton", "onnxruntime"],
        default=_SERVING.graph_backend,
        help="how the stages run the graphs: ONNX Runtime in the stage process (fastest on CPU), or calls to the "
        f"graph models through Triton (what the TensorRT variant does) (default: {_SERVING.graph_backend})",
    )
    export.add_argument("--tensorrt", action="store_true", help="also build TensorRT engines here (needs TensorRT)")
    export.add_argument(
        "--int8",
        action="store_true",
        help="int8 dynamic quantisation of every graph's weights (ONNX Runtime quantize_dynamic); smaller "
        "and faster on CPU, at an accuracy cost. Writes no TensorRT variant, and does not combine with --tensorrt",
    )
    export.add_argument(
        "--int8-graphs",
        metavar="LIST",
        help="with --int8: the graphs to quantise, comma-separated, of "
        f"{','.join(_DEFAULTS.int8_graphs)} (default: all); e.g. pre_encoder,encoder,decoder keeps the diarizer "
        "and the joint, where int8 moved the default pair's tokens most, in fp32",
    )
    export.add_argument(
        "--encoder-cache",
        choices=CHANNEL_CACHES,
        default=_DEFAULTS.encoder_cache,
        help="what the encoder's attention caches between chunks: 'kv' its projected keys and values, so a chunk "
        "projects only its own frames (default), or 'input' its layer inputs, as NeMo does; the same tokens",
    )
    export.add_argument(
        "--pre-encode",
        choices=PRE_ENCODE_MODES,
        default=_DEFAULTS.pre_encode,
        help="where the encoder's subsampling front end runs: 'stream' once per stream, in its own graph, since "
        "every speaker of a stream hears the same features (default), or 'speaker' in the encoder graph for "
        "every speaker, as NeMo does; the same tokens",
    )
    export.add_argument(
        "--nemo-graphs",
        action="store_true",
        help="benchmarking: trace NeMo's modules as they are, without the rewrites that give the same values "
        "with less work (export/graph_rewrites.py: front-end masks, attention masks, depthwise convolutions, "
        "cache stacking)",
    )
    export.add_argument(
        "--all-slots-active",
        action="store_true",
        help="benchmarking: run the ASR for every speaker slot every chunk, whatever the diarizer says (the "
        "worst-case load; random-weight diarizers activate speakers regardless of the audio)",
    )
    export.add_argument(
        "--nemo-background-mask",
        action="store_true",
        help="comparison with NeMo's script: build a speaker's background mask from list positions as NeMo 3.0 "
        "does, instead of from the other active speaker ids (the fix served by default; docs/protocol.md)",
    )
    export.add_argument(
        "--speaker-conditioning",
        choices=SPEAKER_CONDITIONINGS,
        default=_SERVING.speaker_conditioning,
        help="how the encoder is told which speaker to transcribe, NeMo's script's masked_asr: 'kernels' "
        "(masked_asr=False: the diarizer's masks feed the speaker kernels; default) or 'masked' (masked_asr=True, "
        "the script's own default: each speaker's features are masked, the kernels get all ones)",
    )
    export.add_argument(
        "--binary-speaker-masks",
        action="store_true",
        help="give the speaker kernels the diarizer's probabilities thresholded at 0.5, as the ASR saw its reference "
        "masks in training (NeMo's binary_diar_preds=True); default: the probabilities themselves (the script's "
        "default)",
    )
    export.add_argument(
        "--gating-chunks",
        type=int,
        default=_SERVING.gating_chunks,
        help="a speaker slot gets an ASR instance while the diarizer heard it in the last N chunks (NeMo's "
        "cache_gating_buffer_size; default %(default)s, as NeMo). More keeps a speaker who pauses decoding longer, so "
        "the words the encoder's look-ahead still holds come out, at the cost of ASR work on its silence",
    )
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    export.set_defaults(func=run)
    return export
