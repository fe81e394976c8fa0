"""Plain data records that flow from the data loaders to the prompt encoder."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    """One labelled input: one or two sentences and the index of its label in ``TaskSpec.labels``."""

    guid: str
    texts: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class Splits:
    """The k-shot train and dev sets and the (capped) test set of one (task, k, seed)."""

    train: list[Example]
    dev: list[Example]
    test: list[Example]

    def sizes(self) -> dict[str, int]:
        """Number of examples per split."""
        return {"train": len(self.train), "dev": len(self.dev), "test": len(self.test)}
