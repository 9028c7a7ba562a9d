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

# Tensor names between the stages and towards the client (docs/protocol.md documents each).
AUDIO = "AUDIO"
FEATURES = "FEATURES"
FEATURE_LENGTHS = "FEATURE_LENGTHS"
DROP_FRAMES = "DROP_FRAMES"
SPEAKER_PROBS = "SPEAKER_PROBS"
ENCODER_FRAMES = "ENCODER_FRAMES"
DIARIZER_FRAMES = "DIARIZER_FRAMES"
ACTIVE_SPEAKERS = "ACTIVE_SPEAKERS"
SPEAKER_MASKS = "SPEAKER_MASKS"
BACKGROUND_MASKS = "BACKGROUND_MASKS"
FEATURE_MASKS = "FEATURE_MASKS"
TOKEN_IDS = "TOKEN_IDS"
TOKEN_SPEAKERS = "TOKEN_SPEAKERS"
TOKEN_TIMES = "TOKEN_TIMES"
WORDS = "WORDS"
WORD_SPEAKERS = "WORD_SPEAKERS"
WORD_STARTS = "WORD_STARTS"
WORD_ENDS = "WORD_ENDS"
TRANSCRIPT = "TRANSCRIPT"

# Each stage's inputs and outputs as (name, Triton data type, dims without the batch dim). A tensor
# name is produced by exactly one stage, so these lists also say how the ensemble routes tensors.
_CHUNKS = [
    (FEATURES, "TYPE_FP32", [-1, -1, -1]),
    (FEATURE_LENGTHS, "TYPE_INT64", [-1]),
    (DROP_FRAMES, "TYPE_INT64", [-1]),
    (ENCODER_FRAMES, "TYPE_INT64", [-1]),
]
_PROBS = [(SPEAKER_PROBS, "TYPE_FP32", [-1, -1, -1]), (DIARIZER_FRAMES, "TYPE_INT64", [-1])]
_MASKS = [
    (ACTIVE_SPEAKERS, "TYPE_BOOL", [-1, -1]),
    (SPEAKER_MASKS, "TYPE_FP32", [-1, -1, -1]),
    (BACKGROUND_MASKS, "TYPE_FP32", [-1, -1, -1]),
    (FEATURE_MASKS, "TYPE_FP32", [-1, -1, -1]),
]
CLIENT_INPUTS = [(AUDIO, "TYPE_FP32", [-1])]
CLIENT_OUTPUTS = [
    (TOKEN_IDS, "TYPE_INT32", [-1]),
    (TOKEN_SPEAKERS, "TYPE_INT32", [-1]),
    (TOKEN_TIMES, "TYPE_FP32", [-1]),
    (WORDS, "TYPE_STRING", [-1]),
    (WORD_SPEAKERS, "TYPE_INT32", [-1]),
    (WORD_STARTS, "TYPE_FP32", [-1]),
    (WORD_ENDS, "TYPE_FP32", [-1]),
    (TRANSCRIPT, "TYPE_STRING", [1]),
]
STAGE_IO = {
    "features": (CLIENT_INPUTS, _CHUNKS),
    "diarization": (_CHUNKS[:3], _PROBS),
    "speaker_kernels": (_PROBS + [_CHUNKS[1], _CHUNKS[3]], _MASKS),
    "asr": (_CHUNKS + _MASKS, CLIENT_OUTPUTS),
}


def speaker_name(slot: int) -> str:
    """The speaker label of a diarizer slot, in every transcript (SegLST, RTTM, text)."""
    return f"speaker_{slot}"
