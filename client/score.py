"""Score transcripts against references: cpWER, tcpWER and DER, per session and overall.

    mtasr score HYPOTHESIS REFERENCE [--collar 0.25] [--tcp-collar 5] [--json report.json] [--format table|json]

HYPOTHESIS is a SegLST JSON file (the server's `TRANSCRIPT`, or `transcribe`'s `<stem>.seglst.json`)
or a `transcribe` output folder (every `*.seglst.json` in it). REFERENCE is a file or a folder of
reference transcripts, `*.seglst.json` / `*.json` (SegLST) or `*.stm`, and speaker turns, `*.rttm`.

Pairing. A hypothesis file's segments are matched to reference sessions by their `session_id`
when every one of them is a reference session; otherwise the whole file (it must then hold at most
one session id, e.g. a Triton sequence id) is the reference session named like the file's stem
(`meeting1.seglst.json` -> session `meeting1`, or the one session of the reference file
`meeting1.stm`). One hypothesis file against one reference file holding one session pairs them
whatever their names. A hypothesis session with no reference is an error (`ScoreError`); reference
sessions with no hypothesis are listed in the report (`unmatched_references`) and not scored.

Metrics (error counts are summed over sessions for the overall row; rates are never averaged):

- cpWER, concatenated minimum-permutation WER (meeteval `cpwer`): each speaker's words are
  concatenated and reference and hypothesis speakers are matched by the permutation with the fewest
  errors, so speaker labels need not agree (`speaker_0` may be reference speaker `B`). Word times
  are ignored. Errors = substitutions + deletions + insertions, over the reference word count.
- tcpWER, time-constrained cpWER (meeteval `tcpwer`): like cpWER, but a hypothesis word can only
  match a reference word that it overlaps in time once the hypothesis word is widened by
  `tcp_collar` seconds on each side (default 5 s, the CHiME-8 setting). Segments carry no per-word
  times, so meeteval spreads each segment's words over it by character count (reference words as
  intervals, hypothesis words as points), its defaults. A right word at the wrong time counts as
  one deletion plus one insertion; swapping speaker labels alone costs nothing (the permutation is
  still free).
- DER, diarization error rate, from speaker turns: missed speech + false alarm + speaker confusion,
  over the scored speaker time (each reference speaker's talk time, summed), with the optimal
  one-to-one speaker mapping (so label swaps cost nothing either). `collar` seconds (default 0.25)
  on *each side* of every reference turn boundary are not scored, which is NIST md-eval's `-c`
  convention. The scored region runs from the reference's first turn start to its last turn end
  (md-eval's default when no UEM is given), so hypothesis speech outside it is not a false alarm.
  Reference turns come from the session's `*.rttm` when the reference has one, else from its
  transcript segments; hypothesis turns from the `<stem>.rttm` beside the hypothesis SegLST when
  there is one, else from its segments. Same-speaker turns that overlap or touch are merged.

Why pyannote.metrics computes DER, not meeteval's md-eval: meeteval 0.4.3's `md_eval_22` runs NIST
`md-eval-22.pl`, which its package does not ship: on first use it downloads the script from GitHub,
which fails offline. Debian's `sctk` package ships the same script (`md-eval.pl`, version 22), but
its report prints times as `=   9.00 secs` where meeteval's parser expects `=9.000000 secs` (the
format of the copy meeteval downloads), so meeteval cannot read it either. `diarization_errors`
therefore uses pyannote.metrics (pure Python) for the speaker mapping (Hungarian, on overlap time)
and the error times, and sets up what md-eval does around it: the no-score collars around each
reference turn as given, a scored region spanning the reference, and the mapping chosen over that
whole span, collars included. (pyannote's own `DiarizationErrorRate(collar=...)` differs: its collar is
the total width centred on a boundary, and it maps speakers on the collar-free region only, which
can give less confusion than md-eval.) On random turn sets with overlapping
speech, the result equals md-eval v22's to its printed precision (tests/test_score.py checks this
where Debian's `md-eval.pl` is installed).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtasr.client.formats import (
    RTTM_SUFFIX,
    SEGLST_SUFFIX,
    STM_SUFFIX,
    FormatError,
    Segment,
    file_stem,
    group_by_session,
    read_rttm,
    read_transcript,
)

DEFAULT_COLLAR = 0.25
DEFAULT_TCP_COLLAR = 5.0
# meeteval's text normalisers that need no extra package.
NORMALIZERS = ("lower,rm(.?!,)", "lower,rm([^a-z0-9 ])")


class ScoreError(Exception):
    """Inputs that cannot be scored: a missing path, or a session that cannot be paired."""


# --- results ------------------------------------------------------------------------------------


def _rate(errors: float, total: float) -> float | None:
    return errors / total if total > 0 else None


@dataclass(frozen=True)
class WordErrors:
    """Word error counts of one session (or a sum of sessions); the rate is errors / reference words."""

    errors: int
    length: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def rate(self) -> float | None:
        return _rate(self.errors, self.length)

    def __add__(self, other: WordErrors) -> WordErrors:
        return WordErrors(
            self.errors + other.errors,
            self.length + other.length,
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "error_rate": self.rate,
            "errors": self.errors,
            "length": self.length,
            "substitutions": self.substitutions,
            "deletions": self.deletions,
            "insertions": self.insertions,
        }


@dataclass(frozen=True)
class DiarizationErrors:
    """Diarization error times in seconds; each rate is that time over the scored speaker time."""

    scored: float
    missed: float
    false_alarm: float
    confusion: float

    @property
    def errors(self) -> float:
        return self.missed + self.false_alarm + self.confusion

    @property
    def rate(self) -> float | None:
        return _rate(self.errors, self.scored)

    def part(self, name: str) -> float | None:
        """`missed`, `false_alarm` or `confusion` as a fraction of the scored speaker time."""
        return _rate(getattr(self, name), self.scored)

    def __add__(self, other: DiarizationErrors) -> DiarizationErrors:
        return DiarizationErrors(
            self.scored + other.scored,
            self.missed + other.missed,
            self.false_alarm + other.false_alarm,
            self.confusion + other.confusion,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "error_rate": self.rate,
            "scored_speaker_time": round(self.scored, 6),
            "missed_speaker_time": round(self.missed, 6),
            "false_alarm_time": round(self.false_alarm, 6),
            "speaker_confusion_time": round(self.confusion, 6),
            "missed_rate": self.part("missed"),
            "false_alarm_rate": self.part("false_alarm"),
            "confusion_rate": self.part("confusion"),
        }


def _sum(values: Iterable[Any]) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    total = present[0]
    for v in present[1:]:
        total = total + v
    return total


@dataclass(frozen=True)
class SessionScore:
    """One session's metrics; a metric is None when its reference is missing (e.g. an RTTM-only reference)."""

    session: str
    cpwer: WordErrors | None
    tcpwer: WordErrors | None
    der: DiarizationErrors | None
    reference_speakers: int | None = None
    hypothesis_speakers: int | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "reference_speakers": self.reference_speakers,
            "hypothesis_speakers": self.hypothesis_speakers,
            "cpwer": self.cpwer.to_dict() if self.cpwer else None,
            "tcpwer": self.tcpwer.to_dict() if self.tcpwer else None,
            "der": self.der.to_dict() if self.der else None,
            "sources": dict(self.sources),
        }


