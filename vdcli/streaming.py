"""Streaming: training data read from disk at each step, for sets that do not fit in memory.

The trainer reads a step's batch from *columns*: anything with ``len()`` whose ``column[rows]``
gives a tensor with one entry per row. An in-memory tensor is a column; so are ``FolderImages``
(image files, decoded and fitted to the recipe's size when a row is read) and a latent shard
column (``shards.py``). A column that sets ``streamed = True`` is read through a
``torch.utils.data.DataLoader`` whose workers decode ahead of the training loop.

Determinism is the trainer's, unchanged: step s trains on rows ``order(s - 1)[rank::world]``
(``trainer.BatchOrder``), and here the DataLoader's ``batch_sampler`` (``StepRows``) yields
exactly those rows, in step order, from the step a run starts or resumes at. Workers only read
and decode; they draw no random numbers, so a streamed run sees the same batches, bit for bit,
as the same data held in memory.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from vdcli.imagefiles import fit_images, read_image

Column = torch.Tensor  # or any object with __len__ and column[rows] -> tensor: FolderImages, shards.ShardColumn


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


class FolderImages:
    """Image files as a column of uint8 images [N, C, size, size], decoded when read.

    Reading a row is what ``data.load_split`` does to every file of an in-memory folder
    (``imagefiles.read_image`` onto the recipe's background, then ``fit_images``: resize on the
    short side and centre-crop), one file at a time, so a streamed folder and the same folder in
    memory give equal tensors.
    """

    streamed = True

    def __init__(self, files: Sequence[str], size: int, channels: int, workers: int | None = None, background: str = "white"):
        self.files = [str(f) for f in files]  # strings, not Paths: a million Paths cost hundreds of MB
        self.size, self.channels, self.background = size, channels, background
        self.workers = default_workers() if workers is None else workers

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), self.channels, self.size, self.size)

    def read(self, i: int) -> torch.Tensor:
        return fit_images(read_image(self.files[i], self.background)[None], self.size, self.channels)[0]

    def __getitem__(self, key) -> torch.Tensor:
        """images[i] -> [C, H, W]; images[a:b], images[tensor of rows] -> [B, C, H, W]."""
        if isinstance(key, int):
            return self.read(key)
        rows = range(len(self))[key] if isinstance(key, slice) else torch.as_tensor(key).flatten().tolist()
        if not len(rows):
            return torch.empty((0, self.channels, self.size, self.size), dtype=torch.uint8)
        return torch.stack([self.read(i) for i in rows])

    def subset(self, rows: Sequence[int]) -> FolderImages:
        """These rows only, still on disk."""
        return FolderImages([self.files[i] for i in rows], self.size, self.channels, self.workers, self.background)


def spread(n: int, at_most: int) -> torch.Tensor:
    """At most ``at_most`` evenly spaced rows of n; all n of them when n <= at_most."""
    return torch.arange(0, n, -(-n // at_most))


def at_most(column: Column, n: int) -> torch.Tensor:
    """The whole column when it has at most n rows, else n evenly spaced rows of it, as a tensor: for statistics."""
    if isinstance(column, torch.Tensor) and len(column) <= n:
        return column  # no copy
    return column[spread(len(column), n)]


class StepRows:
    """The DataLoader's batch_sampler: the rows of each step, start + 1 .. steps, in order."""

    def __init__(self, order, start: int, steps: int, rank: int = 0, world: int = 1):
        self.order, self.start, self.steps, self.rank, self.world = order, start, steps, rank, world

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start + 1, self.steps + 1):
            yield self.order(step - 1)[self.rank :: self.world].tolist()


class SequentialRows:
    """A batch_sampler over rows 0..n-1 in order, ``batch`` at a time: for encoding a whole column."""

    def __init__(self, n: int, batch: int):
        self.n, self.batch = n, batch

    def __len__(self) -> int:
        return -(-self.n // self.batch)

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(0, self.n, self.batch):
            yield list(range(i, min(i + self.batch, self.n)))


class _Columns(Dataset):
    """The columns as one Dataset; ``__getitems__`` reads a whole batch of rows at once."""

    def __init__(self, columns: Sequence[Column]):
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns[0])

    def __getitems__(self, rows: list[int]) -> tuple[torch.Tensor, ...]:
        index = torch.tensor(rows, dtype=torch.int64)
        return tuple(c[index] for c in self.columns)


def _as_is(batch):
    return batch  # __getitems__ already returns the batch; a module-level function pickles for spawned workers


def is_streamed(columns: Sequence[Column]) -> bool:
    return any(getattr(c, "streamed", False) for c in columns)


def load_rows(columns: Sequence[Column], sampler, device: torch.device | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
    """The batches ``sampler`` names, as tuples of CPU tensors (pinned when the device is CUDA).

    In-memory columns are indexed here, as the trainer always did; streamed ones go through a
    DataLoader with the columns' workers. It is given its own generator: making an iterator
    draws a seed, and drawing it from the global RNG would change the training step's draws.
    """
    if not is_streamed(columns):
        for rows in sampler:
            index = torch.as_tensor(rows, dtype=torch.int64)
            yield tuple(c[index] for c in columns)
        return
    workers = max(getattr(c, "workers", 0) for c in columns)
    loader = DataLoader(_Columns(columns), batch_sampler=sampler, collate_fn=_as_is, num_workers=workers,
                        pin_memory=device is not None and device.type == "cuda", generator=torch.Generator())
    yield from loader


def step_batches(columns: Sequence[Column], order, start: int, steps: int, rank: int, world: int,
                 device: torch.device) -> Iterator[tuple[torch.Tensor, ...]]:
    """The batch of every step start + 1 .. steps: the rows ``order(s - 1)[rank::world]`` of each column."""
    return load_rows(columns, StepRows(order, start, steps, rank, world), device)


def batches_of(images: Column, batch: int) -> Iterator[torch.Tensor]:
    """Rows 0..n-1 of one column, ``batch`` at a time, in order: slices of a tensor, or read ahead by workers."""
    if isinstance(images, torch.Tensor):
        for i in range(0, len(images), batch):
            yield images[i : i + batch]
        return
    for (chunk,) in load_rows([images], SequentialRows(len(images), batch)):
        yield chunk
