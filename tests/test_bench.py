"""`mtasr bench`: its arithmetic, and the quick benchmark end to end (real tritonserver,
perf_analyzer and NeMo) producing a complete, well-formed report."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest

from mtasr.bench import report as bench_report
from mtasr.bench import run as bench
from mtasr.bench.accuracy import Int8Cost, edit_distance
from mtasr.bench.plan import EXPORT_PATH_VARIANTS, VARIANTS, right_context_for
from mtasr.bench.results import BenchResult, LoadPoint, MemoryPoint
from mtasr.bench.run import fit_memory
from mtasr.bench.steady import CALLS, SteadyCost, calls_per_chunk, chunk_windows, split_ms
from mtasr.deployment import available_cores


def test_latency_settings_are_right_contexts():
    assert [right_context_for(s) for s in (0.08, 0.16, 0.56, 1.12)] == [0, 1, 6, 13]
    with pytest.raises(ValueError, match="encoder frames"):
        right_context_for(0.5)


def test_plan_refuses_unknown_models_and_latencies():
    with pytest.raises(ValueError, match="unknown model sets"):
        bench.with_overrides(bench.PLANS["quick"], models=("huge",))
    with pytest.raises(ValueError, match="encoder frames"):
        bench.with_overrides(bench.PLANS["quick"], latencies_s=(0.3,))
    assert bench.with_overrides(bench.PLANS["full"], concurrency=None) == bench.PLANS["full"]
    with pytest.raises(ValueError, match="unknown variants"):
        bench.with_overrides(bench.PLANS["quick"], variants=("kvcache", "fp8"))
    with pytest.raises(ValueError, match="comes first"):
        bench.with_overrides(bench.PLANS["quick"], variants=("int8",))


def test_every_variant_is_reported_against_the_baseline_and_against_nemo():
    result = _result()
    result.points += [
        LoadPoint("full int8", 1.12, "gRPC stream", 1, 3.0, 3.36, 300, 330, 350),
        LoadPoint("full int8", 1.12, "gRPC stream", 2, 6.0, 6.72, 320, 360, 400),
    ]
    text = bench_report.render(result)
    assert "## Variants against the baseline (kvcache)" in text
    assert "| full | int8 | 1.12 s | 1 | 2.00x | 0.50x | 0.50x |" in text
    assert "| full | int8 | 1.12 s | 2 | 2.50x | 0.40x | 0.40x |" in text
    # against NeMo's one loop over the same checkpoints: 6.0 chunks/s against NeMo's 0.8 at 2 streams
    assert "| full int8 | 1.12 s | 2 | 7.50x |" in text


def test_every_variant_is_an_export_the_command_line_understands():
    """A variant is `mtasr export` with its options; the serving-only ones change the stages' settings."""
    from mtasr.cli import build_parser

    parser = build_parser(["export"])
    base = ["export", "--asr", "a.nemo", "--diarizer", "d.nemo", "--output", "out"]
    for name, variant in VARIANTS.items():
        args = parser.parse_args(base + variant.export_options())
        assert (args.encoder_cache, args.int8) == (variant.encoder_cache, variant.int8), name
    assert parser.parse_args(base + VARIANTS["threads-1"].export_options()).threads == 1
    assert parser.parse_args(base + VARIANTS["threads-all"].export_options()).threads == available_cores()
    assert parser.parse_args(base + VARIANTS["queue-5ms"].export_options()).max_queue_delay_us == 5000
    assert parser.parse_args(base + VARIANTS["pre-encode-speaker"].export_options()).pre_encode == "speaker"
    assert parser.parse_args(base + VARIANTS["batch-4"].export_options()).max_streams == 4
    assert parser.parse_args(base + VARIANTS["instances-2"].export_options()).stage_instances == 2
    assert parser.parse_args(base + VARIANTS["int8-asr"].export_options()).int8_graphs == "pre_encoder,encoder,decoder"
    assert parser.parse_args(base + VARIANTS["nemo-graphs"].export_options()).nemo_graphs
    assert set(EXPORT_PATH_VARIANTS) < set(VARIANTS)


