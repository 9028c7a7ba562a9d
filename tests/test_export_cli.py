"""`mtasr export` from the command line: a complete repository that the real Triton serves, and one
clear error line (non-zero exit, nothing left behind) for each kind of bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from nemo_files import with_config

from mtasr.deployment import STAGE_COSTS, STAGES
from mtasr.export.repository import ROOT_FILES

GRAPHS = ["pre_encoder", "encoder", "decoder", "joint", "diarizer"]


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtasr.cli", *args], capture_output=True, text=True, timeout=timeout)


def export_tiny(checkpoints: tuple[Path, Path], out: Path, *extra: str) -> Path:
    """The tiny pair exported at right context 6, 4 streams per batch."""
    asr_path, diar_path = checkpoints
    args = ["--asr", str(asr_path), "--diarizer", str(diar_path), "--output", str(out)]
    result = run_cli("export", *args, "--right-context", "6", "--max-streams", "4", *extra)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def exported(tiny_checkpoints, tmp_path_factory) -> Path:
    return export_tiny(tiny_checkpoints, tmp_path_factory.mktemp("export") / "tiny")


def test_export_writes_graphs_tokenizer_manifest_and_both_repository_variants(exported, tiny_checkpoints):
    repo = exported / "model_repository"
    manifest = json.loads((repo / "manifest.json").read_text())
    for file in ROOT_FILES:
        assert (repo / file).is_file()
    for name in GRAPHS:
        assert (repo / name / "config.pbtxt").is_file()
        assert (repo / name / "1" / "model.py").is_file()
        assert (repo / name / "1" / "model.onnx").is_file()
        assert (exported / "tensorrt" / "model_repository" / name / "config.pbtxt").is_file()
    assert (exported / "tensorrt" / "build_engines.sh").stat().st_mode & 0o111
    assert not list(exported.parent.glob(".*staging*"))

    assert manifest["right_context"] == 6
    assert manifest["asr"]["streaming"]["encoder_frames_per_chunk"] == 7
    assert manifest["asr"]["decoding"]["blank_id"] == 64
    assert manifest["speaker_slots"] == 4
    from mtasr.export.checkpoints import sha256_of

    assert manifest["checkpoints"]["asr"]["sha256"] == sha256_of(tiny_checkpoints[0])
    assert manifest["checkpoints"]["diarizer"]["sha256"] == sha256_of(tiny_checkpoints[1])
    assert manifest["asr"]["features"]["n_mels"] == 128
    # What each stage cost per chunk on the bundled conversation: the server shares the cores by it.
    assert set(manifest["deployment"][STAGE_COSTS]) == set(STAGES)
    assert all(ms > 0 for ms in manifest["deployment"][STAGE_COSTS].values())
    # The manifest's tensor list is exactly what the graph declares.
    for name in GRAPHS:
        session = ort.InferenceSession(str(repo / name / "1" / "model.onnx"))
        assert [t["name"] for t in manifest["graphs"][name]["inputs"]] == [i.name for i in session.get_inputs()]
        assert [t["name"] for t in manifest["graphs"][name]["outputs"]] == [o.name for o in session.get_outputs()]


def test_generated_configs_read_every_value_from_the_manifest(exported):
    repo = exported / "model_repository"
    manifest = json.loads((repo / "manifest.json").read_text())
    encoder_config = (repo / "encoder" / "config.pbtxt").read_text()
    assert "max_batch_size: 16" in encoder_config  # 4 streams x 4 speaker slots
    assert "max_batch_size: 4" in (repo / "diarizer" / "config.pbtxt").read_text()
    streaming = manifest["asr"]["streaming"]
    width = streaming["channel_cache_width"]  # 2 x d_model for the projected key/value cache
    cache = f"dims: [ {streaming['n_layers']}, {streaming['last_channel_cache_size']}, {width} ]"
    assert cache in encoder_config


def test_real_triton_serves_the_exported_repository_and_matches_onnxruntime(exported):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from mtasr.server import ServerConfig, TritonServer

    repo = exported / "model_repository"
    manifest = json.loads((repo / "manifest.json").read_text())
    joint = manifest["graphs"]["joint"]
    rng = np.random.default_rng(0)
    feeds = {t["name"]: rng.standard_normal([3, *t["shape"][1:]]).astype(np.float32) for t in joint["inputs"]}
    want = ort.InferenceSession(str(repo / "joint" / "1" / "model.onnx")).run(None, feeds)[0]

    config = ServerConfig(model_repository=repo, http_port=0, grpc_port=0, metrics_port=0, startup_timeout_s=120)
    with TritonServer(config) as server:
        http = httpclient.InferenceServerClient(server.address("http"))
        for name in GRAPHS:
            assert http.is_model_ready(name)
        inputs = []
        for name, value in feeds.items():
            tensor = httpclient.InferInput(name, list(value.shape), "FP32")
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        got = http.infer("joint", inputs).as_numpy("logits")
        assert np.max(np.abs(got - want)) <= 1e-5

        # The encoder graphs' per-row scalars travel as [N, 1] and reach the graph as [N].
        for name in ("pre_encoder", "encoder"):
            graph = manifest["graphs"][name]
            graph_feeds = _serving_feeds(graph, rng)
            want_outputs = ort.InferenceSession(str(repo / name / "1" / "model.onnx")).run(None, graph_feeds)
            wire_inputs = []
            for input_name, value in graph_feeds.items():
                wire = value[:, None] if value.ndim == 1 else value
                tensor = httpclient.InferInput(
                    input_name, list(wire.shape), "INT64" if wire.dtype == np.int64 else "FP32"
                )
                tensor.set_data_from_numpy(wire)
                wire_inputs.append(tensor)
            served = http.infer(name, wire_inputs)
            for output, want_value in zip(graph["outputs"], want_outputs, strict=True):
                got_value = served.as_numpy(output["name"]).reshape(want_value.shape)
                assert np.max(np.abs(got_value - want_value)) <= 1e-5, (name, output["name"])

        grpc = grpcclient.InferenceServerClient(server.address("grpc"))
        bad = grpcclient.InferInput("encoder_frame", [3, joint["inputs"][0]["shape"][1]], "FP32")
        bad.set_data_from_numpy(np.full([3, joint["inputs"][0]["shape"][1]], np.nan, dtype=np.float32))
        good = grpcclient.InferInput("prediction", list(feeds["prediction"].shape), "FP32")
        good.set_data_from_numpy(feeds["prediction"])
        with pytest.raises(Exception, match="NaN"):
            grpc.infer("joint", [bad, good])
        assert grpc.is_server_live()  # one bad request does not take the model down


def _serving_feeds(graph: dict, rng: np.random.Generator, rows: int = 2) -> dict[str, np.ndarray]:
    """Random inputs of the shapes the server feeds `graph` (its manifest entry); lengths span the chunk."""
    serving = graph["serving_dims"]
    feeds = {}
    for tensor in graph["inputs"]:
        shape = [rows, *serving[tensor["name"]]]
        if tensor["dtype"] == "int64":
            feeds[tensor["name"]] = rng.integers(0, 2, shape).astype(np.int64)
        elif tensor["name"].endswith("_mask"):
            feeds[tensor["name"]] = rng.random(shape).astype(np.float32)
        else:
            feeds[tensor["name"]] = rng.standard_normal(shape).astype(np.float32)
    # features are [n_mels, T], pre_encoded [T, d_model]
    if "feature_lengths" in feeds:
        feeds["feature_lengths"] = np.full(rows, serving["features"][1], np.int64)
    if "pre_encoded_lengths" in feeds:
        feeds["pre_encoded_lengths"] = np.full(rows, serving["pre_encoded"][0], np.int64)
    return feeds


def test_tensorrt_profiles_span_one_to_n_instances_and_the_script_names_every_graph(exported):
    from mtasr.export.tensorrt import engine_profiles

    manifest = json.loads((exported / "model_repository" / "manifest.json").read_text())
    profiles = engine_profiles(manifest)
    assert set(profiles) == set(GRAPHS)
    features = profiles["pre_encoder"]["features"]
    streaming = manifest["asr"]["streaming"]
    frames = streaming["chunk_feature_frames"][1] + streaming["pre_encode_cache_frames"][1]
    assert features == {"min": [1, 128, frames], "opt": [8, 128, frames], "max": [16, 128, frames]}
    pre_encoded = [streaming["encoder_frames_per_chunk"], streaming["d_model"]]
    assert profiles["encoder"]["pre_encoded"] == {
        "min": [1, *pre_encoded],
        "opt": [8, *pre_encoded],
        "max": [16, *pre_encoded],
    }
    assert profiles["diarizer"]["spkcache"]["max"][0] == 4
    script = (exported / "tensorrt" / "build_engines.sh").read_text()
    assert subprocess.run(["bash", "-n", str(exported / "tensorrt" / "build_engines.sh")]).returncode == 0
    for name in GRAPHS:
        assert f"--saveEngine=$TRT_REPO/{name}/1/model.plan" in script
    assert script.count("--fp16") == len(GRAPHS)


def test_tensorrt_variant_configs_parse_as_triton_model_configs(exported):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    for name in GRAPHS:
        text = (exported / "tensorrt" / "model_repository" / name / "config.pbtxt").read_text()
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
        assert config.platform == "tensorrt_plan"
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


def test_asking_for_engines_without_tensorrt_fails_in_one_line(tiny_checkpoints, tmp_path):
    if shutil.which("trtexec"):
        pytest.skip("TensorRT is installed here: the engines would be built")
    out = tmp_path / "trt"
    result = run_cli(
        "export",
        "--asr",
        str(tiny_checkpoints[0]),
        "--diarizer",
        str(tiny_checkpoints[1]),
        "--output",
        str(out),
        "--tensorrt",
    )
    assert result.returncode != 0
    assert_one_error_line(result, "TensorRT is not installed here")
    assert not out.exists()


def assert_one_error_line(result: subprocess.CompletedProcess, fragment: str) -> None:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("case", ["missing", "wrong_class", "not_nemo", "right_context", "unwritable"])
def test_bad_input_gives_one_clear_error_line_and_leaves_nothing(case, tiny_checkpoints, tmp_path):
    asr_path, diar_path = tiny_checkpoints
    out = tmp_path / "out"
    args = {"asr": str(asr_path), "diarizer": str(diar_path), "output": str(out), "rc": "13"}
    fragment = {
        "missing": "ASR checkpoint not found",
        "wrong_class": "SortformerEncLabelModel, which is not EncDecMultiTalkerRNNTBPEModel or a subclass of it",
        "not_nemo": "is not a .nemo archive",
        "right_context": "right context 5 is not supported",
        "unwritable": "is not writable",
    }[case]
    if case == "missing":
        args["asr"] = str(tmp_path / "nope.nemo")
    elif case == "wrong_class":
        args["asr"] = str(diar_path)
    elif case == "not_nemo":
        (tmp_path / "junk.nemo").write_text("not a tar")
        args["diarizer"] = str(tmp_path / "junk.nemo")
    elif case == "right_context":
        args["rc"] = "5"
    elif case == "unwritable":
        # Under a regular file nobody, not even root, can create a folder.
        (tmp_path / "a_file").write_text("")
        out = tmp_path / "a_file" / "out"
        args["output"] = str(out)
    result = run_cli(
        "export",
        "--asr",
        args["asr"],
        "--diarizer",
        args["diarizer"],
        "--output",
        args["output"],
        "--right-context",
        args["rc"],
    )
    assert result.returncode == 2
    assert_one_error_line(result, fragment)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]


# Settings the served pipeline would run differently from NeMo's script: refused at export, before the
# model is loaded, in one line naming the setting. (role, config edit, what the line says)
UNSERVABLE = {
    "per_utterance_normalisation": (
        "asr",
        lambda c: c["preprocessor"].update(normalize="per_feature"),
        "preprocessor.normalize is 'per_feature'",
    ),
    "beam_search": ("asr", lambda c: c["decoding"].update(strategy="beam"), "decoding.strategy is 'beam'"),
    "full_context_attention": (
        "asr",
        lambda c: c["encoder"].update(att_context_style="regular"),
        "encoder.att_context_style is 'regular'",
    ),
    "kernels_in_two_layers": ("asr", lambda c: c.update(spk_kernel_layers=[0, 1]), "spk_kernel_layers is [0, 1]"),
    "no_background_kernel": ("asr", lambda c: c.update(add_bg_spk_kernel=False), "add_bg_spk_kernel is False"),
    "wrong_model_class": (
        "asr",
        lambda c: c.update(target="nemo.collections.asr.models.EncDecRNNTBPEModel"),
        "EncDecRNNTBPEModel, which is not EncDecMultiTalkerRNNTBPEModel",
    ),
    "class_that_does_not_import": (
        "diarizer",
        lambda c: c.update(target="nemo.collections.asr.models.NoSuchDiarizer"),
        "NoSuchDiarizer, which does not import here",
    ),
    "diarizer_mel_count": (
        "diarizer",
        lambda c: c["preprocessor"].update(features=80),
        "its features differ from the ASR's (n_mels 80 (ASR: 128))",
    ),
    "diarizer_sample_rate": (
        "diarizer",
        lambda c: c["preprocessor"].update(sample_rate=8000),
        "sample_rate 8000 (ASR: 16000)",
    ),
}


@pytest.mark.parametrize("case", sorted(UNSERVABLE))
def test_a_setting_served_differently_from_nemo_is_refused_before_loading(case, tiny_checkpoints, tmp_path):
    role, change, fragment = UNSERVABLE[case]
    paths = dict(zip(("asr", "diarizer"), tiny_checkpoints, strict=True))
    paths[role] = with_config(paths[role], tmp_path / f"{role}.nemo", change)
    out = tmp_path / "out"
    result = run_cli("export", "--asr", str(paths["asr"]), "--diarizer", str(paths["diarizer"]), "--output", str(out))
    assert result.returncode == 2
    assert_one_error_line(result, fragment)
    assert "loading" not in result.stderr  # refused from the config alone
    assert not out.exists()


def test_a_model_class_saved_under_another_path_or_subclassed_is_accepted():
    from mtasr.export.checkpoints import ASR_CLASS, DIARIZER_CLASS, check_model_class

    check_model_class("nemo.collections.asr.models.EncDecMultiTalkerRNNTBPEModel", ASR_CLASS, "ASR", "a.nemo")
    check_model_class("nemo.collections.asr.models.SortformerEncLabelModel", DIARIZER_CLASS, "diarizer", "d.nemo")
    # the training recipe's subclass (auxiliary CTC loss) is an EncDecMultiTalkerRNNTBPEModel
    check_model_class("mtasr.training.asr_model.MultiTalkerRNNTWithAuxCTC", ASR_CLASS, "ASR", "a.nemo")


def test_diarizer_settings_that_nemos_script_overrides_are_served_its_way_and_noted(tiny_checkpoints):
    from mtasr.export.checkpoints import ASR_CLASS, DIARIZER_CLASS, inspect_checkpoint
    from mtasr.export.compatibility import check_asr_config, check_diarizer_config

    asr_path, diar_path = tiny_checkpoints
    asr = check_asr_config(inspect_checkpoint(asr_path, "ASR", ASR_CLASS).config, asr_path)
    config = dict(inspect_checkpoint(diar_path, "diarizer", DIARIZER_CLASS).config)
    assert check_diarizer_config(config, asr, diar_path) == []
    notes = check_diarizer_config(dict(config, streaming_mode=False, async_streaming=True), asr, diar_path)
    assert len(notes) == 2
    assert "served streaming, as NeMo's script runs it" in notes[0]
    assert "NeMo 3.0's multitalker script cannot run" in notes[1]
    # Features that differ in value only (not in shape or time base) are served as NeMo's script does
    # (the ASR's), with a warning.
    other_guard = dict(config, preprocessor=dict(config["preprocessor"], log_zero_guard_value=1e-3))
    (note,) = check_diarizer_config(other_guard, asr, diar_path)
    assert "log_zero_guard_value 0.001" in note and "expect it to diarize worse" in note


@pytest.fixture(scope="module")
def exported_int8(tiny_checkpoints, tmp_path_factory) -> Path:
    """The `exported` pair again, with `--int8`."""
    return export_tiny(tiny_checkpoints, tmp_path_factory.mktemp("export_int8") / "tiny", "--int8")


def test_int8_export_quantises_every_graph_pointwise_convolutions_included_and_says_so(exported_int8, exported):
    from mtasr.export.quantize import QUANTIZATION, quantized_op_counts

    repo = exported_int8 / "model_repository"
    manifest = json.loads((repo / "manifest.json").read_text())
    fp32 = json.loads((exported / "model_repository" / "manifest.json").read_text())
    assert manifest["quantization"]["scheme"] == QUANTIZATION and fp32["quantization"] is None
    for name in GRAPHS:
        graph = manifest["graphs"][name]
        counts = quantized_op_counts(repo / graph["file"])
        assert graph["quantization"] == QUANTIZATION
        assert counts["DynamicQuantizeLinear"] > 0 or counts["DynamicQuantizeLSTM"] > 0
        assert counts["ConvInteger"] == 0  # slower than fp32 Conv on CPU, and less accurate
        assert graph["bytes"] == (repo / graph["file"]).stat().st_size < fp32["graphs"][name]["bytes"]
        if name == "decoder":
            assert counts["DynamicQuantizeLSTM"] >= 1
        else:
            assert counts["MatMulInteger"] > 0
        if name in ("pre_encoder", "encoder", "diarizer"):
            # Only the convolutions with wider kernels stay fp32: the pointwise ones became MatMuls.
            assert min(_conv_kernel_sizes(repo / graph["file"])) > 1, "a 1x1 convolution was left unquantised"
        assert fp32["graphs"][name]["quantization"] is None
        # Quantisation changes no tensor the server or the stages see.
        for key in ("inputs", "outputs", "serving_dims"):
            assert graph[key] == fp32["graphs"][name][key]
    assert (repo / "encoder" / "config.pbtxt").read_text() == (
        exported / "model_repository" / "encoder" / "config.pbtxt"
    ).read_text()
    assert not (exported_int8 / "tensorrt").exists()  # TensorRT builds its engines from fp32 graphs


def test_int8_of_some_graphs_quantises_those_and_keeps_the_others_fp32(tiny_checkpoints, tmp_path):
    from mtasr.export.quantize import QUANTIZATION

    out = export_tiny(tiny_checkpoints, tmp_path / "tiny", "--int8", "--int8-graphs", "encoder,decoder")
    manifest = json.loads((out / "model_repository" / "manifest.json").read_text())
    assert manifest["quantization"]["graphs"] == ["encoder", "decoder"]
    assert {name: graph["quantization"] for name, graph in manifest["graphs"].items()} == {
        name: QUANTIZATION if name in ("encoder", "decoder") else None for name in GRAPHS
    }
    asr_path, diar_path = tiny_checkpoints
    base = ["--asr", str(asr_path), "--diarizer", str(diar_path), "--output", str(tmp_path / "refused")]
    for extra, why in (
        (["--int8-graphs", "encoder"], "--int8-graphs needs --int8"),
        (["--int8", "--int8-graphs", "encoder,tokenizer"], "--int8-graphs takes some of pre_encoder, encoder"),
    ):
        result = run_cli("export", *base, *extra)
        assert result.returncode == 2 and why in result.stderr, result.stderr
    assert not (tmp_path / "refused").exists()


def _conv_kernel_sizes(path: Path) -> list[int]:
    """The kernel size (product of its spatial dims) of every Conv in the graph at `path`; 1 is pointwise."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    weights = {init.name: list(init.dims) for init in proto.graph.initializer}
    sizes = [int(np.prod(weights[n.input[1]][2:])) for n in proto.graph.node if n.op_type == "Conv"]
    assert sizes, "the graph should still hold its depthwise convolutions"
    return sizes


