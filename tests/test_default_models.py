"""The committed default models (model_repository/), served, on the bundled demo conversation."""

from __future__ import annotations

import json

from mtasr import DEMO_CONVERSATION
from mtasr.training.defaults import DEFAULT_REPOSITORY

# The committed pair on the demo conversation (3 speakers, the first returning at the end, overlapping
# turns): the diarizer alone 4.4 % DER (its previous stage 1.5 %), the served transcript 16.7 % cpWER (5 of 30
# words; the pair was chosen on the selection set, `mtasr train evalset --selection`, not on this session); floors
# with a margin. One session guards against regressions; the quality table comes from `mtasr evaluate` on the
# whole evaluation set (docs/training.md). The ASR does not reach the project's targets yet (cpWER <= 15 % on the
# demo), so nothing here claims more.
MAX_DEMO_DIARIZER_DER = 0.10
MAX_DEMO_CPWER = 0.30


def test_default_repository_is_a_complete_modest_export():
    manifest = json.loads((DEFAULT_REPOSITORY / "manifest.json").read_text())
    assert set(manifest["checkpoints"]) == {"asr", "diarizer"}
    for name in ("multitalker_asr", "features", "diarization", "speaker_kernels", "asr"):
        assert (DEFAULT_REPOSITORY / name / "config.pbtxt").is_file()
    size = sum(f.stat().st_size for f in DEFAULT_REPOSITORY.rglob("*") if f.is_file())
    assert size <= 60 * 2**20, f"the committed repository is {size / 2**20:.1f} MB; the budget is 60 MB"


