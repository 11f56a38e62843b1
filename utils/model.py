"""The captioner's parts under one name, for code written before they had modules of their own.

Each part now lives in the module of its concern: :mod:`utils.encoders` (the small CNN),
:mod:`utils.backbones` (pretrained CNNs and their encoders), :mod:`utils.attention`,
:mod:`utils.decoders`, :mod:`utils.losses` and :mod:`utils.captioner` (the model, its training
step and greedy decoding). Import from those; this module only re-exports them.
"""
from __future__ import annotations

from .attention import AdditiveAttention, DotProductAttention, RegionAttention  # noqa: F401
from .backbones import (BackboneEncoder, FeatureEncoder, FineTuningAdam,  # noqa: F401
                        make_optimizer)
from .captioner import (DECODERS, ENCODERS, SCORINGS, TRIM_MULTIPLE, Captioner,  # noqa: F401
                        FastCaptioner, Objective, build_captioner, caption_log_likelihood,
                        captioner_from_profile, greedy_decode, step_buckets, trimmed_steps)
from .decoders import (AttentionDecoder, CaptionDecoder, DecoderOutput,  # noqa: F401
                       Glimpses, HardAttentionDecoder, ShowAndTellDecoder)
from .encoders import RegionEncoder  # noqa: F401
from .losses import (doubly_stochastic_penalty, masked_cross_entropy,  # noqa: F401
                     real_token_mask, token_cross_entropy)
