"""Lightning modules, data modules and training commands (``pc-prior fit``, ``pc-prior train-codec``)."""

from .callbacks import InterruptCheckpoint
from .codec import CodecModule, export_codec, lambda_for_quality, load_codec
from .data import ImageFolderDataModule, MNISTDataModule
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
    "load_codec",
]
