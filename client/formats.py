"""Transcript files: SegLST JSON, NIST RTTM and STM, and a readable text form.

A *segment* is a plain dict in SegLST form (the server's `TRANSCRIPT` output, see docs/protocol.md,
the id and tensors)::

    {"session_id": "meeting1", "speaker": "speaker_0", "start_time": 1.2, "end_time": 3.4, "words": "hello there"}

Every reader returns a list of such dicts (RTTM segments have `"words": ""`) and raises
`FormatError`, naming the file and line, on anything it cannot parse. Writers take any iterable of
segments. Times are seconds; files are UTF-8.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Segment = dict[str, Any]

SEGLST_KEYS = ("session_id", "speaker", "start_time", "end_time", "words")

# File name endings of each format, longest first (a stem is the name without one of them).
SEGLST_SUFFIX = ".seglst.json"
RTTM_SUFFIX = ".rttm"
STM_SUFFIX = ".stm"
_KNOWN_SUFFIXES = (SEGLST_SUFFIX, ".json", RTTM_SUFFIX, STM_SUFFIX, ".txt")


class FormatError(ValueError):
    """A transcript file that is missing, unreadable or not in the format its name says."""


def make_segment(session_id: str, speaker: str, start_time: float, end_time: float, words: str = "") -> Segment:
    """One segment in SegLST form (keys in SegLST's order)."""
    return {
        "session_id": str(session_id),
        "speaker": str(speaker),
        "start_time": float(start_time),
        "end_time": float(end_time),
        "words": words,
    }


def file_stem(path: Path) -> str:
    """`path`'s name without its transcript ending: `a/b.seglst.json` -> `b`, `b.rttm` -> `b`."""
    name = Path(path).name
    for suffix in _KNOWN_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def group_by_session(segments: Iterable[Segment]) -> dict[str, list[Segment]]:
    """Segments per session id, each session's in their original order (sessions in order of first use)."""
    sessions: dict[str, list[Segment]] = {}
    for seg in segments:
        sessions.setdefault(seg["session_id"], []).append(seg)
    return sessions


def _read_text(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise FormatError(f"{path}: cannot read: {err}") from None


def _time(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise FormatError(f"{where}: time {value!r} is not a number")
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise FormatError(f"{where}: time {value!r} is not a number") from None
    if not math.isfinite(t):
        raise FormatError(f"{where}: time {value!r} is not finite")
    return t


def _check_interval(start: float, end: float, where: str) -> None:
    if start < 0 or end < start:
        raise FormatError(f"{where}: bad interval [{start}, {end}] (need 0 <= start <= end)")


def safe_session_id(name: str) -> str:
    """`name` as a session id every format can hold: whitespace runs become `_` (RTTM and STM are
    whitespace-separated), so `my meeting` -> `my_meeting`."""
    return re.sub(r"\s+", "_", name.strip()) or "_"


def _check_field(value: str, what: str) -> str:
    """A session id or speaker for a whitespace-separated format (RTTM, STM)."""
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"{what} {value!r} cannot be written to a whitespace-separated file")
    return value


# --- SegLST -------------------------------------------------------------------------------------


def read_seglst(path: Path) -> list[Segment]:
    """A SegLST JSON file: a list of segments, each with all of `SEGLST_KEYS`.

    Session ids and speakers are read as strings (a numeric session id such as a Triton sequence
    id becomes its decimal string); extra keys are kept.
    """
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise FormatError(f"{path}: not JSON ({err})") from None
    if not isinstance(data, list):
        raise FormatError(f"{path}: SegLST must be a JSON list of segments, got {type(data).__name__}")
    segments = []
    for i, item in enumerate(data):
        where = f"{path}: segment {i}"
        if not isinstance(item, dict):
            raise FormatError(f"{where}: not an object")
        missing = [key for key in SEGLST_KEYS if key not in item]
        if missing:
            raise FormatError(f"{where}: missing {', '.join(missing)}")
        if not isinstance(item["words"], str):
            raise FormatError(f"{where}: words must be a string")
        seg = dict(item)
        seg["session_id"] = str(item["session_id"])
        seg["speaker"] = str(item["speaker"])
        seg["start_time"] = _time(item["start_time"], where)
        seg["end_time"] = _time(item["end_time"], where)
        _check_interval(seg["start_time"], seg["end_time"], where)
        segments.append(seg)
    return segments


def write_seglst(segments: Iterable[Segment], path: Path) -> None:
    """Write segments as a SegLST JSON list (UTF-8, one segment per line)."""
    items = [json.dumps(seg, ensure_ascii=False) for seg in segments]
    body = "[\n" + ",\n".join(items) + "\n]\n" if items else "[]\n"
    Path(path).write_text(body, encoding="utf-8")


# --- RTTM ---------------------------------------------------------------------------------------


def read_rttm(path: Path) -> list[Segment]:
    """The SPEAKER lines of a NIST RTTM file as segments with empty words.

    A line is `SPEAKER <file> <channel> <onset> <duration> <ortho> <stype> <name> <conf> [<slat>]`;
    `<file>` becomes the session id and `<name>` the speaker. Other line types (SPKR-INFO, ...)
    and `;;` comments are skipped.
    """
    segments = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith(";;") or fields[0] != "SPEAKER":
            continue
        where = f"{path}: line {number}"
        if len(fields) < 8:
            raise FormatError(f"{where}: SPEAKER line needs at least 8 fields, got {len(fields)}")
        onset = _time(fields[3], where)
        duration = _time(fields[4], where)
        _check_interval(onset, onset + duration, where)
        segments.append(make_segment(fields[1], fields[7], onset, round(onset + duration, 6)))
    return segments


def write_rttm(segments: Iterable[Segment], path: Path) -> None:
    """Write one RTTM SPEAKER line per segment: file id = session id, channel 1, onset, duration, speaker.

    Times get millisecond precision. Raises ValueError for a session id or speaker with whitespace.
    """
    lines = []
    for seg in segments:
        session = _check_field(str(seg["session_id"]), "session id")
        speaker = _check_field(str(seg["speaker"]), "speaker")
        start, end = float(seg["start_time"]), float(seg["end_time"])
        lines.append(f"SPEAKER {session} 1 {start:.3f} {end - start:.3f} <NA> <NA> {speaker} <NA> <NA>\n")
    Path(path).write_text("".join(lines), encoding="utf-8")


# --- STM ----------------------------------------------------------------------------------------


def read_stm(path: Path) -> list[Segment]:
    """STM reference lines `<file> <channel> <speaker> <begin> <end> [<label>] <transcript>` as segments.

    `<file>` becomes the session id. `;;` comments are skipped, as are `inter_segment_gap` lines
    (STM's marker for untranscribed time). An optional `<...>` label field is dropped; the
    transcript is the rest of the line with whitespace normalised (it may be empty).
    """
    segments = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith(";;"):
            continue
        where = f"{path}: line {number}"
        if len(fields) < 5:
            raise FormatError(f"{where}: STM line needs at least 5 fields, got {len(fields)}")
        session, _channel, speaker = fields[:3]
        if speaker.lower() == "inter_segment_gap":
            continue
        start, end = _time(fields[3], where), _time(fields[4], where)
        _check_interval(start, end, where)
        words = fields[5:]
        if words and words[0].startswith("<") and words[0].endswith(">"):
            words = words[1:]
        segments.append(make_segment(session, speaker, start, end, " ".join(words)))
    return segments


def write_stm(segments: Iterable[Segment], path: Path) -> None:
    """Write one STM line per segment (channel 1, no label), sorted by session and start time as STM expects."""
    ordered = sorted(segments, key=lambda s: (str(s["session_id"]), float(s["start_time"]), str(s["speaker"])))
    lines = []
    for seg in ordered:
        session = _check_field(str(seg["session_id"]), "session id")
        speaker = _check_field(str(seg["speaker"]), "speaker")
        words = " ".join(str(seg["words"]).split())
        lines.append(f"{session} 1 {speaker} {float(seg['start_time']):.3f} {float(seg['end_time']):.3f} {words}")
    Path(path).write_text("".join(line.rstrip() + "\n" for line in lines), encoding="utf-8")


# --- any of them, and text ----------------------------------------------------------------------


def read_transcript(path: Path) -> list[Segment]:
    """Read a transcript file by its ending: `.json` (SegLST, incl. `.seglst.json`), `.stm` or `.rttm`."""
    name = Path(path).name.lower()
    if name.endswith(".json"):
        return read_seglst(path)
    if name.endswith(STM_SUFFIX):
        return read_stm(path)
    if name.endswith(RTTM_SUFFIX):
        return read_rttm(path)
    raise FormatError(f"{path}: unknown transcript format (expected .seglst.json, .json, .stm or .rttm)")


def format_time(seconds: float) -> str:
    """`mm:ss.ss` (minutes keep counting past 59): 75.5 -> `01:15.50`."""
    centis = round(seconds * 100)
    minutes, centis = divmod(centis, 6000)
    return f"{minutes:02d}:{centis // 100:02d}.{centis % 100:02d}"


def readable_transcript(segments: Iterable[Segment]) -> str:
    """One line per segment in time order: `[mm:ss.ss-mm:ss.ss] speaker: words` (empty string for none)."""
    ordered = sorted(segments, key=lambda s: (float(s["start_time"]), float(s["end_time"]), str(s["speaker"])))
    return "".join(
        f"[{format_time(float(s['start_time']))}-{format_time(float(s['end_time']))}] {s['speaker']}: {s['words']}\n"
        for s in ordered
    )