@dataclass
class ScoreReport:
    """Per-session scores, their sum (`overall`), the settings used and the reference sessions left unscored."""

    sessions: list[SessionScore]
    collar: float = DEFAULT_COLLAR
    tcp_collar: float = DEFAULT_TCP_COLLAR
    normalizer: str | None = None
    unmatched_references: list[str] = field(default_factory=list)

    @property
    def overall(self) -> SessionScore:
        """Error counts and times summed over the sessions (so long sessions weigh more)."""
        return SessionScore(
            "overall",
            _sum(s.cpwer for s in self.sessions),
            _sum(s.tcpwer for s in self.sessions),
            _sum(s.der for s in self.sessions),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": {
                "der_collar_s": self.collar,
                "der_collar_convention": "md-eval: seconds on each side of every reference turn boundary",
                "tcpwer_collar_s": self.tcp_collar,
                "normalizer": self.normalizer,
            },
            "sessions": [s.to_dict() for s in self.sessions],
            "overall": {k: v for k, v in self.overall.to_dict().items() if k not in ("session", "sources")},
            "unmatched_references": list(self.unmatched_references),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def to_table(self) -> str:
        """An aligned plain-text table: one row per session, then `overall`; rates in percent."""
        header = [
            "session",
            "spk ref/hyp",
            "ref words",
            "cpWER %",
            "S/D/I",
            "tcpWER %",
            "S/D/I",
            "spk time s",
            "DER %",
            "miss %",
            "FA %",
            "conf %",
        ]
        rows = [_table_row(s) for s in self.sessions]
        overall = _table_row(self.overall)
        widths = [max(len(r[i]) for r in [header, *rows, overall]) for i in range(len(header))]

        def line(cells: list[str]) -> str:
            first = cells[0].ljust(widths[0])
            rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
            return "  ".join([first, *rest]).rstrip()

        rule = "-" * len(line(header))
        out = [line(header), rule, *(line(r) for r in rows), rule, line(overall)]
        out.append(
            f"DER collar {self.collar:g} s each side of reference boundaries; tcpWER collar {self.tcp_collar:g} s"
            + (f"; words normalised with {self.normalizer}" if self.normalizer else "")
        )
        if self.unmatched_references:
            out.append(
                f"not scored (no hypothesis): {len(self.unmatched_references)} reference session(s): "
                + _preview(self.unmatched_references)
            )
        return "\n".join(out) + "\n"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _table_row(s: SessionScore) -> list[str]:
    def words(w: WordErrors | None) -> list[str]:
        if w is None:
            return ["-", "-"]
        return [_percent(w.rate), f"{w.substitutions}/{w.deletions}/{w.insertions}"]

    speakers = "-" if s.reference_speakers is None else f"{s.reference_speakers}/{s.hypothesis_speakers}"
    length = s.cpwer.length if s.cpwer else (s.tcpwer.length if s.tcpwer else None)
    der = s.der
    return [
        s.session,
        speakers,
        "-" if length is None else str(length),
        *words(s.cpwer),
        *words(s.tcpwer),
        "-" if der is None else f"{der.scored:.2f}",
        _percent(der.rate if der else None),
        _percent(der.part("missed") if der else None),
        _percent(der.part("false_alarm") if der else None),
        _percent(der.part("confusion") if der else None),
    ]


