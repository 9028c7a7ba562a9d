"""The committed default models (model_repository/), served, on the bundled demo conversation."""

from __future__ import annotations

import json

from mtasr.training.defaults import DEFAULT_REPOSITORY, DEMO_CONVERSATION

# What the committed pair reaches on the demo conversation (3 speakers, overlapping turns), with a
# margin: the demo is one 3-speaker session, so these guard against regressions, not quality claims
# (the quality table comes from `mtasr evaluate` on the whole evaluation set).
MAX_DEMO_CPWER = 0.60
MAX_DEMO_DER = 0.30


def test_default_repository_is_a_complete_modest_export():
    manifest = json.loads((DEFAULT_REPOSITORY / "manifest.json").read_text())
    assert set(manifest["checkpoints"]) == {"asr", "diarizer"}
    for name in ("multitalker_asr", "features", "diarization", "speaker_kernels", "asr"):
        assert (DEFAULT_REPOSITORY / name / "config.pbtxt").is_file()
    size = sum(f.stat().st_size for f in DEFAULT_REPOSITORY.rglob("*") if f.is_file())
    assert size <= 60 * 2**20, f"the committed repository is {size / 2**20:.1f} MB; the budget is 60 MB"


def test_default_models_transcribe_the_demo_conversation(tmp_path):
    from mtasr.client.audio import load_audio
    from mtasr.client.formats import SEGLST_SUFFIX
    from mtasr.client.stream import StreamingClient

    from mtasr.demo import score_against_reference
    from mtasr.deployment import load_manifest, models_to_load
    from mtasr.server import ServerConfig, TritonServer

    config = ServerConfig(
        model_repository=DEFAULT_REPOSITORY,
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        load_models=tuple(models_to_load(load_manifest(DEFAULT_REPOSITORY))),
    )
    with TritonServer(config) as server:
        client = StreamingClient(server.address("grpc"))
        transcript = client.transcribe(load_audio(str(DEMO_CONVERSATION), client.settings().sample_rate))
    overall = score_against_reference(transcript.seglst, DEMO_CONVERSATION.with_suffix(SEGLST_SUFFIX), tmp_path)
    assert len({s["speaker"] for s in transcript.seglst}) >= 2, "the diarizer should find several speakers"
    assert overall.cpwer.rate <= MAX_DEMO_CPWER, overall.cpwer
    assert overall.der.rate <= MAX_DEMO_DER, overall.der
