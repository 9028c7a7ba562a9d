"""`mtasr transcribe FILE...`: stream audio files to the server, write per-speaker transcripts.

Per input file, in --output-dir: `<stem>.seglst.json` (SegLST, session_id = the file's stem with
whitespace replaced by `_`, which RTTM and STM need), `<stem>.rttm` (who spoke when) and
`<stem>.txt` (readable, one line per segment). A file that cannot be read or transcribed is
reported and skipped; an output that cannot be written is reported and the others are still
written; the other files are still transcribed, and the exit code says something failed (1). A
server that cannot be reached stops everything at once (2). Files are read and resampled as they
stream, a few seconds at a time: client memory does not grow with the recording's length.
"""

from __future__ import annotations

import argparse
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mtasr.client.audio import AudioError, open_audio
from mtasr.client.stream import StreamError, StreamingClient, Transcript, Update


@dataclass
class FileResult:
    source: str
    outputs: list[Path]
    #: What went wrong, one line per problem (reading, streaming, or each output not written).
    error: str | None = None
    words: int = 0
    audio_s: float = 0.0


def output_stem(source: str) -> str:
    return "stdin" if source == "-" else Path(source).stem


def write_outputs(transcript: Transcript, stem: str, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Write the three outputs, each on its own: the paths written, and one error line per output that was not."""
    from mtasr.client.formats import (
        RTTM_SUFFIX,
        SEGLST_SUFFIX,
        readable_transcript,
        safe_session_id,
        write_rttm,
        write_seglst,
    )

    segments = [dict(seg, session_id=safe_session_id(stem)) for seg in transcript.seglst]
    writers = [
        (out_dir / f"{stem}{SEGLST_SUFFIX}", write_seglst),
        (out_dir / f"{stem}{RTTM_SUFFIX}", write_rttm),
        (out_dir / f"{stem}.txt", lambda segs, path: Path(path).write_text(readable_transcript(segs))),
    ]
    written, errors = [], []
    for path, write in writers:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(segments, path)
        except (OSError, ValueError) as err:
            errors.append(f"cannot write {path}: {err}")
        else:
            written.append(path)
    return written, errors


class LiveLines:
    """Prints each speaker's new words as they arrive (one file at a time, on a terminal)."""

    def __init__(self, stem: str, write) -> None:
        self.stem, self.write = stem, write

    def __call__(self, update: Update) -> None:
        by_speaker: dict[str, list[str]] = {}
        for word in update.words:
            by_speaker.setdefault(word.speaker, []).append(word.text)
        for speaker, words in by_speaker.items():
            self.write(f"{self.stem} {speaker}: {' '.join(words)}")


def transcribe_file(
    client: StreamingClient, source: str, out_dir: Path, realtime: bool, live: LiveLines | None
) -> FileResult:
    stem = output_stem(source)
    try:
        audio = open_audio(source, client.settings().sample_rate)
    except AudioError as err:
        return FileResult(source, [], str(err))
    unreadable: list[AudioError] = []
    read_s = 0.0

    def blocks_until_unreadable():
        # A file that breaks part way through ends its stream there (the last block sent carries
        # END), so the server frees the stream at once; the file is then reported as failed.
        nonlocal read_s
        try:
            for block in audio.blocks():
                read_s += len(block) / audio.sample_rate
                yield block
        except AudioError as err:
            unreadable.append(err)

    try:
        transcript = client.transcribe(blocks_until_unreadable(), realtime=realtime, on_update=live)
    except StreamError as err:
        return FileResult(source, [], f"{source}: {err} ({len(err.final_words)} words were final before that)")
    if unreadable:
        return FileResult(source, [], f"{unreadable[0]} (after {read_s:.1f} s of it; nothing written)")
    written, errors = write_outputs(transcript, stem, out_dir)
    return FileResult(
        source,
        written,
        "\n".join(f"{source}: {e}" for e in errors) or None,
        words=len(transcript.words),
        audio_s=audio.seconds,
    )


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "transcribe",
        help="stream audio files to a running server and write per-speaker transcripts",
        description="Stream WAV/FLAC/OGG files (any rate and channel count; resampled to the server's rate, "
        "mono) to a running `mtasr serve` and write, per file, <stem>.seglst.json, <stem>.rttm and "
        "<stem>.txt into --output-dir. '-' reads one file from standard input.",
    )
    parser.add_argument("files", nargs="+", help="audio files, or - for standard input")
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc", help="default: grpc (streaming)")
    parser.add_argument("--url", help="server address host:port (default: 127.0.0.1:8001 for grpc, :8000 for http)")
    parser.add_argument("--jobs", "-j", type=int, default=1, help="files streamed at once (default: 1)")
    parser.add_argument("--realtime", action="store_true", help="send audio at its real pace, as a live source")
    parser.add_argument("--output-dir", "-o", type=Path, default=Path("transcripts"), help="default: ./transcripts")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server (default: 10)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no live lines or progress bar")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.jobs < 1:
        print("error: --jobs must be at least 1", file=sys.stderr)
        return 2
    stems = [output_stem(f) for f in args.files]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        print(f"error: several inputs would write the same outputs: {', '.join(clashes)}", file=sys.stderr)
        return 2
    client = StreamingClient(args.url, args.protocol, timeout_s=args.timeout)
    try:
        client.settings()
    except StreamError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    bar = tqdm(total=len(args.files), unit="file", disable=args.quiet, file=sys.stderr, leave=False)
    lock = threading.Lock()

    def report(line: str) -> None:
        with lock:
            bar.write(line, file=sys.stderr)

    show_live = not args.quiet and args.jobs == 1 and sys.stdout.isatty()

    def one(source: str) -> FileResult:
        live = LiveLines(output_stem(source), report) if show_live else None
        result = transcribe_file(client, source, args.output_dir, args.realtime, live)
        with lock:
            bar.update(1)
        return result

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(one, args.files))
    bar.close()
    failed = [r for r in results if r.error]
    for r in results:
        for line in r.error.splitlines() if r.error else []:
            print(f"error: {line}", file=sys.stderr)
        if r.outputs and not args.quiet:
            print(f"{r.source}: {r.words} words, {r.audio_s:.1f} s -> {', '.join(str(p) for p in r.outputs)}")
    return 1 if failed else 0
