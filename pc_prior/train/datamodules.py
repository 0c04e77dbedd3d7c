"""Lightning data modules: image folders (codec training) and idx-format images (PC priors).

Nothing here downloads: every module reads a local folder and fails with a clear error when the
folder is missing or holds no usable files. Image folders are listed by ``pc_prior.images``
(``list_images``, re-exported here), as everywhere else.
"""

from __future__ import annotations

import os

import pytorch_lightning as pl
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision import transforms

from ..data import load_mnist
from ..images import list_images

__all__ = [
    "ImageFolder",
    "ImageFolderDataModule",
    "MNISTDataModule",
]


class ImageFolder(Dataset):
    """RGB images of a folder (recursively), as float tensors [3, H, W] in [0, 1]."""

    def __init__(self, root: str | os.PathLike, transform=None) -> None:
        self.files = list_images(root)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tensor:
        with Image.open(self.files[i]) as im:
            img = im.convert("RGB")
        return (
            self.transform(img)
            if self.transform is not None
            else transforms.functional.to_tensor(img)
        )


class ImageFolderDataModule(pl.LightningDataModule):
    """Training crops from one image folder, validation images from another (e.g. Kodak).

    Training: random ``patch_size`` crops (images smaller than that are padded by reflection) and
    random horizontal/vertical flips. Validation: a center crop of ``val_patch_size`` or, when it
    is ``None``, whole images (batch size 1; the codec pads them to its required multiple).
    """

    def __init__(
        self,
        train_dir: str,
        val_dir: str | None = None,
        patch_size: int = 256,
        val_patch_size: int | None = None,
        batch_size: int = 16,
        val_batch_size: int = 1,
        num_workers: int = 4,
        val_limit: int | None = None,
        pin_memory: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_set: ImageFolder | None = None
        self.val_set: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Build the training set (random crops of ``patch_size``, flips) and, with ``val_dir``, the
        validation set (centre crops of ``val_patch_size``, or whole images)."""
        hp = self.hparams
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = ImageFolder(
                hp.train_dir,
                transforms.Compose(
                    [
                        transforms.RandomCrop(
                            hp.patch_size, pad_if_needed=True, padding_mode="reflect"
                        ),
                        transforms.RandomHorizontalFlip(),
                        transforms.RandomVerticalFlip(),
                        transforms.ToTensor(),
                    ]
                ),
            )
        if hp.val_dir is not None and self.val_set is None:
            tf = [transforms.CenterCrop(hp.val_patch_size)] if hp.val_patch_size else []
            val = ImageFolder(hp.val_dir, transforms.Compose([*tf, transforms.ToTensor()]))
            if hp.val_patch_size is None and hp.val_batch_size != 1:
                raise ValueError(
                    "whole-image validation (val_patch_size=None) needs val_batch_size=1"
                )
            self.val_set = (
                torch.utils.data.Subset(val, range(min(hp.val_limit, len(val))))
                if hp.val_limit
                else val
            )

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of training crops."""
        hp = self.hparams
        return DataLoader(
            self.train_set,
            batch_size=hp.batch_size,
            shuffle=True,
            drop_last=len(self.train_set) >= hp.batch_size,
            num_workers=hp.num_workers,
            pin_memory=hp.pin_memory,
            persistent_workers=hp.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches in order (none without ``val_dir``)."""
        hp = self.hparams
        if self.val_set is None:
            return []
        return DataLoader(
            self.val_set,
            batch_size=hp.val_batch_size,
            shuffle=False,
            num_workers=min(hp.num_workers, 2),
            pin_memory=hp.pin_memory,
        )


class MNISTDataModule(pl.LightningDataModule):
    """Flattened pixels (LongTensor [N, 784], 0..255) of an idx-format dataset (MNIST layout).

    ``data`` is the folder holding ``train-images-idx3-ubyte[.gz]`` and ``t10k-images-idx3-ubyte[.gz]``;
    ``None`` means ``$PC_PRIOR_DATA/mnist`` (default ``../shared/data/mnist``). ``bits`` < 8 keeps
    only the top bits of each pixel (fewer symbols per variable, for quick experiments).
    """

    def __init__(
        self,
        data: str | None = None,
        batch_size: int = 512,
        val_batch_size: int = 1024,
        train_limit: int | None = None,
        val_limit: int | None = 2000,
        bits: int = 8,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not 1 <= bits <= 8:
            raise ValueError(f"bits must be in 1..8, got {bits}")
        self.save_hyperparameters()
        self.x_train: Tensor | None = None
        self.x_val: Tensor | None = None

    @property
    def num_cats(self) -> int:
        """Symbols per variable: 2 ** bits."""
        return 2**self.hparams.bits

    def _load(self, split: str, limit: int | None) -> Tensor:
        try:
            x = load_mnist(self.hparams.data, split, limit)
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"{e} (MNISTDataModule: set data, e.g. --data.init_args.data DIR)"
            ) from None
        if len(x) == 0:
            raise ValueError(f"the {split} split in {self.hparams.data} holds no images")
        return x >> (8 - self.hparams.bits)

    def setup(self, stage: str | None = None) -> None:
        """Load the training split, and the test split for validation (``train_limit``,
        ``val_limit``)."""
        if self.x_train is None:
            self.x_train = self._load("train", self.hparams.train_limit)
        if self.x_val is None:
            self.x_val = self._load("test", self.hparams.val_limit)

    def structure_sample(self, n: int) -> Tensor:
        """The first ``n`` training rows (deterministic, identical on every rank): for learning structure."""
        self.setup("fit")
        return self.x_train[:n]

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of training images."""
        return DataLoader(
            TensorDataset(self.x_train),
            batch_size=self.hparams.batch_size,
            shuffle=True,
            num_workers=self.hparams.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        """Batches of test images, in order."""
        return DataLoader(
            TensorDataset(self.x_val),
            batch_size=self.hparams.val_batch_size,
            shuffle=False,
            num_workers=self.hparams.num_workers,
        )