def _preview(names: Iterable[str], limit: int = 5) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# --- loading and pairing ------------------------------------------------------------------------


@dataclass
class _Reference:
    words: dict[str, list[Segment]] = field(default_factory=dict)  # transcripts (SegLST, STM)
    turns: dict[str, list[Segment]] = field(default_factory=dict)  # speaker turns (RTTM)
    files: dict[str, list[str]] = field(default_factory=dict)  # file stem -> its sessions
    origin: dict[tuple[str, str], Path] = field(default_factory=dict)  # (kind, session) -> file

    @property
    def sessions(self) -> list[str]:
        return list(dict.fromkeys([*self.words, *self.turns]))

    def add(self, path: Path, segments: list[Segment], kind: str) -> None:
        target = self.turns if kind == "turns" else self.words
        sessions = group_by_session(segments)
        for session, segs in sessions.items():
            if session in target:
                raise ScoreError(f"reference session {session} is in both {self.origin[(kind, session)]} and {path}")
            target[session] = segs
            self.origin[(kind, session)] = path
        stem_sessions = self.files.setdefault(file_stem(path), [])
        stem_sessions.extend(s for s in sessions if s not in stem_sessions)


@dataclass
class _Hypothesis:
    path: Path
    segments: list[Segment]
    turns: list[Segment] | None  # the RTTM beside it, if any
    turns_path: Path | None


def _require(path: Path, what: str) -> None:
    if not path.exists():
        raise ScoreError(f"{what} {path}: no such file or folder")


def _load_reference(path: Path) -> _Reference:
    _require(path, "reference")
    ref = _Reference()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        transcripts = [p for p in files if p.name.endswith(".json") or p.name.endswith(STM_SUFFIX)]
        turns = [p for p in files if p.name.endswith(RTTM_SUFFIX)]
        if not transcripts and not turns:
            raise ScoreError(f"reference folder {path} holds no *.seglst.json, *.json, *.stm or *.rttm files")
    else:
        is_rttm = path.name.endswith(RTTM_SUFFIX)
        transcripts, turns = ([], [path]) if is_rttm else ([path], [])
    for p in transcripts:
        ref.add(p, read_transcript(p), "words")
    for p in turns:
        ref.add(p, read_rttm(p), "turns")
    if not ref.sessions:
        raise ScoreError(f"reference {path} holds no segments")
    return ref


