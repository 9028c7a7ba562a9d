"""README's main job: start Triton on the default models, stream a conversation, print per-speaker transcripts.

Serves the committed default repository (`model_repository/`: the small model pair the project
trains itself, `mtasr train defaults`) with the real tritonserver, streams the bundled 3-speaker
conversation (`mtasr/data/demo_conversation.flac`, with overlapping turns) chunk by chunk through
the `multitalker_asr` ensemble over gRPC, prints each speaker's words as they arrive, then the
final per-speaker transcript next to the reference and its cpWER / DER.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def print_update(update) -> None:
    """One line per chunk that completed words: the chunk's time and each word with its speaker."""
    if update.words:
        words = " ".join(f"[{w.speaker}] {w.text}" for w in update.words)
        print(f"  chunk {update.index:3d}: {words}", flush=True)


def score_against_reference(seglst: list[dict], reference_path: Path, work_dir: Path):
    """cpWER and DER (`mtasr score`'s overall SessionScore) of one transcript against its SegLST reference."""
    from mtasr.client.formats import SEGLST_SUFFIX, make_segment, read_seglst, write_seglst
    from mtasr.client.score import score

    for side in ("hyp", "ref"):
        (work_dir / side).mkdir(parents=True, exist_ok=True)
    reference = [{**s, "session_id": "demo"} for s in read_seglst(reference_path)]
    write_seglst(reference, work_dir / "ref" / f"demo{SEGLST_SUFFIX}")
    hypothesis = [make_segment("demo", s["speaker"], s["start_time"], s["end_time"], s["words"]) for s in seglst]
    write_seglst(hypothesis, work_dir / "hyp" / f"demo{SEGLST_SUFFIX}")
    return score(work_dir / "hyp", work_dir / "ref").overall


DESCRIPTION = "start Triton on the default models, stream a conversation, print per-speaker transcripts"


def add_parser(sub) -> argparse.ArgumentParser:
    from mtasr import DEMO_CONVERSATION
    from mtasr.training.defaults import DEFAULT_REPOSITORY

    parser = sub.add_parser("demo", help=DESCRIPTION, description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--audio", type=Path, default=DEMO_CONVERSATION, help="a conversation (any rate, mono or not)")
    parser.add_argument("--realtime", action="store_true", help="send one chunk per chunk duration, as a live call")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from mtasr.client.audio import load_audio
    from mtasr.client.formats import SEGLST_SUFFIX, read_seglst, readable_transcript
    from mtasr.client.stream import StreamingClient
    from mtasr.server import TritonServer, local_server_config

    if not (args.model_repository / "manifest.json").is_file():
        print(
            f"error: {args.model_repository} holds no exported models (mtasr train defaults --install)", file=sys.stderr
        )
        return 2

    print(f"starting tritonserver on {args.model_repository}", flush=True)
    with TritonServer(local_server_config(args.model_repository)) as server:
        client = StreamingClient(server.address("grpc"))
        audio = load_audio(str(args.audio), client.settings().sample_rate)
        print(
            f"streaming {args.audio.name} ({len(audio) / client.settings().sample_rate:.1f} s) "
            f"in {client.settings().chunk_samples / client.settings().sample_rate:.2f} s chunks",
            flush=True,
        )
        transcript = client.transcribe(audio, on_update=print_update, realtime=args.realtime)

    print("\nper-speaker transcript:")
    print(readable_transcript(transcript.seglst), end="")
    reference_path = args.audio.with_suffix(SEGLST_SUFFIX)
    if reference_path.is_file():
        print("\nreference:")
        print(readable_transcript(read_seglst(reference_path)), end="")
        overall = score_against_reference(transcript.seglst, reference_path, Path("artifacts/demo"))
        print(
            f"\ncpWER {100 * overall.cpwer.rate:.1f} % ({overall.cpwer.errors}/{overall.cpwer.length} words), "
            f"DER {100 * overall.der.rate:.1f} %"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m mtasr.client.demo [options]`, the same as `mtasr demo [options]`."""
    from mtasr.cli import main as cli_main

    return cli_main(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
