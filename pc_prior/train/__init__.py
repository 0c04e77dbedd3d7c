"""Lightning modules, data modules and training commands (``pc-prior codec train|finetune``, ``pc-prior lightning fit``)."""

from .callbacks import InterruptCheckpoint
from .codec import CodecModule, export_codec, lambda_for_quality
from .datamodules import ImageFolderDataModule, MNISTDataModule
from .prior import EMOptimizer, PriorModule
from .rd import RDModule

__all__ = [
    "CodecModule",
    "EMOptimizer",
    "ImageFolderDataModule",
    "InterruptCheckpoint",
    "MNISTDataModule",
    "PriorModule",
    "RDModule",
    "export_codec",
    "lambda_for_quality",
]
