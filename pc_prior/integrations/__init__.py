"""CompressAI entropy models backed by probabilistic circuits."""

from .api import (
    build_codec,
    collect_conditional_inputs,
    collect_latents,
    crop_to_multiple,
    fit_prior,
    list_images,
    load_codec,
    load_image,
    pad_to_multiple,
    read_codec_file,
    save_codec,
    swap_entropy_model,
)
from .conditional import PCConditional
from .context import CheckerboardContext
from .entropy_models import PCEntropyBottleneck

__all__ = [
    "CheckerboardContext",
    "PCConditional",
    "PCEntropyBottleneck",
    "build_codec",
    "collect_conditional_inputs",
    "collect_latents",
    "crop_to_multiple",
    "fit_prior",
    "list_images",
    "load_codec",
    "load_image",
    "pad_to_multiple",
    "read_codec_file",
    "save_codec",
    "swap_entropy_model",
]
