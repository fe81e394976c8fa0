"""Logit models: a masked LM (or encoder + linear head) reduced to class logits ``[B, C]``."""

from __future__ import annotations

import torch
from torch import nn

from registry import BenchError


def additive_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Turn a ``[B, L]`` 0/1 mask into the ``[B, 1, 1, L]`` additive mask transformers accepts.

    Passing the 4-D form keeps transformers' own mask construction (which breaks under
    `torch.func.vmap`) out of the forward pass.
    """
    keep = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


def _split_masked_lm(mlm: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(encoder, MLM head) of a Hugging Face masked LM with a single head module."""
    encoder = getattr(mlm, "base_model", None)
    heads = [module for _, module in mlm.named_children() if module is not encoder]
    if encoder is None or encoder is mlm or len(heads) != 1:
        raise BenchError(
            f"{type(mlm).__name__} is not supported: expected an encoder plus one MLM head module "
            "(BERT- or RoBERTa-style masked LMs)"
        )
    return encoder, heads[0]


class _EncoderMixin(nn.Module):
    encoder: nn.Module

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Last-layer hidden states ``[B, L, H]``."""
        dtype = next(self.encoder.parameters()).dtype
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.encoder(
            input_ids=input_ids, attention_mask=additive_attention_mask(attention_mask, dtype), **kwargs
        )
        return out[0]


def _at_positions(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    index = positions.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
    return torch.gather(hidden, 1, index).squeeze(1)


class PromptLogitModel(_EncoderMixin):
    """Prompt-based classifier: the label words' MLM logits at the ``*mask*`` position.

    With ``binary=True`` (two labels only) it returns one logit, ``logit[1] - logit[0]``, as the
    reference does for its binary kernels (labels then map to -1 / +1).
    """

    def __init__(self, mlm: nn.Module, label_word_ids: list[int], *, binary: bool = False) -> None:
        super().__init__()
        if binary and len(label_word_ids) != 2:
            raise BenchError(f"the binary logit needs exactly 2 labels, the task has {len(label_word_ids)}")
        self.encoder, self.head = _split_masked_lm(mlm)
        self.mlm = mlm
        self.binary = binary
        device = next(mlm.parameters()).device  # wrapping a model already on a GPU keeps everything there
        ids = torch.tensor(label_word_ids, dtype=torch.long, device=device)
        self.register_buffer("label_word_ids", ids, persistent=False)

    @property
    def num_outputs(self) -> int:
        """C, the number of logits per example."""
        return 1 if self.binary else len(self.label_word_ids)

    def features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mask_pos: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The last hidden state at the mask position ``[B, H]`` (the linear probe's features)."""
        return _at_positions(self.hidden_states(input_ids, attention_mask, token_type_ids), mask_pos)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mask_pos: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Class logits ``[B, C]``."""
        vocab_logits = self.head(self.features(input_ids, attention_mask, mask_pos, token_type_ids))
        index = self.label_word_ids.unsqueeze(0).expand(vocab_logits.shape[0], -1)
        logits = torch.gather(vocab_logits, 1, index)
        if self.binary:
            return logits[:, 1:] - logits[:, :1]
        return logits


class ClsHeadLogitModel(_EncoderMixin):
    """Standard fine-tuning model (``--template none``): a linear head on the [CLS] hidden state."""

    def __init__(self, mlm: nn.Module, num_labels: int, *, binary: bool = False, seed: int = 0) -> None:
        super().__init__()
        if binary and num_labels != 2:
            raise BenchError(f"the binary logit needs exactly 2 labels, the task has {num_labels}")
        self.encoder, _ = _split_masked_lm(mlm)
        self.binary = binary
        hidden = self.encoder.config.hidden_size
        generator = torch.Generator().manual_seed(seed)
        first = next(self.encoder.parameters())
        self.classifier = nn.Linear(hidden, 1 if binary else num_labels, dtype=first.dtype, device=first.device)
        with torch.no_grad():
            std = getattr(self.encoder.config, "initializer_range", 0.02)
            self.classifier.weight.copy_(torch.randn(self.classifier.weight.shape, generator=generator) * std)
            self.classifier.bias.zero_()

    @property
    def num_outputs(self) -> int:
        """C, the number of logits per example."""
        return self.classifier.out_features

    def features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The last hidden state of the first ([CLS]) token ``[B, H]``."""
        return self.hidden_states(input_ids, attention_mask, token_type_ids)[:, 0]

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Class logits ``[B, C]``."""
        return self.classifier(self.features(input_ids, attention_mask, token_type_ids))

    def set_head(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Overwrite the linear head (e.g. with a linear-probe solution)."""
        with torch.no_grad():
            self.classifier.weight.copy_(weight.reshape(self.classifier.weight.shape))
            self.classifier.bias.copy_(bias.reshape(self.classifier.bias.shape))


LogitModel = PromptLogitModel | ClsHeadLogitModel


def build_logit_model(
    mlm: nn.Module,
    *,
    prompt_based: bool,
    label_word_ids: list[int],
    num_labels: int,
    binary: bool = False,
    seed: int = 0,
) -> LogitModel:
    """The prompt-based or the [CLS]-head logit model over ``mlm``, in eval mode."""
    if prompt_based:
        return PromptLogitModel(mlm, label_word_ids, binary=binary).eval()
    return ClsHeadLogitModel(mlm, num_labels, binary=binary, seed=seed).eval()
