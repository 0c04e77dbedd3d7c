"""Dataset loaders (no downloads: every loader takes a local path)."""

from .idx import default_data_root, load_idx, load_mnist

__all__ = ["default_data_root", "load_idx", "load_mnist"]