def test_each_stages_batch_busy_share_and_queueing_come_from_tritons_counters():
    def metrics(asr_requests: int, asr_executions: int, compute_us: int, queue_us: int) -> str:
        return "\n".join(
            [
                "# HELP nv_inference_count Number of inferences performed",
                f'nv_inference_count{{model="asr",version="1"}} {asr_requests}',
                f'nv_inference_count{{model="multitalker_asr",version="1"}} {asr_requests}',  # the ensemble: no stage
                f'nv_inference_exec_count{{model="asr",version="1"}} {asr_executions}',
                f'nv_inference_compute_infer_duration_us{{model="asr",version="1"}} {compute_us}',
                f'nv_inference_queue_duration_us{{model="asr",version="1"}} {queue_us}',
                'nv_inference_count{model="features",version="1"} 7',
            ]
        )

    before = bench.stage_counters(metrics(100, 50, 1_000_000, 200_000))
    assert set(before) == {"features", "diarization", "speaker_kernels", "asr"}
    assert before["asr"] == {"requests": 100, "executions": 50, "queue_us": 200_000, "compute_us": 1_000_000}
    # 40 requests in 10 executions over 2 s: batches of 4; each request charged its execution's time (6 s in
    # all), so 1.5 s of the 2 executing; 5 ms waited per request.
    load = bench.stage_load(before, bench.stage_counters(metrics(140, 60, 7_000_000, 400_000)), 2.0)
    assert load == {"asr": {"batch": 4.0, "busy": 0.75, "queue_ms": 5.0}}  # stages that did not execute: none


def test_cpu_per_chunk_names_every_process_and_the_load_generator():
    before = {"tritonserver": 1.0, "asr": 2.0}
    after = {"tritonserver": 1.5, "asr": 6.0, "features": 0.5}  # a process first seen after: all its time counts
    assert bench.cpu_per_chunk(before, after, client_s=0.25, chunks=500) == {
        "tritonserver": 1.0,
        "asr": 8.0,
        "features": 1.0,
        bench.CLIENT_PROCESS: 0.5,
    }
    assert bench.cpu_per_chunk(before, after, client_s=0.25, chunks=0) == {}  # nothing served: nothing to divide


def test_real_time_needs_rtf_below_one_and_p99_within_a_chunk():
    # 2 streams processing 4 audio seconds per second: each stream at RTF 0.5.
    point = LoadPoint("full", 1.12, "gRPC stream", 2, 4.0, 4.0, 300, 500, 900)
    assert point.rtf == pytest.approx(0.5) and point.realtime
    assert not LoadPoint("full", 1.12, "gRPC stream", 2, 4.0, 4.0, 300, 500, 1200).realtime  # p99 > chunk
    assert not LoadPoint("full", 1.12, "gRPC stream", 4, 3.0, 3.0, 300, 500, 900).realtime  # RTF 1.33


def test_memory_fit_separates_speakers_only_when_they_vary_apart_from_streams():
    # 100 MB base, 3 MB per stream, 8 MB per speaker instance.
    layout = [(0, 0), (1, 1), (2, 3), (3, 6), (4, 10)]
    points = [MemoryPoint(s, k, 100 + 3 * s + 8 * k) for s, k in layout]
    per_stream, per_speaker = fit_memory(points)
    assert per_stream == pytest.approx(3) and per_speaker == pytest.approx(8)
    # Every stream with 4 speakers: only a per-stream figure (which then holds its speakers).
    points = [MemoryPoint(s, 4 * s, 100 + 35 * s) for s in range(4)]
    assert fit_memory(points) == (pytest.approx(35), None)


def _result() -> BenchResult:
    plan = bench.with_overrides(bench.PLANS["quick"], models=("full",))
    points = [
        LoadPoint("full", 1.12, "gRPC stream", 1, 1.5, 1.68, 600, 650, 700),
        LoadPoint("full", 1.12, "gRPC stream", 2, 2.4, 2.69, 800, 900, 1000),
        LoadPoint("full", 1.12, "HTTP", 1, 1.4, 1.57, 640, 700, 760),
        LoadPoint("full", 1.12, "NeMo PyTorch", 1, 0.5, 0.56, 2000, 2100, 2200),
        LoadPoint("full", 1.12, "NeMo PyTorch", 2, 0.8, 0.90, 2500, 2600, 2700),
    ]
    return BenchResult(plan, points=points, setup={"cores": "2"})


