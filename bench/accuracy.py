"""What int8 quantisation costs in accuracy: an int8 export against its fp32 export, same audio.

Both repositories run in process (`LocalPipeline`, the served stages exactly) on the same
conversations. Per speaker slot, the int8 tokens are aligned with the fp32 tokens (edit distance:
how many tokens quantisation changed); the diarizer's speaker probabilities are compared frame by
frame (largest difference, and how many frame-slot decisions at 0.5 flip); where a conversation has
a reference transcript, both transcripts are scored against it (cpWER).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

ACTIVITY_THRESHOLD = 0.5  # a slot speaks in a frame when its probability is above this (as gating uses)


@dataclass
class Int8Cost:
    model: str
    latency_s: float
    sessions: int
    fp32_tokens: int
    token_edits: int  # int8 tokens against fp32 tokens, per speaker slot, summed over sessions
    max_prob_diff: float  # largest |int8 - fp32| speaker probability over every frame and slot
    activity_flips: int  # frame-slot decisions (probability > 0.5) that int8 changes
    activity_decisions: int
    ref_words: int = 0  # reference words of the scored sessions (0: none had a reference)
    fp32_cpwer: float | None = None
    int8_cpwer: float | None = None

    @property
    def token_change_rate(self) -> float:
        return self.token_edits / self.fp32_tokens if self.fp32_tokens else 0.0

    @property
    def flip_rate(self) -> float:
        return self.activity_flips / self.activity_decisions if self.activity_decisions else 0.0


def edit_distance(a: np.ndarray, b: np.ndarray) -> int:
    """Levenshtein distance between two token sequences (one row of the table at a time)."""
    row = np.arange(len(b) + 1)
    for i, x in enumerate(a, 1):
        diagonal = row[:-1] + (b != x)
        row = np.concatenate([[i], np.minimum(row[1:] + 1, diagonal)])
        row = np.minimum.accumulate(row - np.arange(len(row))) + np.arange(len(row))  # left-to-right insertions
    return int(row[-1])


def tokens_by_speaker(results: list[dict]) -> dict[int, np.ndarray]:
    """Every token a stream emitted, per speaker slot, in order."""
    from mtasr.protocol import TOKEN_IDS, TOKEN_SPEAKERS

    ids = np.concatenate([np.ravel(r[TOKEN_IDS]) for r in results]).astype(np.int64)
    slots = np.concatenate([np.ravel(r[TOKEN_SPEAKERS]) for r in results])
    return {int(s): ids[slots == s] for s in np.unique(slots)}


def measure_int8_cost(
    fp32_repo: Path,
    int8_repo: Path,
    model: str,
    latency_s: float,
    audios: list[np.ndarray],
    references: list[Path | None],
    work_dir: Path,
) -> Int8Cost:
    """Stream every conversation through both repositories and compare (see the module's docstring)."""
    import json

    from mtasr.client.demo import score_against_reference
    from mtasr.deployment import chunk_samples, load_manifest
    from mtasr.local_pipeline import LocalPipeline, speaker_probabilities
    from mtasr.protocol import TRANSCRIPT

    chunk = chunk_samples(load_manifest(fp32_repo))
    if chunk_samples(load_manifest(int8_repo)) != chunk:
        raise ValueError(f"{fp32_repo} and {int8_repo} are exported at different latency settings")
    pipelines = LocalPipeline(fp32_repo), LocalPipeline(int8_repo)
    cost = Int8Cost(model, latency_s, len(audios), 0, 0, 0.0, 0, 0)
    scores: dict[str, list] = {"fp32": [], "int8": []}
    for k, (audio, reference) in enumerate(zip(audios, references, strict=True)):
        fp32, int8 = (p.stream_all(audio, chunk, stream=1 + k) for p in pipelines)
        want, got = tokens_by_speaker(fp32), tokens_by_speaker(int8)
        for slot in want.keys() | got.keys():
            a, b = want.get(slot, np.zeros(0, np.int64)), got.get(slot, np.zeros(0, np.int64))
            cost.fp32_tokens += len(a)
            cost.token_edits += edit_distance(a, b)
        probs = [speaker_probabilities(fp32), speaker_probabilities(int8)]
        cost.max_prob_diff = max(cost.max_prob_diff, float(np.abs(probs[0] - probs[1]).max(initial=0.0)))
        decisions = [q > ACTIVITY_THRESHOLD for q in probs]
        cost.activity_flips += int(np.count_nonzero(decisions[0] != decisions[1]))
        cost.activity_decisions += decisions[0].size
        if reference is not None:
            for name, results in (("fp32", fp32), ("int8", int8)):
                seglst = json.loads(np.ravel(results[-1][TRANSCRIPT])[0])
                scores[name].append(score_against_reference(seglst, reference, work_dir / f"{name}-{k}").cpwer)
    if scores["fp32"]:
        totals = {name: sum(s[1:], s[0]) for name, s in scores.items()}
        cost.ref_words = int(totals["fp32"].length)
        cost.fp32_cpwer, cost.int8_cpwer = totals["fp32"].rate, totals["int8"].rate
    return cost


def main(argv: list[str] | None = None) -> int:
    """`python -m mtasr.bench.accuracy FP32_REPO INT8_REPO --evalset DIR`: the cost on an evaluation set."""
    import argparse
    import logging

    import soundfile as sf

    from mtasr.deployment import chunk_samples, load_manifest

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("fp32_repo", type=Path)
    parser.add_argument("int8_repo", type=Path, help="the same checkpoints exported with --int8 (or any variant)")
    parser.add_argument("--evalset", type=Path, required=True, help="`mtasr train evalset` folder: audio/, ref/")
    parser.add_argument("--exclude", default="long", help="skip sessions whose name starts with this ('' for none)")
    parser.add_argument("--work-dir", type=Path, default=Path("artifacts/int8-cost"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sessions = sorted((args.evalset / "audio").glob("*.wav"))
    sessions = [s for s in sessions if not (args.exclude and s.stem.startswith(args.exclude))]
    if not sessions:
        parser.error(f"no sessions under {args.evalset / 'audio'}")
    audios = [sf.read(s, dtype="float32")[0] for s in sessions]
    references = [args.evalset / "ref" / f"{s.stem}.seglst.json" for s in sessions]
    manifest = load_manifest(args.fp32_repo)
    latency = chunk_samples(manifest) / manifest["asr"]["features"]["sample_rate"]
    refs = [r if r.is_file() else None for r in references]
    cost = measure_int8_cost(args.fp32_repo, args.int8_repo, args.fp32_repo.name, latency, audios, refs, args.work_dir)
    cpwer = "n/a" if cost.fp32_cpwer is None else f"{100 * cost.fp32_cpwer:.1f} % -> {100 * cost.int8_cpwer:.1f} %"
    print(
        f"{cost.sessions} sessions: tokens changed {cost.token_edits}/{cost.fp32_tokens} "
        f"({100 * cost.token_change_rate:.1f} %), speaker-activity flips {cost.activity_flips}/"
        f"{cost.activity_decisions} ({100 * cost.flip_rate:.2f} %), largest probability change "
        f"{cost.max_prob_diff:.3f}, cpWER ({cost.ref_words} reference words) {cpwer}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
