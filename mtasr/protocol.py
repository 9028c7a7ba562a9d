"""Names shared by the server launcher, the Triton stage models, the exporter and the tools.

A leaf module (it imports nothing), so every side can take a name from here without pulling in the
others: the Triton python-backend models must not import the server launcher, nor the launcher the
stage models.
"""

# The ensemble clients call, and the stateful stages it chains, in order.
ENSEMBLE = "multitalker_asr"
STAGES = ("features", "diarization", "speaker_kernels", "asr")
MANIFEST = "manifest.json"

# Sequence-batcher controls. CORRID stays in the configs (the sequence batcher fills it) but streams
# are keyed by the request's id.
CONTROL_START, CONTROL_END, CONTROL_READY, CONTROL_CORRID = "START", "END", "READY", "CORRID"

# Prometheus gauges on Triton's metrics port: streams whose state a stage holds, per stage, and
# the speaker instances (encoder caches and hypotheses) the asr stage holds across its streams.
OPEN_STREAMS_METRIC = "mtasr_open_streams"
SPEAKER_STATES_METRIC = "mtasr_speaker_states"
# Streams that may still start on a stage instance that limits them (the features stage: a START
# beyond the limit gets "server full").
FREE_STREAMS_METRIC = "mtasr_free_stream_slots"

#: Environment variable naming the file whose existence tells the stages to refuse new streams
#: (set by the server launcher for its stubs; see ``mtasr.server.TritonServer.drain``).
ENV_DRAIN_FILE = "MTASR_DRAIN_FILE"
#: How often the stages look for that file (and, while draining, publish their open streams beside it).
DRAIN_POLL_S = 0.5
