"""Batch order: seeded, resumable, and length-aware without giving up randomness.

The shuffle is the permutation torch's seeded RandomSampler draws, which is what the Hugging Face
Trainer uses (Accelerate's SeedableRandomSampler, seed + epoch): a tunesmith run and a Trainer run
with the same seed see the same examples in the same order, so comparing the two measures the tools,
not the luck of the shuffle.

Plain shuffling pads every batch to its longest member; sorting the whole epoch by length pads
least but makes batches homogeneous, which costs accuracy. We shuffle, take windows of
`bucket_batches` batches, sort each window by length and cut it into batches, then shuffle the batch
order. Each batch is still a random draw from a small random window, so its label mix stays random
while padding drops sharply. Lengths are computed once, vectorised, from the Arrow column.
"""
from __future__ import annotations

import numpy as np
import torch


def shuffle(n: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's permutation of n examples: torch.randperm from a generator seeded seed + epoch."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).numpy()


def balanced_order(classes: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """An epoch in which every class takes the same share, shuffled: `round(n / k)` draws per class out
    of k classes. A rare class repeats its examples (whole shuffled passes first, then a random part of
    one more), a common one gives a random subset, another one each epoch. The epoch keeps about n draws,
    so the schedule's length does not change."""
    rng = np.random.default_rng([seed, epoch, 1])
    names = np.unique(classes)
    quota = max(1, round(len(classes) / len(names)))
    parts = []
    for c in names:
        members = np.flatnonzero(classes == c)
        passes = -(-quota // len(members))
        parts.append(np.concatenate([rng.permutation(members) for _ in range(passes)])[:quota])
    return rng.permutation(np.concatenate(parts))


def batch_plan(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, bucket_batches: int,
               min_batch: int = 1, max_tokens: int | None = None,
               classes: np.ndarray | None = None) -> list[np.ndarray]:
    """The global batches of one epoch, the same on every process and on every resume.

    bucket_batches=1 is plain random batching. A final batch smaller than `min_batch` (the number
    of processes) is merged into the one before, so every process always gets at least one example.
    `max_tokens`: batches are cut where the next example would take the batch's tokens over the
    budget (in the same shuffled order), not every batch_size examples. `classes` (one per example):
    the epoch is drawn class-balanced (`balanced_order`) instead of as a permutation.
    """
    order = shuffle(len(lengths), seed, epoch) if classes is None else balanced_order(classes, seed, epoch)
    if bucket_batches > 1:
        window = batch_size * bucket_batches
        chunks = [order[i:i + window] for i in range(0, len(order), window)]
        # stable sort inside each window: ties keep their random order
        order = np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in chunks])
    batches = _by_tokens(order, lengths, max_tokens, min_batch) if max_tokens else \
        [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < min_batch:
        last = batches.pop()
        batches[-1] = np.concatenate([batches[-1], last])
    if bucket_batches > 1:
        # shuffle batch order so the epoch does not run short-to-long inside each window
        batches = [batches[i] for i in np.random.default_rng([seed, epoch]).permutation(len(batches))]
    return batches


def _by_tokens(order: np.ndarray, lengths: np.ndarray, budget: int, min_batch: int) -> list[np.ndarray]:
    """`order` cut into runs of at most `budget` tokens (and at least `min_batch` examples)."""
    batches, start, total = [], 0, 0
    for k, i in enumerate(order):
        n = int(lengths[i])
        if k > start and total + n > budget and k - start >= min_batch:
            batches.append(order[start:k])
            start, total = k, 0
        total += n
    batches.append(order[start:])
    return batches


def eval_plan(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Evaluation and prediction batches sorted by length (order does not matter, padding does)."""
    order = np.argsort(lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def shard(batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This process's part of a global batch; strided so parts differ in size by at most one."""
    return batch[rank::world]