def test_default_models_serve_the_demo_conversation_and_diarize_it(tmp_path):
    import soundfile as sf

    from mtasr.client.audio import load_audio
    from mtasr.client.demo import score_against_reference
    from mtasr.client.formats import SEGLST_SUFFIX
    from mtasr.client.stream import StreamingClient
    from mtasr.deployment import load_manifest
    from mtasr.local_pipeline import LocalPipeline
    from mtasr.server import TritonServer, local_server_config
    from mtasr.training.evaluate import activity_segments

    manifest = load_manifest(DEFAULT_REPOSITORY)
    with TritonServer(local_server_config(DEFAULT_REPOSITORY)) as server:
        client = StreamingClient(server.address("grpc"))
        chunk = client.settings().chunk_samples
        transcript = client.transcribe(load_audio(str(DEMO_CONVERSATION), client.settings().sample_rate))
    assert transcript.chunks == -(-sf.info(DEMO_CONVERSATION).frames // chunk)
    reference = DEMO_CONVERSATION.with_suffix(SEGLST_SUFFIX)
    cpwer = score_against_reference(transcript.seglst, reference, tmp_path / "served").cpwer
    assert cpwer.rate <= MAX_DEMO_CPWER, cpwer

    audio, _ = sf.read(DEMO_CONVERSATION, dtype="float32")
    probs = LocalPipeline(DEFAULT_REPOSITORY).speaker_activity(audio, chunk)
    turns = activity_segments(probs, manifest["diarizer"]["geometry"]["frame_len_s"], "demo")
    der = score_against_reference(turns, reference, tmp_path / "diarizer").der
    assert len({t["speaker"] for t in turns}) == 3, turns
    assert der.rate <= MAX_DEMO_DIARIZER_DER, der


def _state_dict(nemo_path):
    """The weights inside a `.nemo` archive."""
    import tarfile

    import torch

    with tarfile.open(nemo_path) as archive:
        (member,) = [m for m in archive.getmembers() if m.name.endswith("model_weights.ckpt")]
        return torch.load(archive.extractfile(member), map_location="cpu", weights_only=True)


def test_default_checkpoints_export_to_the_served_models(tmp_path):
    """default_checkpoints/ (what `mtasr bench` and parity runs give NeMo) are the models model_repository/ serves:
    exported with the repository's settings, they give the same tokens and speaker probabilities on the demo."""
    import subprocess
    import sys

    import numpy as np
    import soundfile as sf

    from mtasr.deployment import chunk_samples, load_manifest
    from mtasr.local_pipeline import LocalPipeline
    from mtasr.training.defaults import DEFAULT_CHECKPOINTS

    manifest = load_manifest(DEFAULT_REPOSITORY)
    cmd = [sys.executable, "-m", "mtasr.cli", "export", "--output", str(tmp_path / "export")]
    cmd += ["--asr", str(DEFAULT_CHECKPOINTS["asr"]), "--diarizer", str(DEFAULT_CHECKPOINTS["diarizer"])]
    cmd += ["--right-context", str(manifest["right_context"])]
    cmd += ["--max-streams", str(manifest["deployment"]["max_streams_per_batch"])]
    geometry = manifest["diarizer"]["geometry"]
    cmd += ["--diarizer-cache", f"{geometry['spkcache_len']},{geometry['fifo_len']}"]
    cmd += ["--encoder-cache", manifest["asr"]["streaming"].get("channel_cache", "input")]  # absent: NeMo's layout
    if manifest["deployment"]["serving"].get("binary_speaker_masks"):
        cmd += ["--binary-speaker-masks"]
    cmd += ["--gating-chunks", str(manifest["deployment"]["serving"]["gating_chunks"])]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    exported = tmp_path / "export" / "model_repository"
    assert load_manifest(exported)["asr"] == manifest["asr"]
    assert load_manifest(exported)["deployment"]["serving"] == manifest["deployment"]["serving"]
    for key in ("geometry", "features"):
        assert load_manifest(exported)["diarizer"][key] == manifest["diarizer"][key], key

    audio, _ = sf.read(DEMO_CONVERSATION, dtype="float32")
    chunk = chunk_samples(manifest)
    served, rebuilt = LocalPipeline(DEFAULT_REPOSITORY), LocalPipeline(exported)
    for a, b in zip(served.transcribe(audio, chunk), rebuilt.transcribe(audio, chunk), strict=True):
        for name in ("TOKEN_IDS", "TOKEN_SPEAKERS", "TRANSCRIPT"):
            assert np.array_equal(a[name], b[name]), name
    probs = served.speaker_activity(audio, chunk, stream=2), rebuilt.speaker_activity(audio, chunk, stream=2)
    assert np.abs(probs[0] - probs[1]).max() <= 1e-5


def test_checkpoints_are_recovered_from_the_repository_graphs(tmp_path):
    """`python -m mtasr.training.recover` rebuilds default_checkpoints/ from model_repository/, weight for weight
    (every weight a graph holds; the one NeMo defines but never uses is in no graph)."""
    import torch

    from mtasr.training.defaults import DEFAULT_CHECKPOINTS
    from mtasr.training.recover import UNUSED_WEIGHTS, recover

    for name, path in zip(("asr", "diarizer"), recover(DEFAULT_REPOSITORY, tmp_path), strict=True):
        want, got = _state_dict(DEFAULT_CHECKPOINTS[name]), _state_dict(path)
        assert want.keys() == got.keys()
        for key in want:
            if not key.startswith(UNUSED_WEIGHTS):  # in no graph, so not recoverable (and not used)
                assert torch.equal(want[key], got[key]), key


def test_default_models_write_no_words_on_silence_or_faint_noise():
    """The earlier pair wrote "iris and" on any silence; the committed one is trained on wordless clips too."""
    import numpy as np

    from mtasr.deployment import chunk_samples, load_manifest
    from mtasr.local_pipeline import LocalPipeline

    pipeline = LocalPipeline(DEFAULT_REPOSITORY)
    chunk = chunk_samples(load_manifest(DEFAULT_REPOSITORY))
    quiet = np.random.default_rng(0).normal(0.0, 1e-3, 30 * 16000).astype(np.float32)  # about -60 dBFS
    for stream, audio in enumerate((np.zeros(30 * 16000, np.float32), quiet), start=1):
        results = pipeline.transcribe(audio, chunk, stream=stream)
        assert sum(len(r["WORDS"]) for r in results) == 0
        assert json.loads(results[-1]["TRANSCRIPT"][0]) == []


def segments(result: dict) -> list[dict]:
    """A final transcript's segments without their session id (the stream's own)."""
    return [{k: v for k, v in seg.items() if k != "session_id"} for seg in json.loads(result["TRANSCRIPT"][0])]


def test_streams_stepped_together_decode_what_each_decodes_alone():
    """The stages batch the chunks of streams that arrive together (one graph call for every stream's
    speakers); each stream's words are those it gets alone."""
    from mtasr.bench.plan import conversation_audio
    from mtasr.deployment import chunk_samples, load_manifest
    from mtasr.local_pipeline import LocalPipeline, streams_in_lockstep

    chunk = chunk_samples(load_manifest(DEFAULT_REPOSITORY))
    audios = [conversation_audio(n_speakers, seed, 6.0) for n_speakers, seed in ((2, 1), (3, 2), (1, 3))]
    together = streams_in_lockstep(LocalPipeline(DEFAULT_REPOSITORY).step, audios, chunk, first_stream=1)
    for i, audio in enumerate(audios):
        alone = LocalPipeline(DEFAULT_REPOSITORY).transcribe(audio, chunk, stream=1)
        words = [list(step[i]["WORDS"]) for step in together]
        assert words == [list(result["WORDS"]) for result in alone], i
        assert segments(together[-1][i]) == segments(alone[-1]), i
    assert any(len(step[0]["WORDS"]) for step in together), "nothing decoded: the comparison would be empty"


def test_streams_of_different_ages_batched_together_decode_what_each_decodes_alone():
    """Streams that started at different times share batches; the diarizer then calls its graph once per group
    of similar cache fill (`sortformer_state.width_batches`), and each stream's words are still those it gets
    alone."""
    from mtasr.bench.plan import conversation_audio
    from mtasr.deployment import chunk_samples, load_manifest
    from mtasr.local_pipeline import LocalPipeline, streams_stepped

    chunk = chunk_samples(load_manifest(DEFAULT_REPOSITORY))
    audios = [conversation_audio(n_speakers, seed, 9.0) for n_speakers, seed in ((2, 4), (3, 5), (2, 6))]
    steps = streams_stepped(LocalPipeline(DEFAULT_REPOSITORY).step, audios, chunk, first_stream=1, starts=[0, 3, 5])
    for i, audio in enumerate(audios):
        alone = LocalPipeline(DEFAULT_REPOSITORY).transcribe(audio, chunk, stream=1)
        staggered = [step[i] for step in steps if i in step]
        assert [list(r["WORDS"]) for r in staggered] == [list(r["WORDS"]) for r in alone], i
        assert segments(staggered[-1]) == segments(alone[-1]), i
    assert sum(len(r["WORDS"]) for step in steps for r in step.values()) > 10, "too little decoded to compare"