def _load_hypothesis(path: Path) -> list[_Hypothesis]:
    _require(path, "hypothesis")
    if path.is_dir():
        files = sorted(path.glob("*" + SEGLST_SUFFIX))
        if not files:
            raise ScoreError(f"hypothesis folder {path} holds no *{SEGLST_SUFFIX} files")
    else:
        if path.name.endswith(RTTM_SUFFIX):
            raise ScoreError(f"hypothesis {path} is RTTM: give the SegLST transcript (the RTTM beside it is used)")
        files = [path]
    out = []
    for p in files:
        segments = read_transcript(p)
        rttm = p.with_name(file_stem(p) + RTTM_SUFFIX)
        turns = read_rttm(rttm) if rttm.is_file() and rttm != p else None
        out.append(_Hypothesis(p, segments, turns, rttm if turns is not None else None))
    return out


@dataclass
class _Pair:
    session: str
    hyp_words: list[Segment]
    hyp_turns: list[Segment] | None
    hyp_path: Path


def _rename(segments: Iterable[Segment], session: str) -> list[Segment]:
    return [{**seg, "session_id": session} for seg in segments]


def _pair(hyps: list[_Hypothesis], ref: _Reference, explicit_files: bool) -> list[_Pair]:
    known = set(ref.sessions)
    pairs: dict[str, _Pair] = {}
    for hyp in hyps:
        ids = list(group_by_session(hyp.segments))
        if ids and all(i in known for i in ids):
            mapping = {i: i for i in ids}
            default = None
        elif len(ids) > 1:
            missing = [i for i in ids if i not in known]
            raise ScoreError(
                f"no reference for hypothesis session(s) {_preview(missing)} in {hyp.path} "
                f"(reference sessions: {_preview(ref.sessions)})"
            )
        else:
            stem = file_stem(hyp.path)
            if stem in known:
                default = stem
            elif len(ref.files.get(stem, [])) == 1:
                default = ref.files[stem][0]
            elif explicit_files and len(known) == 1:
                default = next(iter(known))
            else:
                label = f"session {ids[0]} (file stem {stem})" if ids else f"file stem {stem}"
                raise ScoreError(
                    f"no reference for hypothesis {label} in {hyp.path} (reference sessions: {_preview(ref.sessions)})"
                )
            mapping = {i: default for i in ids}
        words = {s: [] for s in dict.fromkeys(mapping.values())} if mapping else {default: []}
        for seg in hyp.segments:
            words[mapping[seg["session_id"]]].append(seg)
        turns: dict[str, list[Segment]] | None = None
        if hyp.turns is not None:
            turns = {s: [] for s in words}
            for seg in hyp.turns:
                target = mapping.get(seg["session_id"], default)
                if target is None:
                    raise ScoreError(
                        f"hypothesis RTTM {hyp.turns_path} holds session {seg['session_id']}, "
                        f"which its SegLST {hyp.path} does not"
                    )
                turns.setdefault(target, []).append(seg)
        for session, segs in words.items():
            if session in pairs:
                raise ScoreError(
                    f"reference session {session} gets two hypotheses: {pairs[session].hyp_path} and {hyp.path}"
                )
            pairs[session] = _Pair(
                session, _rename(segs, session), _rename(turns[session], session) if turns else None, hyp.path
            )
    return list(pairs.values())


# --- metrics ------------------------------------------------------------------------------------


def _word_errors(error_rate: Any) -> WordErrors:
    return WordErrors(
        int(error_rate.errors),
        int(error_rate.length),
        int(error_rate.substitutions),
        int(error_rate.deletions),
        int(error_rate.insertions),
    )


def _meeteval_input(session: str, segments: list[Segment]) -> Any:
    """A fresh meeteval SegLST of SegLST's keys only (meeteval may edit its input in place).

    An empty hypothesis becomes one empty segment: meeteval treats a missing session as an error.
    """
    from meeteval.io import SegLST

    keys = ("session_id", "speaker", "start_time", "end_time", "words")
    items = [{k: copy.copy(seg[k]) for k in keys} for seg in segments]
    if not items:
        items = [{"session_id": session, "speaker": "<none>", "start_time": 0.0, "end_time": 0.0, "words": ""}]
    return SegLST(items)