def test_the_encoder_front_end_runs_once_per_stream_and_gives_the_per_speaker_layouts_tokens(
    exported, tiny_checkpoints, tmp_path
):
    """Every speaker of a stream hears the same features: the default export runs the subsampling front end
    once per stream (its own graph), `--pre-encode speaker` inside the encoder for every speaker, as NeMo does.
    Three streams in one batch, every slot active: the same tokens, a quarter of the front-end rows."""
    from mtasr.deployment import load_manifest

    per_speaker = export_tiny(tiny_checkpoints, tmp_path / "per_speaker", "--pre-encode", "speaker")
    assert "pre_encoder" not in load_manifest(per_speaker / "model_repository")["graphs"]
    tokens, rows = {}, {}
    for name, repo in (("stream", exported), ("speaker", per_speaker)):
        pipeline = _every_slot_pipeline(repo)
        asr = pipeline.stages["asr"]
        counted = {
            graph: _RowCounter(getattr(asr, graph)) for graph in ("pre_encoder", "encoder") if getattr(asr, graph)
        }
        for graph, counter in counted.items():
            setattr(asr, graph, counter)
        tokens[name] = _three_streams_tokens(pipeline)
        rows[name] = {graph: counter.rows for graph, counter in counted.items()}
    assert tokens["stream"] == tokens["speaker"]
    assert sum(len(ids) for chunk_out in tokens["stream"] for ids, _ in chunk_out) > 0
    assert rows["stream"]["encoder"] == rows["speaker"]["encoder"] == 4 * rows["stream"]["pre_encoder"] > 0


