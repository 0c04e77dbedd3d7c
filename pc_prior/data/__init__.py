"""Dataset loaders (no downloads: every loader takes a local path)."""

from .idx import load_idx, load_mnist, default_data_root

__all__ = ["load_idx", "load_mnist", "default_data_root"]
