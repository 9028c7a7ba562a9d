"""Tensor names of the exported ASR graphs: one place for export, the stages and the docs.

The encoder's `encoded` output is channel-first [N, d_model, T] as NeMo's encoders return it;
caches and decoder states are batch-first.
"""

# What each (stream, speaker) instance brings to an encoder step besides its audio.
ENCODER_INSTANCE_INPUTS = (
    "cache_last_channel",  # [N, layers, cache, d_model]
    "cache_last_time",  # [N, layers, d_model, conv_cache]
    "cache_last_channel_len",  # [N] int64
    "speaker_mask",  # [N, T_enc]
    "background_mask",  # [N, T_enc]
)
# The whole encoder in one graph (`export --pre-encode speaker`): subsampling and layers per instance.
ENCODER_INPUTS = (
    "features",  # [N, n_mels, T_feat] float32
    "feature_lengths",  # [N] int64
    *ENCODER_INSTANCE_INPUTS,
    "drop_extra_pre_encoded",  # [N] int64
)
# Where the encoder's subsampling front end runs (`export --pre-encode`): once per stream in its own graph
# (`pre_encoder`), or inside the encoder graph for every speaker instance.
PRE_ENCODE_PER_STREAM, PRE_ENCODE_PER_SPEAKER = "stream", "speaker"
PRE_ENCODE_MODES = (PRE_ENCODE_PER_STREAM, PRE_ENCODE_PER_SPEAKER)
# The encoder split in two (`export --pre-encode stream`, the default): its subsampling front end once per
# stream, since every speaker of a stream hears the same features, then the layers per instance.
PRE_ENCODER_INPUTS = ("features", "feature_lengths", "drop_extra_pre_encoded")
PRE_ENCODER_OUTPUTS = (
    "pre_encoded",  # [N, T_enc, d_model] float32, the pre-encode cache's frames dropped
    "pre_encoded_lengths",  # [N] int64
)
ENCODER_LAYER_INPUTS = (*PRE_ENCODER_OUTPUTS, *ENCODER_INSTANCE_INPUTS)
ENCODER_OUTPUTS = (
    "encoded",
    "encoded_lengths",
    "next_cache_last_channel",
    "next_cache_last_time",
    "next_cache_last_channel_len",
)
DECODER_INPUTS = ("targets", "state_h", "state_c")
DECODER_OUTPUTS = ("prediction", "next_state_h", "next_state_c")
JOINT_INPUTS = ("encoder_frame", "prediction")
JOINT_OUTPUTS = ("logits",)