def test_report_states_ratios_and_targets():
    result = _result()
    (row,) = bench_report.summary_rows(result)
    assert row["speedup"] == pytest.approx(2.69 / 0.90)
    assert (row["realtime_grpc"], row["realtime_http"], row["realtime_nemo"]) == (2, 1, 0)
    text = bench_report.render(result)
    assert "| full | 1.12 s | 1 | 3.00x | 0.30x | 0.32x |" in text  # served/NeMo at one stream
    assert "full: served throughput >= 3x NeMo at 1.12 s: 2.99x, not met" in text
    assert "RTF 0.595, p99 700 ms against a 1120 ms chunk, met" in text


def _levenshtein(a: list[int], b: list[int]) -> int:
    table = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = min(table[i - 1][j] + 1, table[i][j - 1] + 1, table[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return table[-1][-1]


def test_token_edit_distance_is_levenshtein():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b = (rng.integers(0, 4, rng.integers(0, 12)) for _ in range(2))
        assert edit_distance(a, b) == _levenshtein(list(a), list(b)), (a, b)
    assert edit_distance(np.array([5, 6, 7]), np.array([5, 6, 7])) == 0


def test_report_shows_what_int8_costs():
    result = _result()
    result.int8_costs.append(Int8Cost("default", 1.12, 2, 200, 9, 0.0123, 30, 6000, 40, 0.9, 0.925))
    text = bench_report.render(result)
    assert "## int8: what quantisation costs in accuracy" in text
    assert "| default | 1.12 s | 2 | 200 | 9 (4.5 %) | 0.0123 | 30 of 6000 (0.50 %) | 90.0 % | 92.5 % | 40 |" in text
    assert json.loads(json.dumps(result.to_dict()))["int8_costs"][0]["token_change_rate"] == pytest.approx(0.045)


def test_long_stream_windows_are_the_short_streams_span_and_after_the_cache_fills():
    # 36 chunks of 1.12 s (40 s), benchmark streams of 8 s, cache full after 30.08 s.
    early, full = chunk_windows(36, 1.12, 8.0, 30.08)
    assert early == [1, 2, 3, 4, 5, 6]  # chunk 0 (first calls) excluded; chunk 6 ends at 7.84 s, chunk 7 at 8.96 s
    assert full == list(range(27, 35))  # 27 starts at 30.24 s; the last, a padded partial chunk, excluded
    assert chunk_windows(3, 1.12, 8.0, 30.08) == ([1], [])  # a stream that never fills: no full figure


def test_chunk_time_split_adds_up_to_the_mean_chunk_time():
    chunks = [{"total": 1.0, "encoder": 0.5}, {"total": 2.0, "encoder": 1.0, "joint": 0.5}, {"total": 9.0}]
    split = split_ms(chunks, [0, 1])  # a graph a chunk did not call counts as 0 there
    assert split == pytest.approx({"encoder": 750.0, "joint": 250.0, "other": 500.0})
    assert sum(split.values()) == pytest.approx(1500.0) and split_ms(chunks, []) == {}


def test_graph_calls_are_counted_per_chunk():
    chunks = [{"total": 1.0, CALLS: {"encoder": 1, "joint": 15}}, {"total": 1.0, CALLS: {"encoder": 1, "joint": 18}}]
    assert calls_per_chunk(chunks, [0, 1]) == {"encoder": 1.0, "joint": 16.5}
    assert split_ms(chunks, [0, 1]) == pytest.approx({"other": 1000.0})  # counts are not times


def test_report_gives_the_cost_once_the_diarizer_cache_is_full():
    result = _result()
    split = {"diarizer": 500.0, "encoder": 700.0, "other": 210.0}
    calls = {"decoder": 6.0, "diarizer": 1.0, "encoder": 1.0, "joint": 20.5}
    result.steady.append(SteadyCost("full", 1.12, 40.0, 30.08, 8.0, 600, 1400, 2000, 4200, split, calls))
    text = bench_report.render(result)
    assert "## Once the diarizer's cache is full" in text
    assert "| full | 1.12 s | 40 s | 30.1 s | 600 / 1400 | 2000 / 4200 | 3.00x faster | 1.250 / 3.750 |" in text
    assert "1400 ms per 1120 ms chunk, RTF 1.250, not real time" in text  # the target line says so too
    assert (
        "- full @ 1.12 s: 1410 ms = diarizer 500, encoder 700, other 210; graph calls per chunk: decoder 6.0, " in text
    )
    assert json.loads(json.dumps(result.to_dict()))["steady"][0]["served_full_rtf"] == pytest.approx(1.25)


def test_results_json_gives_the_result_back():
    result = _result()
    result.steady.append(SteadyCost("full", 1.12, 40.0, 30.08, 8.0, 600, 1400, 2000, 4200, {"encoder": 1.0}))
    result.memory.append(bench.Memory("full", 3000.0, 500.0, [MemoryPoint(0, 0, 3000.0)], 39.0, None, 7.3))
    again = BenchResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result


def test_a_memory_fit_below_zero_is_reported_as_noise():
    result = _result()
    points = [MemoryPoint(0, 0, 343.0), MemoryPoint(1, 1, 372.0), MemoryPoint(8, 14, 386.0)]
    result.memory.append(bench.Memory("default", 343.0, 29.0, points, -12.3, 7.5, 0.29))
    assert "| default | 343 MB | +29 MB | ~0 (fit -12.3 MB: within noise) | 7.5 MB |" in bench_report.render(result)


def test_plot_is_a_png(tmp_path):
    path = bench_report.plot(_result(), tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------- end to end


def test_quick_benchmark_writes_a_complete_report(tmp_path):
    """`mtasr bench --mode quick`: every (system, concurrency) of the plan measured, figures sane."""
    pytest.importorskip("nemo.collections.asr")
    from mtasr.training.mixtures import espeak_available

    if not espeak_available():
        pytest.skip("espeak-ng (Debian package 'espeak-ng') is needed")
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "mtasr.cli", "bench", "--mode", "quick", "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = bench.PLANS["quick"]
    assert set(plan.variants) == set(EXPORT_PATH_VARIANTS)  # the suite's run covers every export path
    results = json.loads((out / bench_report.RESULTS).read_text())
    served = ["tiny" + VARIANTS[v].suffix for v in plan.variants]
    measured = {(p["model"], p["system"], p["concurrency"]) for p in results["points"]}
    expected = {(m, s, c) for m in served for s in ("gRPC stream", "HTTP") for c in plan.concurrency}
    expected |= {("tiny", "NeMo PyTorch", b) for b in plan.nemo_batches}
    assert measured == expected
    for p in results["points"]:
        assert p["latency_s"] == 1.12
        assert p["chunks_per_s"] > 0 and p["audio_s_per_s"] > 0
        assert 0 < p["p50_ms"] <= p["p90_ms"] <= p["p99_ms"]
        assert math.isfinite(p["rtf"]) and p["rtf"] > 0
    assert [m["model"] for m in results["memory"]] == served
    for memory in results["memory"]:
        assert memory["idle_mb"] > 0 and len(memory["points"]) == len(plan.memory_streams) + 1
        assert [p["streams"] for p in memory["points"]] == [0, *sorted(plan.memory_streams)]
        assert memory["points"][-1]["speaker_states"] > 0  # the asr stage reports what it holds
    (int8,) = results["int8_costs"]  # the int8 variant against the baseline, on the same audio
    assert int8["fp32_tokens"] > 0 and 0 <= int8["token_change_rate"]
    (steady,) = results["steady"]  # the tiny diarizer's cache fills within the quick plan's long stream
    assert steady["stream_s"] == plan.steady_stream_s and steady["fill_s"] < plan.steady_stream_s
    assert all(steady[k] > 0 for k in ("served_early_ms", "served_full_ms", "nemo_early_ms", "nemo_full_ms"))
    split = steady["served_full_split_ms"]  # every graph the stages call, and the rest
    assert set(split) == {"diarizer", "pre_encoder", "encoder", "decoder", "joint", "other"}
    assert min(split.values()) > 0
    calls = steady["served_full_calls"]  # one diarizer and one encoder call a chunk; decoding calls per step
    assert calls["diarizer"] == calls["pre_encoder"] == calls["encoder"] == 1 and calls["joint"] >= 1
    for p in results["points"]:  # Triton's counters say how each stage was loaded
        if p["system"] == "gRPC stream":
            assert set(p["stages"]) == {"features", "diarization", "speaker_kernels", "asr"}
            assert all(s["batch"] >= 1 and 0 < s["busy"] and s["queue_ms"] >= 0 for s in p["stages"].values())
            # and the processes' CPU where the time went, the stages', the server's and the load generator's
            assert {"features", "diarization", "asr", "tritonserver", bench.CLIENT_PROCESS} <= set(p["cpu_ms"])
            assert p["cpu_ms"]["asr"] > 0 and p["cpu_ms"][bench.CLIENT_PROCESS] > 0
    report = (out / bench_report.REPORT).read_text()
    assert "## The stages under load (gRPC)" in report and "## Where the CPU goes (gRPC)" in report
    headings = ("## Summary", "## Served against NeMo", "## Variants against the baseline", "## All measurements")
    for heading in (*headings, "## Server memory", "## Once the diarizer's cache is full", "## int8"):
        assert heading in report
    for name in served:
        assert report.count(f"| {name} | 1.12 s |") >= 2 * len(plan.concurrency) + 1  # every row, and the summary
    assert (out / bench_report.PLOT).read_bytes()[:4] == b"\x89PNG"
    assert "# mtasr bench (quick)" in proc.stdout
    assert np.isfinite(results["seconds"])


def test_encoder_cache_bench_times_both_caches_on_the_same_steps(tmp_path, capsys):
    """`python -m mtasr.bench.encoder_cache`: both graphs exported once, timed alternately, ratio printed."""
    from mtasr.bench.encoder_cache import main

    assert main(["--size", "tiny", "--rows", "2", "--repeats", "2", "--work-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "kv cache: median" in out and "input cache: median" in out and "kv / input:" in out
    assert sorted(p.parent.name for p in tmp_path.glob("*/encoder.onnx")) == ["tiny-rc13-input", "tiny-rc13-kv"]


def test_the_stages_split_is_printed_for_streams_stepped_together():
    """`python -m mtasr.bench.steady REPO --streams N [--threads T]`: N streams a step, each graph's share of a step,
    and the process's CPU time a chunk."""
    from mtasr.training.defaults import DEFAULT_REPOSITORY

    cmd = [sys.executable, "-m", "mtasr.bench.steady", str(DEFAULT_REPOSITORY), "--seconds", "4", "--streams", "2"]
    proc = subprocess.run([*cmd, "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    early, full = proc.stdout.splitlines()[:3:2]
    assert early.startswith("first 8 s: 2 steps of 2 chunks of 1120 ms, mean ")
    assert all(f"{graph} " in early for graph in ("diarizer", "pre_encoder", "encoder", "decoder", "joint", "other"))
    assert re.search(r"audio s/s in this process, [1-9]\d* ms CPU a chunk; graph calls per step: ", proc.stdout)
    assert "(cache full): no steps of 2 chunks (stream too short)" in full


def test_the_stages_split_is_printed_for_streams_of_spread_ages():
    """`python -m mtasr.bench.steady REPO --streams N --staggered`: streams that started at different times."""
    from mtasr.training.defaults import DEFAULT_REPOSITORY

    cmd = [sys.executable, "-m", "mtasr.bench.steady", str(DEFAULT_REPOSITORY), "--seconds", "4", "--streams", "2"]
    proc = subprocess.run([*cmd, "--staggered"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("2 streams of 4 s at evenly spread ages: 4 steps, mean ")
    assert "diarizer " in proc.stdout and "audio s/s in this process" in proc.stdout
