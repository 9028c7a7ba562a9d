"""Tensor names of the exported ASR graphs: one place for export, the stages and the docs.

The encoder's `encoded` output is channel-first [N, d_model, T] as NeMo's encoders return it;
caches and decoder states are batch-first.
"""

ENCODER_INPUTS = (
    "features",  # [N, n_mels, T_feat] float32
    "feature_lengths",  # [N] int64
    "cache_last_channel",  # [N, layers, cache, d_model]
    "cache_last_time",  # [N, layers, d_model, conv_cache]
    "cache_last_channel_len",  # [N] int64
    "speaker_mask",  # [N, T_enc]
    "background_mask",  # [N, T_enc]
    "drop_extra_pre_encoded",  # [N] int64
)
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
