"""The training batches of a PyTorch member: samples cropped and augmented from the cached photos, in the order
each epoch's seed gives, through one DataLoader that serves every epoch (so its workers can stay up).

Augmentations: in the main process one seeded stream per epoch (what the demo's numbers were made with); in a
worker seeded per sample by (epoch seed, i), so any number of workers draws the same ones and no two workers
repeat each other's stream.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from zoo.augment import build_augment
from zoo.fold_data import FoldData, mixed_batches
from zoo.geometry import training_pair
from zoo.recipe import epoch_seed
from zoo.spec import MemberSpec
from zoo.torch_member import to_tensor
from zoo.torch_models import input_stats
from zoo.train_device import DeviceSettings

__all__ = ["CropsDataset", "EpochBatches", "train_loader"]


class CropsDataset(Dataset):
    """Training samples (image (3, h, w) float32, mask (1, h, w) float32) from cached arrays:
    augmented, padded to the network's multiple and randomly cropped (`zoo.geometry.training_pair`).
    A sample is asked for as (epoch seed, i) (`EpochBatches`), so one DataLoader, its workers kept, serves
    every epoch; the crop of sample i is seeded by (epoch seed, i) whatever the worker, its augmentations as the
    module says.

    With pseudo-labels, samples past the training photos are the fold's pseudo-labelled test photos
    (their label levels augmented like a mask), and every sample also has a (1, h, w) float32 pixel weight:
    0 where a pseudo-label is uncertain and left out of the loss, 1 elsewhere."""

    def __init__(self, spec: MemberSpec, data: FoldData) -> None:
        self.spec, self.data = spec, data
        self.stats = input_stats(spec)
        self.n_real = len(data.train_idx)
        self.augment: Any = None  # the epoch's albumentations pipeline, made on first use
        self.augment_seed: int | None = None

    def __len__(self) -> int:
        return self.n_real + (0 if self.data.pseudo is None else len(self.data.pseudo.images))

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        seed, i = key
        pseudo = self.data.pseudo
        if i < self.n_real:
            index = self.data.train_idx[i]
            image, mask = np.asarray(self.data.images[index]), np.asarray(self.data.masks[index])
        else:
            assert pseudo is not None
            image, mask = np.asarray(pseudo.images[i - self.n_real]), np.asarray(pseudo.levels[i - self.n_real])
        rng, augment = np.random.default_rng([seed, i]), self._augment(seed, i)
        image, mask = training_pair(image, mask, self.spec.multiple, self.spec.train.crop, augment, rng)
        if pseudo is None:
            return to_tensor(image, self.stats), torch.from_numpy(mask.astype(np.float32))[None]
        if i < self.n_real:
            target, weight = mask.astype(np.float32), np.ones(mask.shape, np.float32)
        else:
            target, weight = pseudo.target_and_weight(mask)
        return to_tensor(image, self.stats), torch.from_numpy(target)[None], torch.from_numpy(weight)[None]

    def _augment(self, seed: int, i: int):
        """The augmentation pipeline for sample i of the epoch seeded `seed` (None with `train.augment: false`)."""
        if not self.spec.train.augment:
            return None
        if self.augment is None or self.augment_seed != seed:
            self.augment, self.augment_seed = build_augment(seed), seed
        if get_worker_info() is not None:
            self.augment.set_random_seed(int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
        return self.augment


class EpochBatches(Sampler):
    """The batches of (epoch seed, sample index) of the epoch `seed` names; set `seed` before each epoch.
    Without pseudo-labels: the order `DataLoader(shuffle=True, generator=torch.Generator().manual_seed(seed))`
    gives (it draws its base seed from the generator first), the order the demo's numbers were made with;
    with them: `zoo.fold_data.mixed_batches`."""

    def __init__(self, dataset: CropsDataset, batch_size: int, seed: int) -> None:
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed

    def __iter__(self):
        pseudo = self.dataset.data.pseudo
        if pseudo is not None:
            batches = mixed_batches(self.dataset.n_real, len(pseudo.images), self.batch_size, pseudo.share, self.seed)
        else:
            generator = torch.Generator().manual_seed(self.seed)
            torch.empty((), dtype=torch.int64).random_(generator=generator)
            order = torch.randperm(len(self.dataset), generator=generator).tolist()
            batches = [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        for batch in batches:
            yield [(self.seed, int(i)) for i in batch]

    def __len__(self) -> int:
        pseudo = self.dataset.data.pseudo
        if pseudo is not None:
            return len(mixed_batches(self.dataset.n_real, len(pseudo.images), self.batch_size, pseudo.share, 0))
        return -(-len(self.dataset) // self.batch_size)


def train_loader(
    spec: MemberSpec, data: FoldData, run: DeviceSettings, persistent: bool = True
) -> tuple[DataLoader, EpochBatches]:
    """Batches of (images, masks[, pixel weights]) for every epoch, and their sampler: set its `seed` before each
    epoch (it starts at epoch 0's)."""
    dataset = CropsDataset(spec, data)
    batches = EpochBatches(dataset, spec.train.batch_size, epoch_seed(spec.train, data.fold, 0))
    # The base seed of the workers' generators (unused: samples are seeded by (epoch seed, i)) is drawn from
    # a generator of its own, except by the pseudo-label path without workers, which drew it from PyTorch's
    # global one (that dropout then follows): kept there, for the numbers made before.
    keep_global = data.pseudo is not None and not run.num_workers
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=run.num_workers,
        pin_memory=run.pin_memory,
        persistent_workers=run.persistent_workers and persistent,
        prefetch_factor=run.prefetch_factor,
        generator=None if keep_global else torch.Generator(),
    )
    return loader, batches
