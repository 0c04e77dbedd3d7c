"""CompressAI entropy models backed by probabilistic circuits: the two PC entropy models, swapping
them into a codec and fitting them (``fit_prior``), codec files (``codec_file``), CompressAI
checkpoints of PC codecs (``compressai_checkpoints``: PC-aware ``from_state_dict``), and
CompressAI's own tools on them (``compressai_tools``: ``eval_model``/``update_model``).

Images (``list_images``, ``load_image``, ``FolderImages``, padding and cropping) are
``pc_prior.images``'.
"""

from .api import adapt_prior, collect_conditional_inputs, collect_latents, fit_prior
from .codec_file import (
    ResolvedCodec,
    build_codec,
    load_codec,
    read_codec_file,
    resolve_codec,
    save_codec,
)
from .compressai_checkpoints import pc_aware_class
from .compressai_tools import (
    pc_architectures,
    registered_architectures,
    run_eval_model,
    run_update_model,
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
    "adapt_prior",
    "build_codec",
    "collect_conditional_inputs",
    "collect_latents",
    "fit_prior",
    "load_codec",
    "pc_architectures",
    "pc_aware_class",
    "read_codec_file",
    "registered_architectures",
    "resolve_codec",
    "run_eval_model",
    "run_update_model",
    "save_codec",
    "swap_entropy_model",
]
