"""What each stage of an exported pipeline costs per chunk, timed once at export.

The server shares the cores among the stages that run heavy graphs in proportion to these costs
(`mtasr.deployment.serving_threads`): which stage dominates depends on the models (the default pair's
ASR and diarizer cost alike; the full-size ASR costs several times its diarizer), so it is measured,
not guessed from sizes: the trained default's small ASR spends most of its time outside its matrix
products. The bundled conversation is streamed through the repository's stages in this process, one
stream, each graph on one thread, after a warm-up stream; the costs are stage milliseconds per chunk.
Only their ratio is used, so a slower or busier machine than the server's changes little.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["measure_stage_costs"]

WARM_UP_CHUNKS = 2  # ONNX Runtime's first calls allocate and plan


class _TimedStage:
    """A stage whose `process` calls add their wall time to `seconds[name]`."""

    def __init__(self, stage, name: str, seconds: dict[str, float]) -> None:
        self._stage, self._name, self._seconds = stage, name, seconds

    def process(self, requests):
        started = time.perf_counter()
        try:
            return self._stage.process(requests)
        finally:
            self._seconds[self._name] += time.perf_counter() - started


def measure_stage_costs(repo_dir: Path) -> dict[str, float]:
    """Milliseconds per chunk of each stage of the repository at `repo_dir` (its manifest written) on the
    bundled conversation. Raises what the pipeline raises: an export whose stages cannot stream a
    conversation is broken."""
    import soundfile as sf

    from mtasr import DEMO_CONVERSATION
    from mtasr.deployment import chunk_samples, load_manifest, local_graphs
    from mtasr.graphs import single_threaded_blas
    from mtasr.local_pipeline import LocalPipeline, stream_in_chunks

    manifest = load_manifest(repo_dir)
    audio, rate = sf.read(DEMO_CONVERSATION, dtype="float32")
    if rate != manifest["asr"]["features"]["sample_rate"] or audio.ndim != 1:
        raise ValueError(f"{DEMO_CONVERSATION} is not mono audio at the models' rate")
    chunk = chunk_samples(manifest)
    pipeline = LocalPipeline(repo_dir, graphs=local_graphs(repo_dir, manifest, intra_op_threads=1))
    seconds: dict[str, float] = defaultdict(float)
    with single_threaded_blas():  # as in the served stage processes
        stream_in_chunks(pipeline.step, audio[: WARM_UP_CHUNKS * chunk], chunk, stream=1)
        pipeline.stages = {name: _TimedStage(stage, name, seconds) for name, stage in pipeline.stages.items()}
        chunks = len(stream_in_chunks(pipeline.step, audio, chunk, stream=2))
    costs = {name: round(1000 * seconds[name] / chunks, 3) for name in pipeline.stages}
    logger.info("stage costs per chunk: %s", ", ".join(f"{name} {ms:.1f} ms" for name, ms in costs.items()))
    return costs
