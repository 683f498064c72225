"""Latent shards: the VAE latents of a streamed image folder, encoded once and kept on disk.

``<run>/latents/shard-00000.safetensors`` holds rows [0, S), ``shard-00001`` rows [S, 2S) and so
on (S = ``SHARD_ROWS``, the last shard shorter). Each holds, for its rows,

- ``mean``, ``logvar``: float32 [rows, c, h, w], the posterior q(z|x) of each image;
- ``labels``: int64 [rows], the images' classes, which also tell a shard made from another
  folder (or another order of it) from the right one;

and the metadata ``first`` (its first row) and ``total`` (the rows of the whole set). Shards are
written one at a time, each atomically (``checkpoint.atomic_write``), so a crash loses at most the
one being encoded and a resumed run encodes only those missing. They are read back lazily:
``ShardColumn[rows]`` memory-maps the shards and copies out only the rows asked for, so neither
the images nor their latents are ever all in memory. No pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vdcli.checkpoint import atomic_write
from vdcli.errors import VdError

SHARD_ROWS = 8192  # 8 MB of 4x8x8 latents (mean and logvar): a few hundred shards for a million images
KEYS = ("mean", "logvar", "labels")
DTYPES = {"F32": np.float32, "I64": np.int64}  # what write_shard stores


def shard_path(folder: Path, k: int) -> Path:
    return Path(folder) / f"shard-{k:05d}.safetensors"


def shard_ranges(total: int, rows: int = SHARD_ROWS) -> list[tuple[int, int]]:
    """[first, end) of each shard of a set of ``total`` rows."""
    return [(first, min(first + rows, total)) for first in range(0, total, rows)]


def write_shard(path: Path, first: int, total: int, mean: torch.Tensor, logvar: torch.Tensor, labels: torch.Tensor) -> None:
    tensors = {"mean": mean.float().contiguous(), "logvar": logvar.float().contiguous(), "labels": labels.long().contiguous()}
    metadata = {"first": str(first), "total": str(total)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def shard_matches(path: Path, first: int, total: int, labels: torch.Tensor) -> bool:
    """Whether the shard at ``path`` holds rows [first, first + len(labels)) of a set of ``total``
    with these labels; a shard of another folder is an error, not a silent reuse."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        same = meta.get("first") == str(first) and meta.get("total") == str(total) and torch.equal(f.get_tensor("labels"), labels)
    if not same:
        raise VdError(f"{path} holds the latents of a different image folder (or of the same one before it changed); "
                      f"delete {path.parent} and resume to encode them again")
    return True


class ShardColumn:
    """One tensor (``mean``, ``logvar`` or ``labels``) of a list of shards, as a column of rows.

    ``column[rows]`` gathers those rows from the shards they fall in. Each shard's tensor is
    memory-mapped where the safetensors header puts it (8-byte header length, JSON header, then
    the raw little-endian data at its ``data_offsets``), so a gather copies only the rows asked
    for: ``safe_open``'s slices would copy a row at a time, ~100x slower for random rows.
    """

    streamed = True

    def __init__(self, paths: Sequence[Path], key: str, workers: int = 0):
        self.paths, self.key, self.workers = [str(p) for p in paths], key, workers
        firsts, total = [], 0
        for p in self.paths:
            with safe_open(p, framework="pt") as f:
                firsts.append(int((f.metadata() or {})["first"]))
                total = firsts[-1] + f.get_slice(key).get_shape()[0]
        self.firsts = torch.tensor(firsts + [total])  # shard k holds rows firsts[k] .. firsts[k + 1] - 1
        one = self._map(0)[:1]
        self.row_shape, self.dtype = tuple(one.shape[1:]), torch.from_numpy(np.array(one)).dtype
        self._maps: dict[int, np.memmap] = {}

    def __len__(self) -> int:
        return int(self.firsts[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.row_shape)

    def __getstate__(self) -> dict:  # a spawned DataLoader worker maps the files anew
        return {**self.__dict__, "_maps": {}}

    def _map(self, k: int) -> np.memmap:
        with open(self.paths[k], "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            info = json.loads(f.read(n))[self.key]
        begin, _ = info["data_offsets"]
        return np.memmap(self.paths[k], dtype=DTYPES[info["dtype"]], mode="r", offset=8 + n + begin, shape=tuple(info["shape"]))

    def __getitem__(self, key) -> torch.Tensor:
        rows = torch.arange(len(self))[key] if isinstance(key, slice) else torch.as_tensor(key, dtype=torch.int64).flatten()
        shard = torch.searchsorted(self.firsts, rows, right=True) - 1  # (B,)
        shard, order = shard.sort(stable=True)  # the rows grouped by shard
        local = (rows[order] - self.firsts[shard]).numpy()
        ks, counts = torch.unique_consecutive(shard, return_counts=True)
        parts, i = [], 0
        for k, n in zip(ks.tolist(), counts.tolist()):
            if k not in self._maps:
                self._maps[k] = self._map(k)
            parts.append(self._maps[k][local[i : i + n]])
            i += n
        out = torch.empty((len(rows), *self.row_shape), dtype=self.dtype)
        if parts:
            out[order] = torch.from_numpy(np.concatenate(parts))
        return out if not isinstance(key, int) else out[0]


def open_shards(paths: Sequence[Path], workers: int = 0) -> tuple[ShardColumn, ...]:
    """The mean, logvar and labels columns of a set of shards."""
    return tuple(ShardColumn(paths, key, workers) for key in KEYS)
