"""`mtasr bench` and the other measuring tools: beside the runtime, never mounted into the serving container.

- `run`: the benchmark (`mtasr bench`): exports, serves, sweeps perf_analyzer, runs NeMo beside it;
- `plan` (presets, latency settings, audio) and `results` (what a run found; results.json);
- `report`: report.md and latency.png from a result; `steady`: steady-state cost per chunk;
- `accuracy`: what int8 costs in tokens and words; `perf_analyzer`: NVIDIA's perf_analyzer driver;
- `latency`: a quick latency and memory measurement of a served export;
- `nemo_streaming`: NeMo's own streaming multitalker loop, the reference of the parity tests.
"""
