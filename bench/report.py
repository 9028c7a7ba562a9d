"""The `mtasr bench` report folder: report.md (tables), latency.png (plot), results.json (figures)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mtasr.bench.plan import BASELINE_VARIANT, VARIANTS, variant_of
from mtasr.bench.steady import format_calls, format_split

if TYPE_CHECKING:
    from mtasr.bench.results import BenchResult, LoadPoint

REPORT, PLOT, RESULTS = "report.md", "latency.png", "results.json"
SERVED, NEMO = "gRPC stream", "NeMo PyTorch"
SYSTEMS = (SERVED, "HTTP", NEMO)
# The targets, checked on the full-size architecture.
TARGET_SPEEDUP = 3.0
TARGET_LATENCY_S = 1.12


def _settings(result: BenchResult) -> list[tuple[str, float]]:
    seen: dict[tuple[str, float], None] = {}
    for p in result.points:
        seen[(p.model, p.latency_s)] = None
    return list(seen)


def _select(result: BenchResult, model: str, latency: float, system: str) -> list[LoadPoint]:
    if system == NEMO:  # NeMo runs the checkpoints: every variant is compared with the same loop
        model = variant_of(model)[0]
    rows = [p for p in result.points if (p.model, p.latency_s, p.system) == (model, latency, system)]
    return sorted(rows, key=lambda p: p.concurrency)


def max_realtime_streams(points: list[LoadPoint]) -> int:
    """The most concurrent streams measured that all stay real time (0: not even one)."""
    return max((p.concurrency for p in points if p.realtime), default=0)


def best_throughput(points: list[LoadPoint]) -> float:
    return max((p.audio_s_per_s for p in points), default=0.0)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def summary_rows(result: BenchResult) -> list[dict]:
    rows = []
    for model, latency in _settings(result):
        grpc, http, nemo = (_select(result, model, latency, s) for s in SYSTEMS)
        one = {p.system: p for p in grpc[:1] + nemo[:1] if p.concurrency == 1}
        rows.append(
            {
                "model": model,
                "latency_s": latency,
                "served_audio_s_per_s": best_throughput(grpc),
                "http_audio_s_per_s": best_throughput(http),
                "nemo_audio_s_per_s": best_throughput(nemo),
                "speedup": best_throughput(grpc) / best_throughput(nemo) if best_throughput(nemo) else None,
                "realtime_grpc": max_realtime_streams(grpc),
                "realtime_http": max_realtime_streams(http),
                "realtime_nemo": max_realtime_streams(nemo),
                "one_stream": {k: v.to_dict() for k, v in one.items()},
            }
        )
    return rows


def _fmt(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}"


def render(result: BenchResult) -> str:
    plan = result.plan
    lines = [
        f"# mtasr bench ({plan.mode})",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; wall time {result.seconds / 60:.1f} min.",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in result.setup.items()) + ".",
        "",
        f"Every stream is a {plan.speakers}-speaker espeak-ng conversation with overlaps, {plan.stream_s:g} s long; "
        "one perf_analyzer sequence is one stream and one request one chunk, sent as soon as the previous "
        "answer arrived (`--serial-sequences`), so a row's latency is the service time under that load. "
        "NeMo runs `B` streams batched in its own streaming loop (PyTorch, CPU, fp32); its latency is "
        "the wall time of one step (one chunk of every stream in the batch).",
        "",
        "Random-weight model sets (tiny, full) run with every speaker slot active in every chunk on both sides "
        "(`--all-slots-active`; NeMo's `cache_gating` off): their diarizer activates speakers whatever the "
        "audio says, and all slots active is the worst-case load. Random ASR weights also emit the most "
        "symbols per frame NeMo allows, so greedy decoding does its worst-case work on both sides too; "
        "the default (trained) models let their diarizer choose the active speakers.",
        "",
        f"Streams of {plan.stream_s:g} s stay short of the diarizer's steady state: Sortformer re-encodes its "
        "speaker cache and FIFO with every chunk, and the in-process stages feed them only as full as they are "
        "(NeMo's loop too), so a chunk costs more once a stream has filled them (the full-size diarizer holds "
        "30 s). *Once the diarizer's cache is full* below gives what a chunk costs then.",
        "",
        "RTF per stream = streams / audio seconds processed per second. A row is *real time* when RTF < 1 "
        "and p99 latency < the chunk length.",
        "",
        "## Summary",
        "",
        "| model | latency (chunk) | served gRPC audio s/s | HTTP audio s/s | NeMo audio s/s | served / NeMo "
        "| real-time streams gRPC / HTTP / NeMo |",
        "|---|---|---|---|---|---|---|",
    ]
    summary = summary_rows(result)
    for row in summary:
        speed = "n/a" if row["speedup"] is None else f"{row['speedup']:.2f}x"
        lines.append(
            f"| {row['model']} | {row['latency_s']:.2f} s | {_fmt(row['served_audio_s_per_s'], 2)} "
            f"| {_fmt(row['http_audio_s_per_s'], 2)} | {_fmt(row['nemo_audio_s_per_s'], 2)} | {speed} "
            f"| {row['realtime_grpc']} / {row['realtime_http']} / {row['realtime_nemo']} |"
        )
    lines += ["", *_targets(result, summary), "", "## Served against NeMo at the same number of streams", ""]
    lines += [
        "| model | latency | streams | throughput served/NeMo | p50 served/NeMo | p99 served/NeMo |",
        "|---|---|---|---|---|---|",
    ]
    for model, latency in _settings(result):
        nemo = _select(result, model, latency, NEMO)
        for streams, ratios in _paired_ratios(_select(result, model, latency, SERVED), nemo):
            lines.append(f"| {model} | {latency:.2f} s | {streams} | {ratios} |")
    lines += _variants(result)
    lines += ["", "## All measurements", ""]
    lines += [
        "| model | latency | system | streams | chunks/s | audio s/s | p50 ms | p90 ms | p99 ms | RTF/stream "
        "| real time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, latency in _settings(result):
        for system in SYSTEMS:
            if system == NEMO and variant_of(model)[1] != BASELINE_VARIANT:
                continue  # the baseline's rows
            for p in _select(result, model, latency, system):
                lines.append(
                    f"| {model} | {latency:.2f} s | {system} | {p.concurrency} | {_fmt(p.chunks_per_s, 2)} "
                    f"| {_fmt(p.audio_s_per_s, 2)} | {_fmt(p.p50_ms, 0)} | {_fmt(p.p90_ms, 0)} "
                    f"| {_fmt(p.p99_ms, 0)} | {_fmt(p.rtf, 3)} | {'yes' if p.realtime else 'no'} |"
                )
    if result.unstable:
        lines += ["", "No stable perf_analyzer measurement (twice), so not in the tables:", ""]
        lines += [f"- {item}" for item in result.unstable]
    if result.active_speakers:
        lines += ["", "Mean speaker instances the ASR runs per chunk (NeMo, batch 1, stream 0):", ""]
        lines += [f"- {k}: {v:.2f}" for k, v in result.active_speakers.items()]
    lines += _stage_loads(result)
    lines += _cpu_split(result)
    lines += _steady_costs(result)
    lines += _int8_costs(result)
    lines += ["", "## Server memory (resident: tritonserver and its python-backend processes)", ""]
    lines += [
        "| model | idle | first stream (with one-time set-up) | per further stream | per speaker instance "
        "(measured) | per speaker instance (encoder cache) | after the sweep |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in result.memory:
        per_stream = "n/a" if m.per_stream_mb is None else _fitted_mb(m.per_stream_mb)
        per_speaker = "not separable" if m.per_speaker_mb is None else _fitted_mb(m.per_speaker_mb)
        after = "n/a" if m.after_sweep_mb is None else f"{m.after_sweep_mb:.0f} MB"
        lines.append(
            f"| {m.model} | {m.idle_mb:.0f} MB | +{m.first_stream_mb:.0f} MB | {per_stream} | {per_speaker} "
            f"| {m.speaker_state_mb:.2f} MB | {after} |"
        )
    lines.append("")
    for m in result.memory:
        points = "; ".join(f"{p.streams} / {p.speaker_states}: {p.rss_mb:.0f} MB" for p in m.points)
        lines.append(f"- {m.model}, open streams / speaker instances: {points}")
    lines += [
        "",
        "Measured on a fresh server before the sweep: streams of 1, 2, 3, 4 speakers opened in turn and held "
        "open (three chunks sent, no END). The first stream also pays the one-time set-up (ONNX Runtime "
        "arenas, first inference); per further stream and per speaker instance come from a least-squares fit "
        "of memory against streams and speaker instances over the open-stream points. Where every stream "
        "holds the same number of speakers (all slots active) the two cannot be told apart and per stream "
        "includes its speakers. After the sweep, the arenas have grown to the largest batch.",
        "",
        f"![latency against concurrency]({PLOT})",
        "",
    ]
    return "\n".join(lines)


def _paired_ratios(points: list[LoadPoint], reference: list[LoadPoint]) -> list[tuple[int, str]]:
    """(streams, "throughput | p50 | p99" ratios) of each point against the reference at the same streams."""
    by_streams = {q.concurrency: q for q in reference}
    pairs = [(p, by_streams[p.concurrency]) for p in points if p.concurrency in by_streams]
    return [
        (
            p.concurrency,
            f"{_ratio(p.chunks_per_s, q.chunks_per_s)} | {_ratio(p.p50_ms, q.p50_ms)} | {_ratio(p.p99_ms, q.p99_ms)}",
        )
        for p, q in pairs
    ]


def _variants(result: BenchResult) -> list[str]:
    """Each variant's served gRPC throughput and latency against the baseline's at the same streams."""
    rows = []
    for model, latency in _settings(result):
        base_model, variant = variant_of(model)
        if variant == BASELINE_VARIANT:
            continue
        baseline = _select(result, base_model, latency, SERVED)
        for streams, ratios in _paired_ratios(_select(result, model, latency, SERVED), baseline):
            rows.append(f"| {base_model} | {variant} | {latency:.2f} s | {streams} | {ratios} |")
    if not rows:
        return []
    described = "; ".join(f"{name}: {variant.describe()}" for name, variant in VARIANTS.items())
    return [
        "",
        f"## Variants against the baseline ({BASELINE_VARIANT})",
        "",
        f"Exports of the same checkpoints ({described}), served at the same time and measured in turn at each "
        "concurrency, the order reversed from one concurrency to the next.",
        "",
        "| model | variant | latency | streams | throughput variant/baseline | p50 variant/baseline "
        "| p99 variant/baseline |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]


def _served_point_table(
    title: str, intro: str, columns: list[str], rows: list[tuple[LoadPoint, list[str]]]
) -> list[str]:
    """A report section of one row per served point: model, latency, streams, then `columns`."""
    lines = ["", f"## {title}", "", intro, "", "| model | latency | streams | " + " | ".join(columns) + " |"]
    lines.append("|---|---|---|" + "---|" * len(columns))
    for p, cells in rows:
        lines.append(f"| {p.model} | {p.latency_s:.2f} s | {p.concurrency} | " + " | ".join(cells) + " |")
    return lines


def _stage_loads(result: BenchResult) -> list[str]:
    """Each stage's batches, busy share and queueing under gRPC load (Triton's metrics over the whole
    perf_analyzer run, its warm-up included)."""
    points = [p for p in result.points if p.system == SERVED and p.stages]
    if not points:
        return []
    stages = list(dict.fromkeys(stage for p in points for stage in p.stages))

    def cell(load: dict[str, float] | None) -> str:
        return f"{load['batch']:.1f} / {100 * load['busy']:.0f} % / {load['queue_ms']:.1f} ms" if load else "n/a"

    return _served_point_table(
        "The stages under load (gRPC)",
        "Per stage: mean requests per execution (batch), share of the wall time its process spent executing "
        "(busy; summed over a stage's instances, so up to 100 % each), mean wait of a request before its "
        "execution (queue).",
        [f"{stage} batch / busy / queue" for stage in stages],
        [(p, [cell(p.stages.get(stage)) for stage in stages]) for p in points],
    )


def _cpu_split(result: BenchResult) -> list[str]:
    """CPU ms per chunk of every process under gRPC load: where the machine's cores went."""
    points = [p for p in result.points if p.system == SERVED and p.cpu_ms]
    if not points:
        return []
    names = list(dict.fromkeys(name for p in points for name in p.cpu_ms))

    def cells(p: LoadPoint) -> list[str]:
        total = sum(p.cpu_ms.values())
        used = [f"{p.cpu_ms[name]:.2f} ms" if name in p.cpu_ms else "n/a" for name in names]
        return [*used, f"{total:.2f} ms", f"{total * p.chunks_per_s / 1000:.2f}"]

    return _served_point_table(
        "Where the CPU goes (gRPC)",
        "CPU time (user + system) of each process per chunk served, over the whole perf_analyzer run: the stages' "
        "python-backend processes (their ONNX Runtime graphs included), tritonserver itself, and perf_analyzer, the "
        "load generator on the same machine. Their sum over the time per chunk is how many cores were in use.",
        [*names, "total", "cores in use"],
        [(p, cells(p)) for p in points],
    )


