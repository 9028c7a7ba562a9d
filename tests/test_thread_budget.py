"""The ONNX Runtime threads of the served processes add up to the machine, shared by what each stage costs,
unless the export sets them."""

from mtasr.deployment import STAGE_COSTS, serving_threads, stage_of_graph


def _manifest(
    graph_backend: str = "onnxruntime", stage_instances: int = 1, graph_instances: int = 1, costs: dict | None = None
) -> dict:
    deployment = {
        "stage_instances": stage_instances,
        "instances": graph_instances,
        "serving": {"graph_backend": graph_backend},
    }
    if costs is not None:
        deployment[STAGE_COSTS] = costs
    return {"deployment": deployment}


# What `mtasr export` timed (ms per chunk): the trained default pair, and the full-size architecture.
ALIKE = {"features": 0.9, "diarization": 5.6, "speaker_kernels": 0.1, "asr": 9.0}
ASR_HEAVY = {"features": 2.5, "diarization": 150.0, "speaker_kernels": 0.7, "asr": 900.0}


def test_stages_that_cost_alike_share_the_cores_evenly():
    assert serving_threads(_manifest(costs=ALIKE), 0, "diarization", cores=2) == 1
    assert serving_threads(_manifest(costs=ALIKE), 0, "asr", cores=2) == 1


def test_the_stage_that_costs_most_gets_the_most_threads():
    assert serving_threads(_manifest(costs=ASR_HEAVY), 0, "asr", cores=2) == 2
    assert serving_threads(_manifest(costs=ASR_HEAVY), 0, "diarization", cores=2) == 1
    assert serving_threads(_manifest(costs=ASR_HEAVY), 0, "asr", cores=16) == 14
    assert serving_threads(_manifest(costs=ASR_HEAVY), 0, "diarization", cores=16) == 2
    assert serving_threads(_manifest(costs=ALIKE), 0, "asr", cores=16) == 10
    assert serving_threads(_manifest(costs=ALIKE), 0, "diarization", cores=16) == 6


def test_stage_instances_divide_their_stages_share():
    assert serving_threads(_manifest(stage_instances=2, costs=ASR_HEAVY), 0, "asr", cores=16) == 7
    assert serving_threads(_manifest(stage_instances=2, costs=ASR_HEAVY), 0, "asr", cores=2) == 1


def test_without_timed_costs_the_diarization_and_asr_processes_share_the_cores_evenly():
    assert serving_threads(_manifest(), 0, "asr", cores=2) == 1
    assert serving_threads(_manifest(), 0, "asr", cores=16) == 8
    assert serving_threads(_manifest(stage_instances=2), 0, "diarization", cores=16) == 4
    assert serving_threads({}, 0, "asr", cores=4) == 2


def test_graph_models_served_by_triton_share_the_cores_by_their_stage_and_their_own_instances():
    assert stage_of_graph("encoder") == stage_of_graph("joint") == "asr"
    assert stage_of_graph("diarizer") == "diarization"
    manifest = _manifest("triton", stage_instances=4, costs=ASR_HEAVY)
    assert serving_threads(manifest, 0, stage_of_graph("encoder"), cores=16) == 14
    assert serving_threads(_manifest("triton", graph_instances=2), 0, "asr", cores=16) == 4


def test_every_process_gets_at_least_one_thread():
    assert serving_threads(_manifest(stage_instances=3), 0, "asr", cores=2) == 1
    assert serving_threads(_manifest(costs={"diarization": 0.001, "asr": 1000.0}), 0, "diarization", cores=2) == 1
    assert serving_threads(_manifest(costs=ASR_HEAVY), 0, "features", cores=2) == 1


def test_threads_set_at_export_are_used_as_given():
    assert serving_threads(_manifest(costs=ASR_HEAVY), 3, "diarization", cores=2) == 3
