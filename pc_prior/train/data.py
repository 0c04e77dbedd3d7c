"""Deprecated name of ``pc_prior.train.datamodules`` (renamed so that ``pc_prior.data``, the
dataset loaders, and the Lightning data modules no longer share a name); goes in pc-prior 0.4."""

from .._lazy import renamed_module

__all__: list[str] = []
__getattr__ = renamed_module(__name__, "pc_prior.train.datamodules")
