"""LM-BFF's k-shot sampler (``tools/generate_k_shot_data.py``) and LM-Kernel-FT's test-set cap."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from benchmark.examples import Example, Splits
from registry import BenchError

TEST_SEED = 42
"""Seed of the test-set cap, independent of the k-shot seed (LM-Kernel-FT ``k-shot-1k-test``)."""


def _cap_test(pool: Sequence[Example], test_cap: int) -> list[Example]:
    """At most ``test_cap`` examples (0 = all): ``RandomState(42).permutation(n)[:test_cap]``, in that order."""
    if test_cap < 0:
        raise BenchError(f"test_cap must be >= 0 (0 keeps the whole test set), got {test_cap}")
    if test_cap == 0 or len(pool) <= test_cap:
        return list(pool)
    order = np.random.RandomState(TEST_SEED).permutation(len(pool))[:test_cap]
    return [pool[i] for i in order]


def kshot_splits(
    train_pool: Sequence[Example],
    test_pool: Sequence[Example],
    *,
    num_labels: int,
    k: int,
    seed: int,
    test_cap: int = 1000,
    label_names: Sequence[str] | None = None,
) -> Splits:
    """LM-BFF's k-shot split: K examples per label for train and the next K per label for dev.

    The train pool is shuffled with ``np.random.seed(seed); np.random.shuffle`` (legacy seeding, as
    ``tools/generate_k_shot_data.py``); labels are taken in order of first appearance in the shuffled
    pool. The test set is the test pool capped at ``test_cap`` examples (0 = all) with the fixed seed
    42, so every ``seed`` shares it. ``label_names`` only improve error messages. Raises `BenchError`
    if a label has fewer than 2K examples.
    """
    if k < 1:
        raise BenchError(f"k must be at least 1, got {k}")
    if not 0 <= seed < 2**32:
        raise BenchError(f"seed must be in [0, 2**32), got {seed}")

    def name(label: int) -> str:
        return f"'{label_names[label]}'" if label_names is not None else str(label)

    counts = Counter(ex.label for ex in train_pool)
    unknown = sorted(label for label in counts if not 0 <= label < num_labels)
    if unknown:
        raise BenchError(f"train pool has label indices {unknown} outside 0..{num_labels - 1}")
    short = [label for label in range(num_labels) if counts[label] < 2 * k]
    if short:
        largest = min(counts[label] for label in range(num_labels)) // 2
        detail = ", ".join(f"label {name(label)} has {counts[label]}" for label in short)
        advice = f"use k <= {largest}" if largest >= 1 else "this train pool cannot give a k-shot split"
        raise BenchError(
            f"k={k} needs {2 * k} training examples per label ({k} train + {k} dev), but {detail}; "
            f"the largest k possible is {largest}: {advice}"
        )
    order = list(range(len(train_pool)))
    np.random.RandomState(seed).shuffle(order)  # a list, like LM-BFF's list of lines
    groups: dict[int, list[Example]] = {}
    for i in order:
        example = train_pool[i]
        groups.setdefault(example.label, []).append(example)
    train = [ex for group in groups.values() for ex in group[:k]]
    dev = [ex for group in groups.values() for ex in group[k : 2 * k]]
    return Splits(train=train, dev=dev, test=_cap_test(test_pool, test_cap))