def test_graph_rewrites_remove_work_and_keep_the_tokens(exported, tiny_checkpoints, tmp_path):
    """The default export traces NeMo's modules with `export.graph_rewrites`; `--nemo-graphs` traces them as they
    are. The rewritten graphs have no attention `Where`, fewer front-end multiplies and 2-D depthwise convolutions;
    three streams, every slot active, decode the same tokens either way."""
    import onnx

    as_nemo = export_tiny(tiny_checkpoints, tmp_path / "as_nemo", "--nemo-graphs")

    def ops(repo: Path, graph: str, scope: str) -> list[str]:
        nodes = onnx.load(str(repo / "model_repository" / graph / "1" / "model.onnx")).graph.node
        return [n.op_type for n in nodes if scope in n.name]

    for graph in ("encoder", "diarizer"):
        assert "Where" in ops(as_nemo, graph, "self_attn") and "Where" not in ops(exported, graph, "self_attn")
    assert ops(exported, "pre_encoder", "pre_encode").count("Mul") < ops(as_nemo, "pre_encoder", "pre_encode").count(
        "Mul"
    )

    tokens = {
        name: _three_streams_tokens(_every_slot_pipeline(repo))
        for name, repo in (("rewritten", exported), ("as_nemo", as_nemo))
    }
    assert tokens["rewritten"] == tokens["as_nemo"]
    assert sum(len(ids) for chunk_out in tokens["rewritten"] for ids, _ in chunk_out) > 0