def word_error_rates(
    session: str,
    reference: list[Segment],
    hypothesis: list[Segment],
    *,
    tcp_collar: float = DEFAULT_TCP_COLLAR,
    normalizer: str | None = None,
) -> tuple[WordErrors, WordErrors]:
    """(cpWER, tcpWER) of one session's hypothesis segments against its reference segments."""
    import meeteval

    cp = meeteval.wer.cpwer(
        _meeteval_input(session, reference), _meeteval_input(session, hypothesis), normalizer=normalizer
    )
    tcp = meeteval.wer.tcpwer(
        _meeteval_input(session, reference),
        _meeteval_input(session, hypothesis),
        collar=tcp_collar,
        normalizer=normalizer,
    )
    return _word_errors(cp[session]), _word_errors(tcp[session])


def diarization_errors(
    reference: list[Segment], hypothesis: list[Segment], *, collar: float = DEFAULT_COLLAR
) -> DiarizationErrors | None:
    """DER parts of one session's hypothesis turns against its reference turns (None: no reference speech).

    Computed as NIST md-eval-22 does: `collar` seconds on each side of every reference turn boundary
    (of the turns as given, before same-speaker turns are merged) are not scored; the scored region
    spans the reference, first turn start to last turn end; the one-to-one speaker mapping is the one
    with the most overlap over that whole span (collars included), then missed, false-alarm and
    confusion time are measured outside the collars.
    """
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate
    from pyannote.metrics.identification import IdentificationErrorRate

    def annotation(turns: list[Segment]) -> Annotation:
        ann = Annotation()
        for track, turn in enumerate(turns):
            start, end = float(turn["start_time"]), float(turn["end_time"])
            if end > start:
                ann[Segment(start, end), track] = str(turn["speaker"])
        return ann.support()  # same-speaker turns that overlap or touch become one

    ref, hyp = annotation(reference), annotation(hypothesis)
    if not ref:
        return None
    span = Timeline([ref.get_timeline().extent()])
    scored = span
    if collar > 0:
        boundaries = [
            float(t)
            for turn in reference
            if turn["end_time"] > turn["start_time"]
            for t in (turn["start_time"], turn["end_time"])
        ]
        no_score = Timeline([Segment(t - collar, t + collar) for t in boundaries]).support()
        scored = no_score.gaps(support=span.extent())
    mapping = DiarizationErrorRate().optimal_mapping(ref, hyp, uem=span)
    detail = IdentificationErrorRate()(ref, hyp.rename_labels(mapping=mapping), uem=scored, detailed=True)
    return DiarizationErrors(
        scored=float(detail["total"]),
        missed=float(detail["missed detection"]),
        false_alarm=float(detail["false alarm"]),
        confusion=float(detail["confusion"]),
    )


def _speakers(segments: list[Segment]) -> int:
    """Distinct speakers with words (of all segments, for speaker turns without words)."""
    talking = {seg["speaker"] for seg in segments if str(seg.get("words", "")).strip()}
    return len(talking) if talking else len({seg["speaker"] for seg in segments})


# --- the scorer ---------------------------------------------------------------------------------


