"""Encoded examples and splits: unpadded token ids, padded into batches on demand."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from registry import BenchError


@dataclass(frozen=True)
class EncodedExample:
    """One tokenized example, unpadded. The attention mask is all ones (see `attention_mask`)."""

    guid: str
    input_ids: list[int]
    token_type_ids: list[int] | None
    mask_pos: int | None
    label: int

    @property
    def attention_mask(self) -> list[int]:
        """1 for every token (padding is added per batch by `EncodedSplit.batches`)."""
        return [1] * len(self.input_ids)


class EncodedSplit:
    """A list of `EncodedExample` with their labels, batched and padded on demand."""

    def __init__(
        self,
        examples: Sequence[EncodedExample],
        *,
        pad_token_id: int,
        prompt_based: bool,
        use_token_type_ids: bool,
    ) -> None:
        self.examples: list[EncodedExample] = list(examples)
        self.pad_token_id = pad_token_id
        self.prompt_based = prompt_based
        self.use_token_type_ids = use_token_type_ids
        self.labels: torch.Tensor = torch.tensor([ex.label for ex in self.examples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> EncodedExample:
        return self.examples[index]

    def __iter__(self) -> Iterator[EncodedExample]:
        return iter(self.examples)

    @property
    def guids(self) -> list[str]:
        """The examples' guids, in order."""
        return [ex.guid for ex in self.examples]

    def subset(self, indices: Sequence[int] | torch.Tensor) -> EncodedSplit:
        """A new split holding the examples at ``indices`` (in that order)."""
        if isinstance(indices, torch.Tensor):
            indices = indices.tolist()
        return EncodedSplit(
            [self.examples[int(i)] for i in indices],
            pad_token_id=self.pad_token_id,
            prompt_based=self.prompt_based,
            use_token_type_ids=self.use_token_type_ids,
        )

    def collate(self, indices: Sequence[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Model inputs and labels for the examples at ``indices``, right-padded to the longest."""
        chosen = [self.examples[int(i)] for i in indices]
        width = max((len(ex.input_ids) for ex in chosen), default=0)
        input_ids = torch.full((len(chosen), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chosen), width), dtype=torch.long)
        token_type_ids = torch.zeros((len(chosen), width), dtype=torch.long) if self.use_token_type_ids else None
        for row, ex in enumerate(chosen):
            n = len(ex.input_ids)
            input_ids[row, :n] = torch.tensor(ex.input_ids, dtype=torch.long)
            attention_mask[row, :n] = 1
            if token_type_ids is not None and ex.token_type_ids is not None:
                token_type_ids[row, :n] = torch.tensor(ex.token_type_ids, dtype=torch.long)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        if self.prompt_based:
            inputs["mask_pos"] = torch.tensor([ex.mask_pos for ex in chosen], dtype=torch.long)
        labels = torch.tensor([ex.label for ex in chosen], dtype=torch.long)
        return inputs, labels

    def batches(
        self, batch_size: int, *, shuffle_seed: int | None = None
    ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """Yield ``(model inputs, labels)`` batches of at most ``batch_size`` examples.

        Inputs: ``input_ids`` and ``attention_mask`` ``[B, L]`` (right-padded with the pad id to the
        longest in the batch), ``token_type_ids`` ``[B, L]`` when the backbone uses them, and
        ``mask_pos`` ``[B]`` for prompt-based inputs. With ``shuffle_seed`` the order is a permutation
        drawn from a `torch.Generator` seeded with it (the same seed gives the same batches).
        """
        if batch_size < 1:
            raise BenchError(f"batch size must be at least 1, got {batch_size}")
        n = len(self.examples)
        if shuffle_seed is None:
            order = list(range(n))
        else:
            generator = torch.Generator().manual_seed(shuffle_seed)
            order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n, batch_size):
            yield self.collate(order[start : start + batch_size])