def _every_slot_pipeline(export_dir: Path):
    """The export's stages in this process, every speaker slot active (the most encoder rows)."""
    from mtasr.deployment import ServingSettings
    from mtasr.local_pipeline import LocalPipeline

    settings = ServingSettings(graph_backend="onnxruntime", all_slots_active=True)
    return LocalPipeline(export_dir / "model_repository", settings)


def _three_streams_tokens(pipeline) -> list[list[tuple[list[int], list[int]]]]:
    """Per chunk, each of three streams' (token ids, speakers): the gliding tone at three levels, batched together."""
    from mtasr.deployment import chunk_samples
    from mtasr.protocol import TOKEN_IDS, TOKEN_SPEAKERS

    audio = _gliding_tone()
    chunk = chunk_samples(pipeline.manifest)
    pieces = [audio[i : i + chunk] for i in range(0, len(audio), chunk)]
    out = []
    for k, piece in enumerate(pieces):
        requests = [(stream, piece * (1 + stream), k == 0, k == len(pieces) - 1) for stream in range(3)]
        out.append([(r[TOKEN_IDS].tolist(), r[TOKEN_SPEAKERS].tolist()) for r in pipeline.step(requests)])
    return out


class _RowCounter:
    """A graph that counts the rows it is called on."""

    def __init__(self, graph) -> None:
        self.graph, self.rows = graph, 0

    def run(self, feeds):
        self.rows += len(next(iter(feeds.values())))
        return self.graph.run(feeds)


