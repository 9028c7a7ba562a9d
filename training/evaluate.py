"""Quality of an exported model repository on the evaluation set, through the served pipeline.

Starts tritonserver on the repository, streams every evaluation session through the ensemble
(as `mtasr transcribe` does), and scores the transcripts with `mtasr score`, per speaker count:
WER for one speaker (cpWER reduces to WER), cpWER and DER for two and three.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from mtasr.training.evalset import AUDIO_DIR, REFERENCE_DIR


def transcribe_evalset(repo: Path, evalset_dir: Path, hyp_dir: Path, jobs: int = 2) -> None:
    """Serve `repo` and write each session's SegLST/RTTM/text into `hyp_dir`."""
    from mtasr.client.stream import StreamingClient
    from mtasr.client.transcribe import transcribe_file
    from tqdm import tqdm

    from mtasr.deployment import local_server_config
    from mtasr.server import TritonServer

    sources = sorted((Path(evalset_dir) / AUDIO_DIR).glob("*.wav"))
    if not sources:
        raise FileNotFoundError(f"no evaluation audio under {evalset_dir / AUDIO_DIR}")
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
                make_segment(session, f"speaker_{slot}", round(start * frame_s, 3), round(end * frame_s, 3))
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


def quality_table(groups: dict[str, dict], diarizer: dict[str, dict] | None = None) -> str:
    """Markdown: speakers, sessions, reference words, (cp)WER and DER of the served transcripts, and the DER
    of the streaming diarizer alone (its own turns, not the words')."""
    lines = [
        "| speakers | sessions | ref words | cpWER (= WER for 1 speaker) | DER (words' turns) | DER (diarizer alone) |",
        "|---|---|---|---|---|---|",
    ]
    for prefix, g in groups.items():
        der = (g["der"] or {}).get("error_rate")
        alone = ((diarizer or {}).get(prefix, {}).get("der") or {}).get("error_rate")
        lines.append(
            f"| {prefix.removeprefix('spk')} | {g['sessions']} | {g['cpwer']['length']} | "
            f"{_percent(g['cpwer']['error_rate'])} | {_percent(der)} | {_percent(alone)} |"
        )
    return "\n".join(lines) + "\n"


def evaluate(repo: Path, evalset_dir: Path, out_dir: Path, jobs: int = 2) -> dict[str, dict]:
    """Transcribe and score; diarize and score; writes `out_dir/hyp/`, `diarizer/`, `quality.json`, `quality.md`."""
    out_dir = Path(out_dir)
    hyp_dir = out_dir / "hyp"
    hyp_dir.mkdir(parents=True, exist_ok=True)
    transcribe_evalset(repo, evalset_dir, hyp_dir, jobs)
    groups = score_by_speaker_count(hyp_dir, evalset_dir)
    diarizer_dir = out_dir / "diarizer"
    diarize_evalset(repo, evalset_dir, diarizer_dir)
    diarizer = score_by_speaker_count(diarizer_dir, evalset_dir)
    (out_dir / "quality.json").write_text(json.dumps({"served": groups, "diarizer": diarizer}, indent=1) + "\n")
    (out_dir / "quality.md").write_text(quality_table(groups, diarizer))
    return {"served": groups, "diarizer": diarizer}
