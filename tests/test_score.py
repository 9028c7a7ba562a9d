"""`mtasr score` and the transcript formats: what each metric counts, how files pair, what errors say.

All offline and small: references and hypotheses are written by the tests themselves.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mtasr.client.formats import (
    FormatError,
    file_stem,
    format_time,
    make_segment,
    read_rttm,
    read_seglst,
    read_stm,
    read_transcript,
    readable_transcript,
    write_rttm,
    write_seglst,
    write_stm,
)
from mtasr.client.score import ScoreError, add_parser, diarization_errors, score

# Two talkers: 9 + 4 reference words, one overlap (2.5 .. 3.0 s).
REFERENCE = [
    make_segment("meeting", "alice", 0.0, 3.0, "so what did you think of the demo"),
    make_segment("meeting", "bob", 2.5, 5.0, "it was rather good"),
    make_segment("meeting", "alice", 6.0, 7.5, "great"),
]


def hypothesis_of(reference, session="meeting", rename=None, shift=0.0, words=None):
    """The reference as a server transcript: speakers renamed to `speaker_<slot>`, times shifted."""
    rename = rename or {"alice": "speaker_0", "bob": "speaker_1"}
    return [
        make_segment(
            session,
            rename[seg["speaker"]],
            seg["start_time"] + shift,
            seg["end_time"] + shift,
            seg["words"] if words is None else words[i],
        )
        for i, seg in enumerate(reference)
    ]


def write_pair(tmp_path: Path, hypothesis, reference=REFERENCE, stem="meeting"):
    hyp, ref = tmp_path / "hyp", tmp_path / "ref"
    hyp.mkdir(exist_ok=True)
    ref.mkdir(exist_ok=True)
    write_seglst(hypothesis, hyp / f"{stem}.seglst.json")
    write_seglst(reference, ref / f"{stem}.seglst.json")
    return hyp, ref


def only(report):
    assert len(report.sessions) == 1
    return report.sessions[0]


# --- formats ------------------------------------------------------------------------------------


def test_seglst_round_trip_keeps_every_field(tmp_path):
    segments = [*REFERENCE, make_segment("other", "spk", 1.25, 2.5, "naïve café")]
    write_seglst(segments, tmp_path / "a.seglst.json")
    assert read_seglst(tmp_path / "a.seglst.json") == segments
    write_seglst([], tmp_path / "empty.seglst.json")
    assert read_seglst(tmp_path / "empty.seglst.json") == []


def test_seglst_numeric_session_ids_become_strings(tmp_path):
    path = tmp_path / "x.seglst.json"
    path.write_text(
        json.dumps([{"session_id": 17, "speaker": "speaker_0", "start_time": 0, "end_time": 1, "words": "a"}])
    )
    assert read_seglst(path)[0]["session_id"] == "17"


def test_rttm_round_trip_keeps_turns_to_the_millisecond(tmp_path):
    turns = [make_segment("rec1", "A", 0.5, 2.25), make_segment("rec1", "B", 2.0, 4.125)]
    write_rttm(turns, tmp_path / "a.rttm")
    text = (tmp_path / "a.rttm").read_text()
    assert text.splitlines()[0] == "SPEAKER rec1 1 0.500 1.750 <NA> <NA> A <NA> <NA>"
    assert read_rttm(tmp_path / "a.rttm") == turns


def test_rttm_reader_skips_comments_and_other_line_types(tmp_path):
    (tmp_path / "a.rttm").write_text(
        ";; a comment\nSPKR-INFO rec 1 <NA> <NA> <NA> unknown A <NA>\nSPEAKER rec 1 1.00 2.00 <NA> <NA> A <NA>\n\n"
    )
    assert read_rttm(tmp_path / "a.rttm") == [make_segment("rec", "A", 1.0, 3.0)]


def test_stm_round_trip_and_reference_conventions(tmp_path):
    write_stm(REFERENCE, tmp_path / "a.stm")
    assert read_stm(tmp_path / "a.stm") == REFERENCE  # already in STM's (session, start) order
    (tmp_path / "b.stm").write_text(
        ";; CATEGORY stuff\n"
        "rec 1 A 0.00 1.50 <O,F0,MALE> hello   world\n"
        "rec 1 inter_segment_gap 1.50 2.00\n"
        "rec 1 B 2.00 3.00\n"
    )
    assert read_stm(tmp_path / "b.stm") == [
        make_segment("rec", "A", 0.0, 1.5, "hello world"),
        make_segment("rec", "B", 2.0, 3.0, ""),
    ]


def test_readable_transcript_one_line_per_segment_in_time_order():
    text = readable_transcript([REFERENCE[1], REFERENCE[0], make_segment("m", "speaker_2", 75.5, 80.004, "late")])
    assert text.splitlines() == [
        "[00:00.00-00:03.00] alice: so what did you think of the demo",
        "[00:02.50-00:05.00] bob: it was rather good",
        "[01:15.50-01:20.00] speaker_2: late",
    ]
    assert format_time(59.999) == "01:00.00"
    assert readable_transcript([]) == ""


def test_file_stems_and_format_by_name(tmp_path):
    assert file_stem(Path("out/a.b.seglst.json")) == "a.b"
    assert [file_stem(Path(n)) for n in ("x.rttm", "x.stm", "x.json", "x.txt")] == ["x"] * 4
    with pytest.raises(FormatError, match="unknown transcript format"):
        read_transcript(tmp_path / "a.ctm")


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("a.seglst.json", "{not json", "not JSON"),
        ("a.seglst.json", '{"session_id": "x"}', "JSON list"),
        ("a.seglst.json", '[{"session_id": "x", "speaker": "a", "start_time": 0, "end_time": 1}]', "missing words"),
        (
            "a.seglst.json",
            '[{"session_id": "x", "speaker": "a", "start_time": 2, "end_time": 1, "words": ""}]',
            "bad interval",
        ),
        ("a.rttm", "SPEAKER rec 1 zero 1.0 <NA> <NA> A <NA>\n", "line 1: time 'zero'"),
        ("a.stm", "rec 1 A 0.0\n", "line 1: STM line needs at least 5 fields"),
    ],
)
def test_readers_name_the_file_and_the_problem(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(FormatError, match=re.escape(message)) as err:
        read_transcript(tmp_path / name)
    assert str(tmp_path / name) in str(err.value)


# --- metrics ------------------------------------------------------------------------------------


def test_perfect_hypothesis_scores_zero_everywhere(tmp_path):
    s = only(score(*write_pair(tmp_path, hypothesis_of(REFERENCE))))
    assert (s.cpwer.errors, s.cpwer.length) == (0, 13)
    assert s.tcpwer.errors == 0 and s.der.rate == 0.0
    assert (s.reference_speakers, s.hypothesis_speakers) == (2, 2)


def test_swapped_speaker_labels_cost_nothing_every_metric_is_permutation_invariant(tmp_path):
    swapped = hypothesis_of(REFERENCE, rename={"alice": "speaker_1", "bob": "speaker_0"})
    s = only(score(*write_pair(tmp_path, swapped)))
    assert s.cpwer.rate == 0.0 and s.tcpwer.rate == 0.0 and s.der.rate == 0.0


def test_right_words_at_the_wrong_time_cost_tcpwer_and_der_but_not_cpwer(tmp_path):
    # 20 s late: beyond the 5 s tcpWER collar and outside the reference's span.
    late = hypothesis_of(REFERENCE, shift=20.0)
    s = only(score(*write_pair(tmp_path, late)))
    assert s.cpwer.errors == 0
    assert (s.tcpwer.deletions, s.tcpwer.insertions, s.tcpwer.substitutions) == (13, 13, 0)
    assert s.tcpwer.rate == 2.0
    # Nothing the hypothesis says falls in the scored span: all reference speech is missed, and the
    # speech after the reference ends is not scored, so it is no false alarm.
    assert s.der.part("missed") == 1.0 and s.der.false_alarm == 0.0 and s.der.confusion == 0.0
    # Within the tcpWER collar the words still match (DER still sees 1 s of displacement).
    near = only(score(*write_pair(tmp_path, hypothesis_of(REFERENCE, shift=1.0))))
    assert near.tcpwer.errors == 0 and near.der.rate > 0


def test_a_known_number_of_word_errors_gives_the_expected_rate(tmp_path):
    words = [
        "so what did you think of a demo",  # the -> a: 1 substitution
        "it was good",  # rather: 1 deletion
        "great thanks",  # thanks: 1 insertion
    ]
    s = only(score(*write_pair(tmp_path, hypothesis_of(REFERENCE, words=words))))
    for w in (s.cpwer, s.tcpwer):
        assert (w.substitutions, w.deletions, w.insertions, w.length) == (1, 1, 1, 13)
        assert w.rate == pytest.approx(3 / 13)


def test_der_collar_is_per_side_of_each_reference_boundary_like_md_eval():
    reference = [make_segment("r", "A", 0.0, 5.0), make_segment("r", "B", 5.0, 10.0)]
    hypothesis = [make_segment("r", "x", 0.0, 6.0), make_segment("r", "y", 6.0, 10.0)]
    exact = diarization_errors(reference, hypothesis, collar=0.0)
    assert (exact.scored, exact.confusion, exact.missed, exact.false_alarm) == (10.0, 1.0, 0.0, 0.0)
    # 0.25 s each side of 0, 5 and 10 s is left out: 9 s scored, 0.75 s of B given to A's label.
    collared = diarization_errors(reference, hypothesis, collar=0.25)
    assert collared.scored == pytest.approx(9.0) and collared.confusion == pytest.approx(0.75)
    assert collared.rate == pytest.approx(0.75 / 9.0)


def test_der_counts_overlapped_speech_once_per_speaker():
    reference = [make_segment("r", "A", 0.0, 4.0), make_segment("r", "B", 2.0, 4.0)]
    only_a = diarization_errors(reference, [make_segment("r", "x", 0.0, 4.0)], collar=0.0)
    assert only_a.scored == 6.0 and only_a.missed == 2.0 and only_a.rate == pytest.approx(1 / 3)


def test_an_empty_hypothesis_is_all_deletions_and_all_missed(tmp_path):
    s = only(score(*write_pair(tmp_path, [])))
    assert s.cpwer.deletions == 13 and s.cpwer.rate == 1.0 and s.tcpwer.rate == 1.0
    assert s.der.part("missed") == 1.0 and s.hypothesis_speakers == 0


MD_EVAL = shutil.which("md-eval-22.pl") or shutil.which("md-eval.pl") or "/usr/lib/sctk/bin/md-eval.pl"


@pytest.mark.skipif(not Path(MD_EVAL).is_file(), reason="NIST md-eval.pl not installed (Debian: apt-get install sctk)")
def test_der_equals_nist_md_eval_on_random_overlapping_turns(tmp_path):
    import random

    rng = random.Random(7)

    def turns(prefix):
        out = []
        for _ in range(rng.randrange(1, 16)):
            start = round(rng.uniform(0, 60), 3)
            out.append(
                make_segment("rec", f"{prefix}{rng.randrange(3)}", start, round(start + rng.uniform(0.01, 6), 3))
            )
        return out

    for trial in range(12):
        reference, hypothesis, collar = turns("r"), turns("h"), (0.0, 0.25, 0.5)[trial % 3]
        write_rttm(reference, tmp_path / "r.rttm")
        write_rttm(hypothesis, tmp_path / "h.rttm")
        out = subprocess.run(
            ["perl", MD_EVAL, "-c", str(collar), "-r", str(tmp_path / "r.rttm"), "-s", str(tmp_path / "h.rttm")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        nist = [
            float(re.search(rf"{key} TIME =\s*([\d.]+) secs", out).group(1))
            for key in ("SCORED SPEAKER", "MISSED SPEAKER", "FALARM SPEAKER", "SPEAKER ERROR")
        ]
        ours = diarization_errors(reference, hypothesis, collar=collar)
        # md-eval prints two decimals
        assert [ours.scored, ours.missed, ours.false_alarm, ours.confusion] == pytest.approx(nist, abs=0.006)


# --- pairing, folders, sources ------------------------------------------------------------------


def test_folder_scoring_pairs_sessions_and_sums_counts_not_rates(tmp_path):
    hyp, ref = tmp_path / "hyp", tmp_path / "ref"
    hyp.mkdir()
    ref.mkdir()
    long_ref = [make_segment("long", "A", 0, 10, " ".join(["word"] * 18)), make_segment("long", "B", 10, 12, "end now")]
    # References: one STM holding both sessions, plus the long session's RTTM.
    write_stm([*REFERENCE, *long_ref], ref / "all.stm")
    write_rttm(long_ref, ref / "long.rttm")
    # Hypotheses as `transcribe` writes them: named by stem, session id = the Triton sequence id.
    write_seglst(hypothesis_of(REFERENCE, session="101"), hyp / "meeting.seglst.json")
    write_seglst([make_segment("102", "speaker_0", 0, 10, " ".join(["word"] * 18))], hyp / "long.seglst.json")
    (hyp / "long.txt").write_text("ignored")
    report = score(hyp, ref)
    by_name = {s.session: s for s in report.sessions}
    assert sorted(by_name) == ["long", "meeting"]
    assert (by_name["long"].cpwer.errors, by_name["long"].cpwer.length) == (2, 20)
    assert by_name["meeting"].cpwer.errors == 0
    overall = report.overall
    assert (overall.cpwer.errors, overall.cpwer.length) == (2, 33)
    assert overall.cpwer.rate == pytest.approx(2 / 33)  # not (2/20 + 0/13) / 2
    assert overall.der.scored == pytest.approx(sum(s.der.scored for s in report.sessions))
    assert by_name["long"].sources["der_reference"] == "rttm"
    assert by_name["meeting"].sources["der_reference"] == "transcript"


def test_hypothesis_sessions_pair_by_id_when_the_reference_has_them(tmp_path):
    second = [make_segment("other", "C", 0, 1, "hello")]
    hyp, ref = write_pair(tmp_path, [*hypothesis_of(REFERENCE), make_segment("other", "speaker_0", 0, 1, "hello")])
    write_seglst(second, ref / "other.seglst.json")
    report = score(hyp / "meeting.seglst.json", ref)
    assert [s.session for s in report.sessions] == ["meeting", "other"]
    assert report.overall.cpwer.errors == 0


def test_one_file_against_one_file_pairs_whatever_the_names(tmp_path):
    write_seglst(hypothesis_of(REFERENCE, session="123"), tmp_path / "out.seglst.json")
    write_stm(REFERENCE, tmp_path / "gold.stm")
    s = only(score(tmp_path / "out.seglst.json", tmp_path / "gold.stm"))
    assert s.session == "meeting" and s.cpwer.errors == 0


def test_der_uses_the_rttm_beside_the_hypothesis_and_rttm_only_references(tmp_path):
    hyp, ref = write_pair(tmp_path, hypothesis_of(REFERENCE))
    # Diarizer turns that differ from the word segments: speaker_0 talks 1 s longer at the end.
    write_rttm([*hypothesis_of(REFERENCE), make_segment("meeting", "speaker_0", 7.5, 8.5)], hyp / "meeting.rttm")
    (ref / "meeting.seglst.json").unlink()
    write_rttm(REFERENCE, ref / "meeting.rttm")
    s = only(score(hyp, ref))
    assert s.sources["der_hypothesis"] == "rttm" and s.sources["der_reference"] == "rttm"
    assert s.cpwer is None and s.tcpwer is None  # no reference words
    assert s.der.false_alarm == 0.0  # the extra second is past the reference's end: not scored
    assert "-" in score(hyp, ref).to_table().splitlines()[2]


def test_reference_sessions_without_hypothesis_are_listed_not_scored(tmp_path):
    hyp, ref = write_pair(tmp_path, hypothesis_of(REFERENCE))
    write_seglst([make_segment("spare", "A", 0, 1, "x")], ref / "spare.seglst.json")
    report = score(hyp, ref)
    assert [s.session for s in report.sessions] == ["meeting"]
    assert report.unmatched_references == ["spare"]
    assert "not scored (no hypothesis): 1 reference session(s): spare" in report.to_table()


def test_a_hypothesis_session_without_reference_is_an_error_naming_it(tmp_path):
    hyp, ref = write_pair(tmp_path, hypothesis_of(REFERENCE))
    write_seglst(hypothesis_of(REFERENCE, session="999"), hyp / "stray.seglst.json")
    with pytest.raises(ScoreError, match=r"no reference for hypothesis session 999 \(file stem stray\)"):
        score(hyp, ref)


# --- report and command line --------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mtasr")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_prints_an_aligned_table_and_writes_json(tmp_path, capsys):
    hyp, ref = write_pair(
        tmp_path,
        hypothesis_of(REFERENCE, words=["so what did you think of a demo", *[s["words"] for s in REFERENCE[1:]]]),
    )
    out_json = tmp_path / "report.json"
    assert run_cli(["score", str(hyp), str(ref), "--collar", "0.5", "--json", str(out_json)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["session", "spk"]
    assert lines[2].split()[:5] == ["meeting", "2/2", "13", "7.69", "1/0/0"]
    assert lines[4].startswith("overall")
    assert len({len(line) for line in lines[:5] if not line.startswith("-")}) <= 2  # columns line up
    assert "DER collar 0.5 s each side" in lines[5]
    report = json.loads(out_json.read_text())
    assert report["settings"]["der_collar_s"] == 0.5 and report["settings"]["tcpwer_collar_s"] == 5.0
    assert report["sessions"][0]["cpwer"]["substitutions"] == 1
    assert report["overall"]["cpwer"]["error_rate"] == pytest.approx(1 / 13)
    assert set(report["overall"]["der"]) >= {"error_rate", "missed_rate", "false_alarm_rate", "confusion_rate"}


def test_cli_json_format_prints_the_report(tmp_path, capsys):
    hyp, ref = write_pair(tmp_path, hypothesis_of(REFERENCE))
    assert run_cli(["score", str(hyp), str(ref), "--format", "json", "--tcp-collar", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["overall"]["tcpwer"]["errors"] == 0 and report["settings"]["tcpwer_collar_s"] == 1.0


def test_cli_normalizer_lowercases_and_strips_punctuation(tmp_path, capsys):
    shouting = hypothesis_of(REFERENCE, words=["So what did you think of the demo?", "It was rather good.", "GREAT!"])
    hyp, ref = write_pair(tmp_path, shouting)
    assert run_cli(["score", str(hyp), str(ref), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["overall"]["cpwer"]["errors"] > 0
    assert run_cli(["score", str(hyp), str(ref), "--format", "json", "--normalizer", "lower,rm(.?!,)"]) == 0
    assert json.loads(capsys.readouterr().out)["overall"]["cpwer"]["errors"] == 0


def bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    hyp, ref = write_pair(tmp_path, hypothesis_of(REFERENCE))
    garbage = tmp_path / "garbage.seglst.json"
    garbage.write_bytes(b"\x00\x01 not a transcript")
    stray = tmp_path / "stray"
    stray.mkdir()
    write_seglst(hypothesis_of(REFERENCE, session="x"), stray / "elsewhere.seglst.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    return {
        "missing reference": ([str(hyp), str(tmp_path / "nope")], f"reference {tmp_path / 'nope'}: no such file"),
        "missing hypothesis": ([str(tmp_path / "nope.seglst.json"), str(ref)], "hypothesis"),
        "garbage hypothesis": ([str(garbage), str(ref)], f"{garbage}: not JSON"),
        "unpaired session": ([str(stray), str(ref)], "no reference for hypothesis session x (file stem elsewhere)"),
        "empty folder": ([str(empty), str(ref)], "holds no *.seglst.json files"),
    }


@pytest.mark.parametrize(
    "case", ["missing reference", "missing hypothesis", "garbage hypothesis", "unpaired session", "empty folder"]
)
def test_cli_bad_input_exits_2_with_one_clear_error_line(tmp_path, capsys, case):
    argv, message = bad_inputs(tmp_path)[case]
    assert run_cli(["score", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: ")
    assert message in captured.err
