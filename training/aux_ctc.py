"""The config key of the training-only auxiliary CTC head (`training.asr_model`); its weight is the recipe's,
`training.asr.AUX_CTC_WEIGHT`. A leaf module, so the recipe and the model class need not import each other."""

AUX_CTC_WEIGHT_KEY = "aux_ctc_weight"
