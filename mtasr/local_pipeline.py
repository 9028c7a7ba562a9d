"""The served pipeline in one process: the same stages chained as the ensemble chains them.

For tests and tools that need the pipeline's exact behaviour without a server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mtasr.deployment import STAGES, GraphFactory, ServingSettings, build_stage, load_manifest, local_graphs
from mtasr.stages import DIARIZER_FRAMES, SPEAKER_PROBS, STAGE_IO, RequestError
from mtasr.streams import StageRequest


class LocalPipeline:
    def __init__(
        self, repo_dir: Path, settings: ServingSettings | None = None, graphs: GraphFactory | None = None
    ) -> None:
        """`settings`: by default the ones the repository was exported with, its graphs run in this
        process; `graphs`: how a stage gets its graphs (default: ONNX Runtime on the repository's files)."""
        self.manifest = load_manifest(repo_dir)
        settings = settings or ServingSettings.from_manifest(self.manifest, graph_backend="onnxruntime")
        graphs = graphs or local_graphs(repo_dir, self.manifest)
        self.stages = {name: build_stage(name, self.manifest, repo_dir, settings, graphs) for name in STAGES}

    def step(self, requests: list[tuple[int, np.ndarray, bool, bool]]) -> list[dict[str, np.ndarray] | RequestError]:
        """One batch of (stream, audio, start, end) through every stage, as one Triton batch would go."""
        _, outputs = STAGE_IO["asr"]
        return [r if isinstance(r, RequestError) else {n: r[n] for n, _, _ in outputs} for r in self.run(requests)]

    def run(self, requests: list[tuple[int, np.ndarray, bool, bool]]) -> list[dict[str, Any] | RequestError]:
        """Like `step`, with every stage's outputs (the diarizer's SPEAKER_PROBS, the masks, ...)."""
        tensors: list[dict[str, Any]] = [{"AUDIO": audio} for _, audio, _, _ in requests]
        failed: list[RequestError | None] = [None] * len(requests)
        for name in STAGES:
            inputs, _ = STAGE_IO[name]
            live = [i for i in range(len(requests)) if failed[i] is None]
            batch = [
                StageRequest(requests[i][0], requests[i][2], requests[i][3], {n: tensors[i][n] for n, _, _ in inputs})
                for i in live
            ]
            for i, result in zip(live, self.stages[name].process(batch), strict=True):
                if isinstance(result, RequestError):
                    failed[i] = result
                else:
                    tensors[i].update(result)
        return [failed[i] or tensors[i] for i in range(len(requests))]

    def transcribe(self, audio: np.ndarray, chunk_samples: int, stream: int = 1) -> list[dict[str, np.ndarray]]:
        """Stream one utterance in chunks of `chunk_samples`; the END request carries the last piece."""
        return stream_in_chunks(self.step, audio, chunk_samples, stream)

    def speaker_activity(self, audio: np.ndarray, chunk_samples: int, stream: int = 1) -> np.ndarray:
        """The streaming diarizer's speaker probabilities [frames, slots], as the served stage computes them."""
        return speaker_probabilities(self.stream_all(audio, chunk_samples, stream))

    def stream_all(self, audio: np.ndarray, chunk_samples: int, stream: int = 1) -> list[dict[str, Any]]:
        """Like `transcribe`, with every stage's outputs per chunk."""
        return stream_in_chunks(self.run, audio, chunk_samples, stream)


def stream_in_chunks(step, audio: np.ndarray, chunk_samples: int, stream: int) -> list[dict[str, Any]]:
    """One stream through `step` (`LocalPipeline.step` or `.run`, or a wrapper of them), a request per
    chunk of `chunk_samples`: START on the first, END on the last, which carries the last piece."""
    return [chunks[0] for chunks in streams_in_lockstep(step, [audio], chunk_samples, stream)]


def streams_in_lockstep(
    step, audios: list[np.ndarray], chunk_samples: int, first_stream: int
) -> list[list[dict[str, Any]]]:
    """Streams `first_stream`, `first_stream + 1`, ... (one per audio, all as long) through `step`, each
    call one batch with a chunk of every stream, as Triton batches streams that arrive together. Returns
    each step's results, one per stream."""
    if len({len(audio) for audio in audios}) > 1:
        raise ValueError("streams stepped together must be equally long")
    steps = streams_stepped(step, audios, chunk_samples, first_stream, [0] * len(audios))
    return [[results[i] for i in range(len(audios))] for results in steps]


def streams_stepped(
    step, audios: list[np.ndarray], chunk_samples: int, first_stream: int, starts: list[int]
) -> list[dict[int, dict[str, Any]]]:
    """Stream `first_stream + i` (audio i) from step `starts[i]` on, a chunk a step; each call to `step` one
    batch with the chunk of every stream live at that step (none: no call), as Triton batches streams that
    started at different times. Returns each step's results by audio index."""
    if len(starts) != len(audios):
        raise ValueError("one start step per stream")
    pieces = [max(1, -(-len(audio) // chunk_samples)) for audio in audios]
    results = []
    for t in range(max((s + n for s, n in zip(starts, pieces, strict=True)), default=0)):
        live = [i for i in range(len(audios)) if starts[i] <= t < starts[i] + pieces[i]]
        requests = []
        for i in live:
            k = t - starts[i]
            piece = audios[i][k * chunk_samples : (k + 1) * chunk_samples]
            requests.append((first_stream + i, piece, k == 0, k == pieces[i] - 1))
        step_results = step(requests) if requests else []
        for result in step_results:
            if isinstance(result, RequestError):
                raise result
        results.append(dict(zip(live, step_results, strict=True)))
    return results


def speaker_probabilities(chunks: list[dict[str, Any]]) -> np.ndarray:
    """The diarizer's probabilities [frames, slots] of a stream's chunks (`LocalPipeline.stream_all`)."""
    return np.concatenate(
        [c[SPEAKER_PROBS][0, : int(c[DIARIZER_FRAMES][0])] for c in chunks if int(c[DIARIZER_FRAMES][0])]
    )