def _fitted_mb(value: float) -> str:
    # Below zero the fit has nothing to separate: memory hardly grew after the first stream.
    return f"{value:.1f} MB" if value >= 0 else f"~0 (fit {value:.1f} MB: within noise)"


def _steady_costs(result: BenchResult) -> list[str]:
    if not result.steady:
        return []
    lines = [
        "",
        "## Once the diarizer's cache is full",
        "",
        "One long stream, batch 1, timed chunk by chunk on both sides: the served stages in process "
        "(`LocalPipeline`: what the stage models run inside Triton, without Triton's overhead) and NeMo's loop "
        "(one step per chunk). Median chunk time over the chunks that end within the benchmark streams' length "
        "(the first excluded), and over the chunks after the diarizer's speaker cache and FIFO are full.",
        "",
        "| model | chunk | stream | cache full after | served ms/chunk early / full | NeMo ms/chunk early / full "
        "| served / NeMo once full | RTF once full served / NeMo |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in result.steady:
        lines.append(
            f"| {c.model} | {c.latency_s:.2f} s | {c.stream_s:g} s | {c.fill_s:.1f} s "
            f"| {c.served_early_ms:.0f} / {c.served_full_ms:.0f} | {c.nemo_early_ms:.0f} / {c.nemo_full_ms:.0f} "
            f"| {_ratio(c.nemo_full_ms, c.served_full_ms)} faster | {c.served_full_rtf:.3f} / {c.nemo_full_rtf:.3f} |"
        )
    splits = [c for c in result.steady if c.served_full_split_ms]
    if splits:
        lines += ["", "Where a served chunk's time goes once the cache is full (mean ms per chunk):", ""]
    for c in splits:
        calls = f"; graph calls per chunk: {format_calls(c.served_full_calls)}" if c.served_full_calls else ""
        lines.append(f"- {c.model} @ {c.latency_s:.2f} s: {format_split(c.served_full_split_ms)}{calls}")
    return lines


def _int8_costs(result: BenchResult) -> list[str]:
    if not result.int8_costs:
        return []
    lines = [
        "",
        "## int8: what quantisation costs in accuracy",
        "",
        "Each int8 export (a row per variant) against the fp32 export of the same checkpoints, on the same audio "
        "(the demo conversation, "
        "held-out sentences in the default models' voices with a reference transcript, and the first benchmark "
        "stream), both run in process exactly as served. Tokens changed = edit distance of each speaker slot's "
        "int8 tokens from its fp32 tokens over the fp32 token count; activity flips = frame-slot speaking "
        "decisions (probability > 0.5) that int8 changes. cpWER is against the demo's reference; only the "
        "trained (default) models' words mean anything, random weights show the numeric drift alone.",
        "",
        "| model | latency | sessions | fp32 tokens | tokens changed | speaker prob. max diff | activity flips "
        "| cpWER fp32 | cpWER int8 | ref words |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result.int8_costs:
        cpwer = [f"{100 * v:.1f} %" if v is not None else "n/a" for v in (c.fp32_cpwer, c.int8_cpwer)]
        lines.append(
            f"| {c.model} | {c.latency_s:.2f} s | {c.sessions} | {c.fp32_tokens} "
            f"| {c.token_edits} ({100 * c.token_change_rate:.1f} %) | {c.max_prob_diff:.4f} "
            f"| {c.activity_flips} of {c.activity_decisions} ({100 * c.flip_rate:.2f} %) "
            f"| {cpwer[0]} | {cpwer[1]} | {c.ref_words} |"
        )
    return lines


def _targets(result: BenchResult, summary: list[dict]) -> list[str]:
    rows = [r for r in summary if variant_of(r["model"])[0] == "full"]
    if not rows:
        return ["Targets are checked on the full-size architecture, which this run did not include."]
    out = ["Targets (full-size architecture):", ""]
    for row in rows:
        speed = row["speedup"]
        verdict = "met" if speed is not None and speed >= TARGET_SPEEDUP else "not met"
        shown = "n/a" if speed is None else f"{speed:.2f}x"
        out.append(
            f"- {row['model']}: served throughput >= {TARGET_SPEEDUP:g}x NeMo at {row['latency_s']:.2f} s: "
            f"{shown}, {verdict}"
        )
    for model in dict.fromkeys(r["model"] for r in rows):
        for p in _select(result, model, TARGET_LATENCY_S, SERVED):
            if p.concurrency == 1:
                verdict = "met" if p.realtime else "not met"
                out.append(
                    f"- {model}: one {result.plan.speakers}-speaker stream in real time at {TARGET_LATENCY_S} s: "
                    f"RTF {p.rtf:.3f}, p99 {p.p99_ms:.0f} ms against a {1000 * TARGET_LATENCY_S:.0f} ms chunk, "
                    f"{verdict}"
                )
    for c in result.steady:
        if variant_of(c.model)[0] == "full" and c.latency_s == TARGET_LATENCY_S:
            verdict = "real time" if c.served_full_rtf < 1 else "not real time"
            out.append(
                f"- {c.model}: the same stream once the diarizer's cache is full (in process, batch 1): "
                f"{c.served_full_ms:.0f} ms per {1000 * c.latency_s:.0f} ms chunk, RTF {c.served_full_rtf:.3f}, "
                f"{verdict}"
            )
    return out


def plot(result: BenchResult, path: Path) -> Path:
    """p50 (solid) and p99 (dashed) chunk latency against concurrent streams, one panel per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = _settings(result)
    models = list(dict.fromkeys(m for m, _ in settings))
    latencies = sorted({lat for _, lat in settings})
    fig, axes = plt.subplots(
        len(models), len(latencies), figsize=(max(7.0, 4.2 * len(latencies)), 3.4 * len(models) + 0.6), squeeze=False
    )
    colours = dict(zip(SYSTEMS, ("tab:blue", "tab:green", "tab:red"), strict=True))
    for i, model in enumerate(models):
        for j, latency in enumerate(latencies):
            ax = axes[i][j]
            if (model, latency) not in settings:  # e.g. int8 at one setting only: no panel of NeMo alone
                ax.set_visible(False)
                continue
            for system in SYSTEMS:
                points = _select(result, model, latency, system)
                if not points:
                    continue
                x = [p.concurrency for p in points]
                ax.plot(x, [p.p50_ms for p in points], "o-", color=colours[system], label=f"{system} p50")
                ax.plot(x, [p.p99_ms for p in points], "x--", color=colours[system], label=f"{system} p99")
            ax.axhline(1000 * latency, color="grey", lw=0.8, ls=":", label="chunk length")
            ax.set_xscale("log", base=2)
            ax.set_xticks(
                sorted({p.concurrency for p in result.points}),
                [str(c) for c in sorted({p.concurrency for p in result.points})],
            )
            ax.set_yscale("log")
            ax.set_title(f"{model}, {latency:.2f} s chunks", fontsize=10)
            ax.set_xlabel("concurrent streams")
            ax.set_ylabel("chunk latency (ms)")
            ax.grid(True, which="both", lw=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(result: BenchResult, out_dir: Path) -> Path:
    """report.md, latency.png and results.json into `out_dir`; returns the report's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RESULTS).write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    plot(result, out_dir / PLOT)
    report = out_dir / REPORT
    report.write_text(render(result))
    return report
