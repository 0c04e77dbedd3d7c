"""CompressAI entropy models backed by probabilistic circuits: the two PC entropy models, swapping
them into a codec and fitting them (``fit_prior``), and codec files.

Images (``list_images``, ``load_image``, ``FolderImages``, padding and cropping) are
``pc_prior.images``'.
"""

from .api import collect_conditional_inputs, collect_latents, fit_prior
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
from .swap import swap_entropy_model

__all__ = [
    "CheckerboardContext",
    "PCConditional",
    "PCEntropyBottleneck",
    "ResolvedCodec",
    "build_codec",
    "collect_conditional_inputs",
    "collect_latents",
    "fit_prior",
    "load_codec",
    "read_codec_file",
    "resolve_codec",
    "save_codec",
    "swap_entropy_model",
]