def score(
    hypothesis: Path,
    reference: Path,
    *,
    collar: float = DEFAULT_COLLAR,
    tcp_collar: float = DEFAULT_TCP_COLLAR,
    normalizer: str | None = None,
) -> ScoreReport:
    """Score a hypothesis file or folder against a reference file or folder (see the module docstring).

    `collar`: DER collar, seconds each side of reference turn boundaries. `tcp_collar`: tcpWER
    collar in seconds. `normalizer`: one of `NORMALIZERS` (applied to both sides) or None (words
    compared exactly). Raises ScoreError (missing path, unpairable session) or FormatError
    (unparsable file).
    """
    if collar < 0 or tcp_collar < 0:
        raise ScoreError("collars must be >= 0 seconds")
    if normalizer is not None and normalizer not in NORMALIZERS:
        raise ScoreError(f"unknown normalizer {normalizer!r} (choose from {', '.join(NORMALIZERS)})")
    hypothesis, reference = Path(hypothesis), Path(reference)
    ref = _load_reference(reference)
    hyps = _load_hypothesis(hypothesis)
    pairs = _pair(hyps, ref, explicit_files=hypothesis.is_file() and reference.is_file())

    scores = []
    for pair in sorted(pairs, key=lambda p: p.session):
        ref_words = ref.words.get(pair.session)
        cp = tcp = None
        if ref_words is not None:
            cp, tcp = word_error_rates(
                pair.session, ref_words, pair.hyp_words, tcp_collar=tcp_collar, normalizer=normalizer
            )
        ref_turns = ref.turns.get(pair.session)
        hyp_turns = pair.hyp_turns if pair.hyp_turns is not None else pair.hyp_words
        der = diarization_errors(ref_turns if ref_turns is not None else ref_words or [], hyp_turns, collar=collar)
        scores.append(
            SessionScore(
                pair.session,
                cp,
                tcp,
                der,
                reference_speakers=_speakers(ref_words if ref_words is not None else ref_turns or []),
                hypothesis_speakers=_speakers(pair.hyp_words),
                sources={
                    "hypothesis": str(pair.hyp_path),
                    "der_reference": "rttm" if ref_turns is not None else "transcript",
                    "der_hypothesis": "rttm" if pair.hyp_turns is not None else "seglst",
                },
            )
        )
    scored = {p.session for p in pairs}
    unmatched = [s for s in ref.sessions if s not in scored]
    return ScoreReport(scores, collar, tcp_collar, normalizer, unmatched)


# --- command line -------------------------------------------------------------------------------


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `score` subcommand on an `add_subparsers()` object; its handler is `args.func`."""
    parser = subparsers.add_parser(
        "score",
        help="score transcripts against references: cpWER, tcpWER, DER",
        description="Score a SegLST transcript (file, or a `transcribe` output folder) against reference "
        "transcripts (SegLST JSON or STM) and speaker turns (RTTM): cpWER and tcpWER (meeteval) and DER with "
        "its missed / false-alarm / confusion parts, per session and overall (errors summed over sessions). "
        "Sessions pair by session id or file stem.",
    )
    parser.add_argument("hypothesis", type=Path, help="SegLST JSON file, or a folder of *.seglst.json files")
    parser.add_argument(
        "reference", type=Path, help="reference file or folder: *.seglst.json / *.json / *.stm and/or *.rttm"
    )
    parser.add_argument(
        "--collar",
        type=float,
        default=DEFAULT_COLLAR,
        help="DER collar: seconds on each side of every reference boundary left unscored, as md-eval's -c "
        f"(default: {DEFAULT_COLLAR})",
    )
    parser.add_argument(
        "--tcp-collar",
        type=float,
        default=DEFAULT_TCP_COLLAR,
        help=f"tcpWER collar in seconds (default: {DEFAULT_TCP_COLLAR:g}, as CHiME-8)",
    )
    parser.add_argument(
        "--normalizer",
        choices=NORMALIZERS,
        metavar="NAME",
        help="normalise words on both sides before WER with meeteval's "
        + " or ".join(f"'{n}'" for n in NORMALIZERS)
        + " (default: compare words exactly)",
    )
    parser.add_argument("--json", type=Path, dest="json_path", metavar="PATH", help="also write the JSON report here")
    parser.add_argument("--format", choices=["table", "json"], default="table", help="what to print (default: table)")
    parser.set_defaults(func=run_score)
    return parser


def run_score(args: argparse.Namespace) -> int:
    """The `score` handler: print the report; 0 on success, 2 with one `error:` line on bad input."""
    try:
        report = score(
            args.hypothesis,
            args.reference,
            collar=args.collar,
            tcp_collar=args.tcp_collar,
            normalizer=args.normalizer,
        )
    except (ScoreError, FormatError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.to_table() if args.format == "table" else report.to_json(), end="" if args.format == "table" else "\n")
    if args.json_path is not None:
        try:
            args.json_path.write_text(report.to_json() + "\n", encoding="utf-8")
        except OSError as err:
            print(f"error: cannot write {args.json_path}: {err}", file=sys.stderr)
            return 2
    return 0
