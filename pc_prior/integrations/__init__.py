"""CompressAI entropy models backed by probabilistic circuits.

The image helpers (``list_images``, ``load_image``, ``pad_to_multiple``, ``crop_to_multiple``,
``FolderImages``) are
``pc_prior.images``' own, re-exported here.
"""

from ..images import FolderImages, crop_to_multiple, list_images, load_image, pad_to_multiple
from .api import (
    collect_conditional_inputs,
    collect_latents,
    fit_prior,
    swap_entropy_model,
)
from .codec_file import (
    ResolvedCodec,
    build_codec,
    load_codec,
    read_codec_file,
    resolve_codec,
    save_codec,
)
from .conditional import PCConditional
from .context import CheckerboardContext
from .entropy_models import PCEntropyBottleneck

__all__ = [
    "CheckerboardContext",
    "FolderImages",
    "PCConditional",
    "PCEntropyBottleneck",
    "ResolvedCodec",
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
    "resolve_codec",
    "save_codec",
    "swap_entropy_model",
]
