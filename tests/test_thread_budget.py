"""The ONNX Runtime threads of the served processes add up to the machine, unless the export sets them."""

from mtasr.deployment import serving_threads


def _manifest(graph_backend: str = "onnxruntime", stage_instances: int = 1, graph_instances: int = 1) -> dict:
    return {
        "deployment": {
            "stage_instances": stage_instances,
            "instances": graph_instances,
            "serving": {"graph_backend": graph_backend},
        }
    }


def test_by_default_the_diarization_and_asr_processes_share_the_cores():
    assert serving_threads(_manifest(), 0, cores=2) == 1
    assert serving_threads(_manifest(), 0, cores=16) == 8
    assert serving_threads(_manifest(stage_instances=2), 0, cores=16) == 4


def test_graph_models_served_by_triton_share_the_cores_by_their_own_instances():
    assert serving_threads(_manifest("triton", stage_instances=4, graph_instances=1), 0, cores=16) == 8
    assert serving_threads(_manifest("triton", graph_instances=2), 0, cores=16) == 4


def test_every_process_gets_at_least_one_thread():
    assert serving_threads(_manifest(stage_instances=3), 0, cores=2) == 1


def test_threads_set_at_export_are_used_as_given():
    assert serving_threads(_manifest(), 3, cores=2) == 3


def test_a_repository_without_deployment_settings_shares_the_cores_between_two_processes():
    assert serving_threads({}, 0, cores=4) == 2
