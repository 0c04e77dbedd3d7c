"""CompressAI entropy models backed by probabilistic circuits."""

from .api import (
    build_codec, read_codec_file, collect_conditional_inputs, collect_latents, crop_to_multiple, fit_prior, list_images, load_codec, load_image, pad_to_multiple,
    save_codec, swap_entropy_model,
)
from .conditional import PCConditional
from .context import CheckerboardContext
from .entropy_models import PCEntropyBottleneck

__all__ = [
    "PCEntropyBottleneck", "PCConditional", "CheckerboardContext", "swap_entropy_model", "collect_conditional_inputs", "fit_prior", "collect_latents", "load_codec", "save_codec",
    "list_images", "load_image", "pad_to_multiple", "crop_to_multiple", "build_codec", "read_codec_file",
]
