"""CompressAI entropy models backed by probabilistic circuits."""

from .api import collect_latents, fit_prior, list_images, load_image, pad_to_multiple, swap_entropy_model
from .entropy_models import PCEntropyBottleneck

__all__ = [
    "PCEntropyBottleneck", "swap_entropy_model", "fit_prior", "collect_latents", "list_images",
    "load_image", "pad_to_multiple",
]
