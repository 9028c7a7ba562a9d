"""Quality of an exported model repository on the evaluation set, through the served pipeline.

Starts tritonserver on the repository, streams every evaluation session through the ensemble
(as `mtasr transcribe` does), and scores the transcripts with `mtasr score`, per speaker count:
WER for one speaker (cpWER reduces to WER), cpWER and DER for two and three.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mtasr.training.evalset import AUDIO_DIR, REFERENCE_DIR


def transcribe_evalset(repo: Path, evalset_dir: Path, hyp_dir: Path, jobs: int = 2) -> None:
    """Serve `repo` and write each session's SegLST/RTTM/text into `hyp_dir`."""
    from mtasr.client.stream import StreamingClient
    from mtasr.client.transcribe import transcribe_file
    from tqdm import tqdm

    from mtasr.deployment import load_manifest, models_to_load
    from mtasr.server import ServerConfig, TritonServer

    sources = sorted((Path(evalset_dir) / AUDIO_DIR).glob("*.wav"))
    if not sources:
        raise FileNotFoundError(f"no evaluation audio under {evalset_dir / AUDIO_DIR}")
    config = ServerConfig(
        model_repository=Path(repo),
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        load_models=tuple(models_to_load(load_manifest(Path(repo)))),
    )
    with TritonServer(config) as server:
        client = StreamingClient(server.address("grpc"))
        with (
            ThreadPoolExecutor(max_workers=jobs) as pool,
            tqdm(total=len(sources), desc="transcribing", unit="file") as bar,
        ):
            for result in pool.map(lambda s: transcribe_file(client, str(s), hyp_dir, False, None), sources):
                if result.error:
                    raise RuntimeError(result.error)
                bar.update(1)


def score_by_speaker_count(hyp_dir: Path, evalset_dir: Path) -> dict[str, dict]:
    """`mtasr score` overall figures per group of sessions with 1, 2 and 3 speakers."""
    from mtasr.client.score import score

    groups: dict[str, dict] = {}
    ref_dir = Path(evalset_dir) / REFERENCE_DIR
    for prefix in sorted({p.name.split("-")[0] for p in ref_dir.iterdir()}):
        with_prefix = Path(hyp_dir).parent / f"_score_{prefix}"
        for side, folder in (("hyp", hyp_dir), ("ref", ref_dir)):
            target = with_prefix / side
            target.mkdir(parents=True, exist_ok=True)
            for f in Path(folder).glob(f"{prefix}-*"):
                (target / f.name).write_bytes(f.read_bytes())
        report = score(with_prefix / "hyp", with_prefix / "ref")
        overall = report.overall.to_dict()
        groups[prefix] = {
            "sessions": len(report.sessions),
            "cpwer": overall["cpwer"],
            "der": overall["der"],
        }
    return groups


def quality_table(groups: dict[str, dict]) -> str:
    """Markdown: speakers, sessions, reference words, (cp)WER, DER."""
    lines = ["| speakers | sessions | ref words | cpWER (= WER for 1 speaker) | DER |", "|---|---|---|---|---|"]
    for prefix, g in groups.items():
        cp, der = g["cpwer"], g["der"]
        der_rate = der.get("error_rate") if der else None
        lines.append(
            f"| {prefix.removeprefix('spk')} | {g['sessions']} | {cp['length']} | {100 * cp['error_rate']:.1f} % "
            f"| {'-' if der_rate is None else f'{100 * der_rate:.1f} %'} |"
        )
    return "\n".join(lines) + "\n"


def evaluate(repo: Path, evalset_dir: Path, out_dir: Path, jobs: int = 2) -> dict[str, dict]:
    """Transcribe and score; writes `out_dir/hyp/`, `quality.json` and `quality.md`."""
    out_dir = Path(out_dir)
    hyp_dir = out_dir / "hyp"
    hyp_dir.mkdir(parents=True, exist_ok=True)
    transcribe_evalset(repo, evalset_dir, hyp_dir, jobs)
    groups = score_by_speaker_count(hyp_dir, evalset_dir)
    (out_dir / "quality.json").write_text(json.dumps(groups, indent=1) + "\n")
    (out_dir / "quality.md").write_text(quality_table(groups))
    return groups
