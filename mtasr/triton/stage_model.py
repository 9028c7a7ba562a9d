"""Python-backend model for one stateful pipeline stage (features, diarization, speaker_kernels, asr).

Thin on purpose: read the sequence controls and tensors of each request, hand the whole batch to
the stage (:mod:`mtasr.stages`), answer each request with its outputs or its own error. A
background thread evicts streams idle past the timeout even when no request arrives.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np

from mtasr.deployment import ServingSettings, build_stage, load_manifest, local_graphs, serving_threads
from mtasr.graphs import TritonGraph, single_threaded_blas
from mtasr.protocol import (  # noqa: F401  (re-exported: the stage models' names)
    CONTROL_CORRID,
    CONTROL_END,
    CONTROL_START,
    DRAIN_POLL_S,
    ENV_DRAIN_FILE,
    FREE_STREAMS_METRIC,
    OPEN_STREAMS_METRIC,
    SPEAKER_STATES_METRIC,
)
from mtasr.stages import STAGE_IO, RequestError
from mtasr.streams import StageRequest, describe_stream


def _control(request, name: str) -> int:
    import triton_python_backend_utils as pb_utils

    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return int(tensor.as_numpy().reshape(-1)[0]) if tensor is not None else 0


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        single_threaded_blas()  # the stages run in parallel processes on shared cores
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.stage_name = params["stage"]
        repo_dir = Path(args["model_repository"]).parent
        manifest = load_manifest(repo_dir)
        settings = ServingSettings.from_strings(params)
        if settings.graph_backend == "triton":
            graphs = lambda name: TritonGraph(name, manifest["graphs"][name])  # noqa: E731
        else:
            threads = serving_threads(manifest, int(params.get("intra_op_threads", "0")), self.stage_name)
            graphs = local_graphs(repo_dir, manifest, threads)
        self.stage = build_stage(self.stage_name, manifest, repo_dir, settings, graphs)
        # The tensors this repository's config declares: one exported by an earlier version lacks the
        # newer ones (e.g. FEATURE_MASKS), and its stages still serve it.
        inputs, outputs = STAGE_IO[self.stage_name]
        declared = {t["name"] for t in config.get("input", []) + config.get("output", [])}
        self.inputs = [t for t in inputs if t[0] in declared]
        self.outputs = [t for t in outputs if t[0] in declared]
        import triton_python_backend_utils as pb_utils

        # The family must outlive its metrics (the backend refuses updates otherwise).
        self._metric_family = family = pb_utils.MetricFamily(
            name=OPEN_STREAMS_METRIC,
            description="streams whose state this pipeline stage holds",
            kind=pb_utils.MetricFamily.GAUGE,
        )
        labels = {"stage": self.stage_name, "instance": args["model_instance_name"]}
        self._open_streams = family.Metric(labels=labels)
        self._speaker_states = None
        if hasattr(self.stage, "speaker_states"):
            self._speaker_family = pb_utils.MetricFamily(
                name=SPEAKER_STATES_METRIC,
                description="speaker instances (encoder cache, hypothesis) the asr stage holds",
                kind=pb_utils.MetricFamily.GAUGE,
            )
            self._speaker_states = self._speaker_family.Metric(labels=labels)
        self._free_streams = None
        if self.stage.streams.capacity is not None:
            self._free_family = pb_utils.MetricFamily(
                name=FREE_STREAMS_METRIC,
                description="streams that may still start here before new ones are refused (server full)",
                kind=pb_utils.MetricFamily.GAUGE,
            )
            self._free_streams = self._free_family.Metric(labels=labels)
        # Set by `mtasr serve`: while this file exists the server is shutting down and takes no new streams.
        self._drain_file = os.environ.get(ENV_DRAIN_FILE)
        self._lock = threading.Lock()
        # Sequences whose START was refused -> when; Triton keeps them open until the idle timeout.
        self._refused: dict = {}
        self._update_gauges()  # the free slots are known before the first stream
        self._streams_file = f"{self._drain_file}.{args['model_instance_name']}.json" if self._drain_file else None
        self._stop = threading.Event()
        period = max(0.5, min(10.0, settings.sequence_idle_s / 4))
        self._evictor = threading.Thread(target=self._evict_loop, args=(period,), daemon=True)
        self._evictor.start()

    def _evict_loop(self, period: float) -> None:
        last_eviction = time.monotonic()
        while not self._stop.wait(DRAIN_POLL_S):
            if self._drain_file and os.path.exists(self._drain_file):
                self._publish_open_streams()
            if time.monotonic() - last_eviction < period:
                continue
            last_eviction = time.monotonic()
            with self._lock:
                self.stage.streams.evict_idle()
                self._update_gauges()
                expired = time.monotonic() - self.stage.streams.idle_timeout_s
                self._refused = {s: t for s, t in self._refused.items() if t > expired}

    def _publish_open_streams(self) -> None:
        # While draining, `mtasr serve` ends the streams still open after the grace period by sending
        # their END itself: Triton counts an open sequence as in flight and crashes when it stops with one.
        with self._lock:
            # Refused STARTs too: each still holds a sequence in Triton's batcher until its END.
            ids = [*self.stage.streams.ids(), *self._refused]
        tmp = f"{self._streams_file}.tmp"
        with open(tmp, "w") as f:
            json.dump(ids, f)
        os.replace(tmp, self._streams_file)  # readers never see half a file

    def _update_gauges(self) -> None:
        self._open_streams.set(len(self.stage.streams))
        if self._speaker_states is not None:
            self._speaker_states.set(self.stage.speaker_states())
        if self._free_streams is not None:
            self._free_streams.set(self.stage.streams.free())

    def _parse(self, request) -> StageRequest | RequestError:
        import triton_python_backend_utils as pb_utils

        tensors = {}
        for name, _, _ in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                return RequestError(f"missing input '{name}'")
            value = tensor.as_numpy()
            if value.shape[0] != 1:
                return RequestError(
                    f"input '{name}' must have batch size 1 (one chunk of one stream), got {value.shape[0]}"
                )
            tensors[name] = value[0]
        return StageRequest(
            # The whole id (int, or str for a string id), not the CORRID control tensor: Triton fills
            # that uint64 with the first 8 bytes of a serialised string id (its length and 4 characters),
            # so "room-0001" and "room-0002" would share one stream.
            stream=request.correlation_id(),
            start=bool(_control(request, CONTROL_START)),
            end=bool(_control(request, CONTROL_END)),
            inputs=tensors,
        )

    def _refuse_if_draining(self, request: StageRequest | RequestError) -> StageRequest | RequestError:
        # Only STARTs pay for the check (one stat); streams already open carry on to their END.
        if (
            isinstance(request, StageRequest)
            and request.start
            and self._drain_file
            and os.path.exists(self._drain_file)
        ):
            self._note_refused(request.stream)
            return RequestError(
                f"server shutting down: {describe_stream(request.stream)} was not started; "
                "start it again on another server or once this one is back"
            )
        return request

    def _note_refused(self, stream: int | str) -> None:
        with self._lock:
            self._refused[stream] = time.monotonic()

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        parsed = [self._refuse_if_draining(self._parse(r)) for r in requests]
        valid = [p for p in parsed if isinstance(p, StageRequest)]
        with self._lock:
            results = iter(self.stage.process(valid))
            self._update_gauges()
        responses = []
        for item in parsed:
            result = next(results) if isinstance(item, StageRequest) else item
            if isinstance(result, RequestError):
                if isinstance(item, StageRequest) and item.start:
                    self._note_refused(item.stream)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(result))))
                continue
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(result[name])[None]) for name, _, _ in self.outputs]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        self._stop.set()