def test_pointwise_convolutions_rewritten_as_matmul_compute_the_same(exported, tmp_path):
    """The rewrite int8 export applies before quantising (1-D and 2-D 1x1 convolutions): in fp32 the
    encoder and diarizer compute what they did, chunk after chunk of a stream."""
    import shutil

    import onnx

    from mtasr.deployment import chunk_samples, load_manifest
    from mtasr.export.quantize import pointwise_convs_as_matmul
    from mtasr.graph_io import ENCODER_OUTPUTS, PRE_ENCODER_OUTPUTS
    from mtasr.local_pipeline import LocalPipeline
    from mtasr.sortformer_state import SPKCACHE_FIFO_CHUNK_PREDS

    original = exported / "model_repository"
    repo = tmp_path / "model_repository"
    shutil.copytree(original, repo)
    for name in ("pre_encoder", "encoder", "diarizer"):
        path = repo / name / "1" / "model.onnx"
        proto = onnx.load(str(path))
        assert pointwise_convs_as_matmul(proto) == _conv_kernel_sizes(path).count(1) > 0
        onnx.save(proto, str(path))
        assert min(_conv_kernel_sizes(path)) > 1
    pipeline = LocalPipeline(repo)
    asr, diarization = pipeline.stages["asr"], pipeline.stages["diarization"]
    asr.pre_encoder = pre_encoder = _AgainstFp32(
        asr.pre_encoder, original / "pre_encoder" / "1" / "model.onnx", PRE_ENCODER_OUTPUTS[0]
    )
    asr.encoder = encoder = _AgainstFp32(asr.encoder, original / "encoder" / "1" / "model.onnx", ENCODER_OUTPUTS[0])
    diarization.graph = diarizer = _AgainstFp32(
        diarization.graph, original / "diarizer" / "1" / "model.onnx", SPKCACHE_FIFO_CHUNK_PREDS
    )
    pipeline.transcribe(_gliding_tone(), chunk_samples(load_manifest(repo)))
    assert pre_encoder.errors and encoder.errors and diarizer.errors
    assert max(pre_encoder.errors + encoder.errors + diarizer.errors) < 1e-5


