"""Quality of an exported model repository on the evaluation set, through the served pipeline.

Starts tritonserver on the repository, streams every evaluation session through the ensemble
(as `mtasr transcribe` does), and scores the transcripts with `mtasr score`, per speaker count:
WER for one speaker (cpWER reduces to WER), cpWER and DER for two and three. Beside it, in process: the
streaming diarizer alone, and the ASR given the reference speaker turns instead of the diarizer's (what
is left is the ASR's own error).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mtasr.protocol import speaker_name
from mtasr.training.evalset import AUDIO_DIR, REFERENCE_DIR

SILENCE_S = 60.0
SILENCE_SESSION = "silence-60s.wav"
# The long conversation's first and last minute (its cpWER must not drift as the stream grows).
LONG_WINDOWS = {"first_minute": (0.0, 60.0), "last_minute": (240.0, 300.0)}


def transcribe_evalset(
    repo: Path, evalset_dir: Path, hyp_dir: Path, jobs: int = 2, extra: tuple[Path, ...] = ()
) -> None:
    """Serve `repo` and write each session's SegLST/RTTM/text (and those of the `extra` audio files) into
    `hyp_dir`."""
    from tqdm import tqdm

    from mtasr.client.stream import StreamingClient
    from mtasr.client.transcribe import transcribe_file
    from mtasr.server import TritonServer, local_server_config

    sources = sorted((Path(evalset_dir) / AUDIO_DIR).glob("*.wav"))
    if not sources:
        raise FileNotFoundError(f"no evaluation audio under {evalset_dir / AUDIO_DIR}")
    sources += list(extra)
    with TritonServer(local_server_config(repo)) as server:
        client = StreamingClient(server.address("grpc"))
        with (
            ThreadPoolExecutor(max_workers=jobs) as pool,
            tqdm(total=len(sources), desc="transcribing", unit="file") as bar,
        ):
            for result in pool.map(lambda s: transcribe_file(client, str(s), hyp_dir, False, None), sources):
                if result.error:
                    raise RuntimeError(result.error)
                bar.update(1)


def activity_segments(probs, frame_s: float, session: str, threshold: float = 0.5) -> list[dict]:
    """Speaker turns from per-frame slot probabilities: runs above `threshold`, one speaker per slot."""
    from mtasr.client.formats import make_segment

    segments = []
    active = probs > threshold
    for slot in range(active.shape[1]):
        edges = np.flatnonzero(np.diff(np.concatenate([[0], active[:, slot].astype(int), [0]])))
        for start, end in zip(edges[::2], edges[1::2], strict=True):
            segments.append(
                make_segment(session, speaker_name(slot), round(start * frame_s, 3), round(end * frame_s, 3))
            )
    return sorted(segments, key=lambda s: s["start_time"])


def diarize_evalset(repo: Path, evalset_dir: Path, hyp_dir: Path) -> None:
    """The streaming diarizer alone, exactly as the served diarization stage runs it (in process), per session:
    `<session>.rttm` and a word-less `<session>.seglst.json` (so `mtasr score` reports its DER)."""
    import soundfile as sf

    from mtasr.client.formats import RTTM_SUFFIX, SEGLST_SUFFIX, write_rttm, write_seglst
    from mtasr.deployment import chunk_samples, load_manifest
    from mtasr.local_pipeline import LocalPipeline

    manifest = load_manifest(Path(repo))
    chunk = chunk_samples(manifest)
    frame_s = manifest["diarizer"]["geometry"]["frame_len_s"]
    pipeline = LocalPipeline(Path(repo))
    hyp_dir.mkdir(parents=True, exist_ok=True)
    for wav in sorted((Path(evalset_dir) / AUDIO_DIR).glob("*.wav")):
        audio, _ = sf.read(wav, dtype="float32")
        segments = activity_segments(pipeline.speaker_activity(audio, chunk), frame_s, wav.stem)
        write_seglst(segments, hyp_dir / f"{wav.stem}{SEGLST_SUFFIX}")
        write_rttm(segments, hyp_dir / f"{wav.stem}{RTTM_SUFFIX}")


def reference_activity(rttm: Path, frame_s: float, frames: int, slots: int) -> np.ndarray:
    """[frames, slots] 0/1 activity of an RTTM's turns on a grid of `frame_s`, a slot per speaker in order of first
    speech (the diarizer's arrival order)."""
    from mtasr.client.formats import read_rttm

    turns = sorted(read_rttm(rttm), key=lambda s: s["start_time"])
    speakers = list(dict.fromkeys(t["speaker"] for t in turns))
    if len(speakers) > slots:
        raise ValueError(f"{rttm}: {len(speakers)} speakers, more than the {slots} speaker slots")
    activity = np.zeros((frames, slots), np.float32)
    for turn in turns:
        first, last = round(turn["start_time"] / frame_s), round(turn["end_time"] / frame_s)
        activity[first:last, speakers.index(turn["speaker"])] = 1.0
    return activity


class ReferenceSpeakers:
    """Stands in for a `LocalPipeline`'s diarization stage: the stage runs as served (its frames per chunk), and
    its probabilities are replaced by the reference activity of the same frames. One stream, from its start: it
    counts the frames it has given out."""

    def __init__(self, stage, activity: np.ndarray) -> None:
        self.stage, self.activity, self.next_frame = stage, activity, 0

    def process(self, requests: list) -> list:
        from mtasr.stages import DIARIZER_FRAMES, SPEAKER_PROBS, RequestError

        results = self.stage.process(requests)
        for result in results:
            if isinstance(result, RequestError):
                continue
            probs = np.zeros_like(result[SPEAKER_PROBS])
            for c, frames in enumerate(result[DIARIZER_FRAMES].tolist()):
                probs[c, :frames] = self.activity[self.next_frame : self.next_frame + frames]
                self.next_frame += frames
            result[SPEAKER_PROBS] = probs
        return results


def transcribe_with_reference_speakers(repo: Path, evalset_dir: Path, hyp_dir: Path) -> None:
    """The served pipeline (in process) with the diarizer's output replaced by the reference turns: what the ASR
    writes given perfect speaker masks, so the errors left are the ASR's. A `<session>.seglst.json` per session."""
    import soundfile as sf
    from tqdm import tqdm

    from mtasr.client.formats import RTTM_SUFFIX, SEGLST_SUFFIX, write_seglst
    from mtasr.deployment import chunk_samples, load_manifest
    from mtasr.local_pipeline import LocalPipeline
    from mtasr.stages import TRANSCRIPT

    manifest = load_manifest(Path(repo))
    geometry = manifest["diarizer"]["geometry"]
    chunk, frame_s = chunk_samples(manifest), geometry["frame_len_s"]
    pipeline = LocalPipeline(Path(repo))
    diarization = pipeline.stages["diarization"]
    hyp_dir.mkdir(parents=True, exist_ok=True)
    for wav in tqdm(sorted((Path(evalset_dir) / AUDIO_DIR).glob("*.wav")), desc="reference speakers", unit="file"):
        audio, rate = sf.read(wav, dtype="float32")
        frames = int(len(audio) / rate / frame_s) + 2 * geometry["chunk_frames"]  # the last chunk may be padded
        rttm = Path(evalset_dir) / REFERENCE_DIR / f"{wav.stem}{RTTM_SUFFIX}"
        activity = reference_activity(rttm, frame_s, frames, manifest["speaker_slots"])
        pipeline.stages["diarization"] = ReferenceSpeakers(diarization, activity)
        last = pipeline.transcribe(audio, chunk)[-1]
        segments = json.loads(last[TRANSCRIPT].reshape(-1)[0])
        write_seglst([{**s, "session_id": wav.stem} for s in segments], hyp_dir / f"{wav.stem}{SEGLST_SUFFIX}")
    pipeline.stages["diarization"] = diarization


def one_speaker_baseline(evalset_dir: Path, hyp_dir: Path) -> None:
    """The diarizer's yardstick, per session: every reference turn given to one speaker (speech found
    perfectly, speakers never told apart). A diarizer with a higher DER has not learnt to separate speakers."""
    from mtasr.client.formats import RTTM_SUFFIX, SEGLST_SUFFIX, read_seglst, write_rttm, write_seglst

    hyp_dir.mkdir(parents=True, exist_ok=True)
    for ref in sorted((Path(evalset_dir) / REFERENCE_DIR).glob(f"*{SEGLST_SUFFIX}")):
        session = ref.name.removesuffix(SEGLST_SUFFIX)
        segments = [{**s, "speaker": speaker_name(0), "words": ""} for s in read_seglst(ref)]
        write_seglst(segments, hyp_dir / f"{session}{SEGLST_SUFFIX}")
        write_rttm(segments, hyp_dir / f"{session}{RTTM_SUFFIX}")


def score_by_speaker_count(hyp_dir: Path, evalset_dir: Path) -> dict[str, dict]:
    """`mtasr score` of the whole set, summed per group of sessions with 1, 2 and 3 speakers."""
    from mtasr.client.score import ScoreReport, score

    report = score(Path(hyp_dir), Path(evalset_dir) / REFERENCE_DIR)
    groups: dict[str, dict] = {}
    for prefix in sorted({s.session.split("-")[0] for s in report.sessions}):
        sessions = [s for s in report.sessions if s.session.split("-")[0] == prefix]
        overall = ScoreReport(sessions).overall.to_dict()
        groups[prefix] = {"sessions": len(sessions), "cpwer": overall["cpwer"], "der": overall["der"]}
    return groups


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def quality_table(result: dict[str, dict]) -> str:
    """Markdown of an `evaluate` result: speakers, sessions, reference words, (cp)WER and DER of the served
    transcripts, the cpWER with the reference speaker turns in place of the diarizer's, the DER of the streaming
    diarizer alone (its own turns, not the words') and of the one-speaker baseline; then the checks (silence,
    long stream). A part missing from `result` is shown as "-".

    Groups: `spkN` (N speakers), `voice` (1 speaker, the voice held out of training), `long` (the
    5-minute 3-speaker conversation)."""
    lines = [
        "| speakers | sessions | ref words | cpWER (= WER for 1 speaker) | cpWER, reference speakers "
        "| DER (words' turns) | DER (diarizer alone) | DER (one-speaker baseline) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def rate_of(part: str, prefix: str, metric: str) -> float | None:
        return ((result.get(part) or {}).get(prefix, {}).get(metric) or {}).get("error_rate")

    for prefix, g in result["served"].items():
        lines.append(
            f"| {prefix.removeprefix('spk')} | {g['sessions']} | {g['cpwer']['length']} | "
            f"{_percent(g['cpwer']['error_rate'])} | {_percent(rate_of('reference_speakers', prefix, 'cpwer'))} | "
            f"{_percent(rate_of('served', prefix, 'der'))} | {_percent(rate_of('diarizer', prefix, 'der'))} | "
            f"{_percent(rate_of('one_speaker_baseline', prefix, 'der'))} |"
        )
    checks = result.get("checks")
    if checks:
        lines.append("")
        lines.append(f"- words written for {SILENCE_S:.0f} s of silence: {checks['silence_words']}")
        for key, what in (
            ("long_conversation_cpwer", ""),
            ("long_conversation_cpwer_reference_speakers", ", reference speakers"),
        ):
            if windows := checks.get(key):
                parts = ", ".join(f"{name.replace('_', ' ')} {_percent(rate)}" for name, rate in windows.items())
                lines.append(f"- long conversation cpWER{what}: {parts}")
    return "\n".join(lines) + "\n"


def window_cpwer(hyp_dir: Path, evalset_dir: Path, session: str, windows: dict[str, tuple[float, float]]) -> dict:
    """cpWER of one session over time windows ({name: (start s, end s)}): reference and hypothesis segments
    are kept where their middle falls in the window."""
    import tempfile

    from mtasr.client.formats import SEGLST_SUFFIX, read_seglst, write_seglst
    from mtasr.client.score import score

    hyp = read_seglst(Path(hyp_dir) / f"{session}{SEGLST_SUFFIX}")
    ref = read_seglst(Path(evalset_dir) / REFERENCE_DIR / f"{session}{SEGLST_SUFFIX}")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for side in ("hyp", "ref"):
            (Path(tmp) / side).mkdir()
        for name, (start, end) in windows.items():

            def inside(s, start=start, end=end):
                return start <= (s["start_time"] + s["end_time"]) / 2 < end

            for side, segments in (("hyp", hyp), ("ref", ref)):
                kept = [{**s, "session_id": name} for s in segments if inside(s)]
                write_seglst(kept, Path(tmp) / side / f"{name}{SEGLST_SUFFIX}")
            rates[name] = score(Path(tmp) / "hyp", Path(tmp) / "ref").overall.cpwer.rate
            for side in ("hyp", "ref"):
                (Path(tmp) / side / f"{name}{SEGLST_SUFFIX}").unlink()
    return rates


def silence_audio(path: Path, seconds: float = SILENCE_S) -> Path:
    """`seconds` of digital silence as a 16 kHz WAV: the models must write no words for it."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(int(seconds * 16000), dtype=np.float32), 16000, subtype="PCM_16")
    return path


def _words_in(seglst: Path) -> int:
    from mtasr.client.formats import read_seglst

    return sum(len(s["words"].split()) for s in read_seglst(seglst))


def evaluate(repo: Path, evalset_dir: Path, out_dir: Path, jobs: int = 2) -> dict[str, dict]:
    """Transcribe and score; diarize and score; the one-speaker baseline; the ASR given the reference speaker
    turns; the long conversation's first and last minute and the words written for silence; writes
    `out_dir/hyp/`, `diarizer/`, `one_speaker/`, `reference_speakers/`, `quality.json`, `quality.md`."""
    from mtasr.client.formats import SEGLST_SUFFIX
    from mtasr.training.evalset import LONG_SESSION

    out_dir = Path(out_dir)
    hyp_dir = out_dir / "hyp"
    hyp_dir.mkdir(parents=True, exist_ok=True)
    silence = silence_audio(out_dir / "extra" / SILENCE_SESSION)
    transcribe_evalset(repo, evalset_dir, hyp_dir, jobs, extra=(silence,))
    silence_words = _words_in(hyp_dir / f"{silence.stem}{SEGLST_SUFFIX}")
    for suffix in (SEGLST_SUFFIX, ".rttm", ".stm", ".txt"):  # not a session of the evaluation set
        (hyp_dir / f"{silence.stem}{suffix}").unlink(missing_ok=True)
    groups = score_by_speaker_count(hyp_dir, evalset_dir)
    reference_dir = out_dir / "reference_speakers"
    transcribe_with_reference_speakers(repo, evalset_dir, reference_dir)
    reference = score_by_speaker_count(reference_dir, evalset_dir)
    checks = {"silence_words": silence_words}
    if (Path(evalset_dir) / REFERENCE_DIR / f"{LONG_SESSION}{SEGLST_SUFFIX}").is_file():
        checks["long_conversation_cpwer"] = window_cpwer(hyp_dir, evalset_dir, LONG_SESSION, LONG_WINDOWS)
        checks["long_conversation_cpwer_reference_speakers"] = window_cpwer(
            reference_dir, evalset_dir, LONG_SESSION, LONG_WINDOWS
        )
    diarizer_dir = out_dir / "diarizer"
    diarize_evalset(repo, evalset_dir, diarizer_dir)
    diarizer = score_by_speaker_count(diarizer_dir, evalset_dir)
    one_speaker_baseline(evalset_dir, out_dir / "one_speaker")
    baseline = score_by_speaker_count(out_dir / "one_speaker", evalset_dir)
    result = {
        "served": groups,
        "reference_speakers": reference,
        "diarizer": diarizer,
        "one_speaker_baseline": baseline,
        "checks": checks,
    }
    (out_dir / "quality.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "quality.md").write_text(quality_table(result))
    return result
