"""Deprecated name of ``pc_prior.fitting`` (renamed so that ``fitting``, EM and Adam for HCLTs,
and ``train``, the Lightning modules, no longer read alike); this alias goes in pc-prior 0.4."""

from ._lazy import renamed_module

__all__: list[str] = []
__getattr__ = renamed_module(__name__, "pc_prior.fitting")