def _gliding_tone(seconds: float = 4.0) -> np.ndarray:
    """A gliding, gated tone in noise: enough for the random diarizer to wake speakers up."""
    t = np.arange(int(seconds * 16000)) / 16000
    rng = np.random.default_rng(0)
    tone = np.sin(2 * np.pi * (120 + 40 * np.sin(np.pi * t)) * t) * (np.sin(4 * np.pi * t) > 0)
    return (0.1 * tone + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


class _AgainstFp32:
    """Runs the int8 graph the pipeline calls and the fp32 graph on the same feed; keeps the relative error."""

    def __init__(self, graph, fp32_path: Path, output: str) -> None:
        from mtasr.graphs import OrtGraph

        self.graph, self.fp32, self.output, self.errors = graph, OrtGraph(fp32_path), output, []

    def run(self, feeds):
        got, want = self.graph.run(feeds), self.fp32.run(feeds)
        a, b = got[self.output], want[self.output]
        self.errors.append(float(np.linalg.norm(a - b) / np.linalg.norm(b)))
        return got


def test_int8_pipeline_runs_end_to_end_close_to_fp32(exported_int8, exported):
    from mtasr.deployment import chunk_samples, load_manifest
    from mtasr.graph_io import DECODER_OUTPUTS, ENCODER_OUTPUTS, JOINT_OUTPUTS, PRE_ENCODER_OUTPUTS
    from mtasr.local_pipeline import LocalPipeline
    from mtasr.sortformer_state import SPKCACHE_FIFO_CHUNK_PREDS
    from mtasr.stages import TRANSCRIPT

    repo, fp32_repo = exported_int8 / "model_repository", exported / "model_repository"
    pipeline = LocalPipeline(repo)
    asr, diarization = pipeline.stages["asr"], pipeline.stages["diarization"]
    asr.pre_encoder = pre_encoder = _AgainstFp32(
        asr.pre_encoder, fp32_repo / "pre_encoder" / "1" / "model.onnx", PRE_ENCODER_OUTPUTS[0]
    )
    asr.encoder = encoder = _AgainstFp32(asr.encoder, fp32_repo / "encoder" / "1" / "model.onnx", ENCODER_OUTPUTS[0])
    diarization.graph = diarizer = _AgainstFp32(
        diarization.graph, fp32_repo / "diarizer" / "1" / "model.onnx", SPKCACHE_FIFO_CHUNK_PREDS
    )
    asr.prediction = prediction = _AgainstFp32(
        asr.prediction, fp32_repo / "decoder" / "1" / "model.onnx", DECODER_OUTPUTS[0]
    )
    asr.joint = joint = _AgainstFp32(asr.joint, fp32_repo / "joint" / "1" / "model.onnx", JOINT_OUTPUTS[0])
    results = pipeline.transcribe(_gliding_tone(), chunk_samples(load_manifest(repo)))
    json.loads(results[-1][TRANSCRIPT][0])  # the final SegLST
    assert encoder.errors and diarizer.errors
    # Measured on this input (AVX2, 7-bit weights): encoder output ~0.9 %; with 8-bit weights on a CPU without
    # VNNI, int16 saturation made it 12 %, which this bound catches.
    assert 0 < max(pre_encoder.errors) < 0.05, pre_encoder.errors
    assert 0 < max(encoder.errors) < 0.05, encoder.errors
    assert 0 < max(diarizer.errors) < 0.05, diarizer.errors
    assert 0 < max(prediction.errors) < 0.05, prediction.errors
    assert 0 < max(joint.errors) < 0.05, joint.errors


def test_int8_cost_compares_tokens_speaker_activity_and_words(exported_int8, exported, tmp_path):
    """`mtasr bench`'s accuracy figures: nothing changes against itself; against int8, counts stay in range."""
    import soundfile as sf

    from mtasr import DEMO_CONVERSATION
    from mtasr.bench.accuracy import measure_int8_cost
    from mtasr.client.formats import SEGLST_SUFFIX

    fp32, int8 = exported / "model_repository", exported_int8 / "model_repository"
    demo, _ = sf.read(DEMO_CONVERSATION, dtype="float32")
    reference = DEMO_CONVERSATION.with_suffix(SEGLST_SUFFIX)
    audios, references = [demo[: 6 * 16000]], [reference]

    same = measure_int8_cost(fp32, fp32, "tiny", 0.56, audios, references, tmp_path / "same")
    assert (same.token_edits, same.activity_flips, same.max_prob_diff) == (0, 0, 0.0)
    assert same.fp32_cpwer == same.int8_cpwer is not None and same.ref_words > 0
    assert same.activity_decisions > 0 and same.fp32_tokens > 0

    cost = measure_int8_cost(fp32, int8, "tiny", 0.56, audios, references, tmp_path / "int8")
    assert cost.fp32_tokens == same.fp32_tokens and cost.activity_decisions == same.activity_decisions
    assert 0 < cost.max_prob_diff < 0.05  # measured ~0.1 % relative on the graph outputs (test above)
    assert cost.int8_cpwer is not None and cost.ref_words == same.ref_words


def test_int8_with_tensorrt_is_refused_in_one_line(tiny_checkpoints, tmp_path):
    out = tmp_path / "out"
    asr_path, diar_path = tiny_checkpoints
    result = run_cli(
        "export", "--asr", str(asr_path), "--diarizer", str(diar_path), "--output", str(out), "--int8", "--tensorrt"
    )
    assert result.returncode == 2
    assert_one_error_line(result, "--int8 and --tensorrt do not combine")
    assert not out.exists()
