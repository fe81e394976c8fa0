"""The models and inputs the kernel benchmark runs on: random RoBERTa presets, a local model, random prompts."""

from __future__ import annotations

from typing import Any

import torch

from registry import BenchError

# Sizes of the random presets (RoBERTa layout, eager attention, random weights from the config: no download).
PRESET_SIZES: dict[str, dict[str, int]] = {
    "small": {"vocab_size": 30522, "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 512},  # bert-tiny's sizes, 4.42M parameters
    "roberta-base": {"vocab_size": 50265, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                     "intermediate_size": 3072},  # 124.7M parameters
}
PRESET_MASK_ID = {"small": 4, "roberta-base": 50264}


def preset_config(name: str) -> Any:
    """The `RobertaConfig` of a random preset."""
    from transformers import RobertaConfig

    if name not in PRESET_SIZES:
        raise BenchError(f"unknown preset '{name}'; choose one of: {', '.join(PRESET_SIZES)}")
    return RobertaConfig(**PRESET_SIZES[name], max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                         bos_token_id=0, eos_token_id=2, attn_implementation="eager")


def preset_model(name: str, seed: int, dtype: torch.dtype) -> tuple[torch.nn.Module, dict[str, int]]:
    """A randomly initialised masked LM of a preset's shape, in eval mode, and its special token ids."""
    from transformers import RobertaForMaskedLM

    config = preset_config(name)
    torch.manual_seed(seed)
    model = RobertaForMaskedLM(config).to(dtype).eval()
    ids = {"vocab": config.vocab_size, "pad": 1, "bos": 0, "eos": 2, "mask": PRESET_MASK_ID[name], "first": 5}
    return model, ids


def local_model(name_or_path: str, dtype: torch.dtype) -> tuple[torch.nn.Module, dict[str, int]]:
    """A registered backbone (e.g. the bundled ``bert-tiny``) or a saved masked LM, and its special ids."""
    from benchmark.backbones import load_masked_lm, resolve_backbone

    model, tokenizer = load_masked_lm(resolve_backbone(name_or_path), dtype=dtype)

    def first(*values: int | None) -> int:
        return int(next((v for v in values if v is not None), 0))

    special = [i for i in tokenizer.all_special_ids if i is not None]
    return model.eval(), {
        "vocab": int(model.config.vocab_size),
        "pad": first(tokenizer.pad_token_id),
        "bos": first(tokenizer.cls_token_id, tokenizer.bos_token_id),
        "eos": first(tokenizer.sep_token_id, tokenizer.eos_token_id),
        "mask": first(tokenizer.mask_token_id),
        "first": max(special, default=0) + 1,
    }


def make_batches(
    n: int, batch_size: int, seq_len: int, ids: dict[str, int], generator: torch.Generator
) -> list[dict[str, torch.Tensor]]:
    """Random prompts with padding: <s> tokens... <mask> ... </s> <pad>*, lengths in [L/2, L]."""
    if ids["vocab"] <= ids["first"]:
        raise BenchError(f"the model's vocabulary ({ids['vocab']} ids) has no ids after its special tokens")
    batches = []
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        tokens = torch.randint(ids["first"], ids["vocab"], (size, seq_len), generator=generator)
        lengths = torch.randint(max(4, seq_len // 2), seq_len + 1, (size,), generator=generator)
        keep = torch.arange(seq_len)[None, :] < lengths[:, None]
        tokens[~keep] = ids["pad"]
        tokens[:, 0] = ids["bos"]
        tokens[torch.arange(size), lengths - 1] = ids["eos"]
        mask_pos = 1 + (torch.rand(size, generator=generator) * (lengths - 2).float()).long()
        tokens[torch.arange(size), mask_pos] = ids["mask"]
        batches.append({"input_ids": tokens, "attention_mask": keep.long(), "mask_pos": mask_pos})
    return batches


def first_examples(batches: list[dict[str, torch.Tensor]], n: int) -> list[dict[str, torch.Tensor]]:
    """The batches cut to their first ``n`` examples."""
    out, left = [], n
    for batch in batches:
        if left <= 0:
            break
        take = min(left, batch["input_ids"].shape[0])
        out.append({k: v[:take] for k, v in batch.items()})
        left -= take
    return out


def param_counts(model: torch.nn.Module) -> tuple[int, int, int]:
    """(all, dense non-embedding, hidden size) of a masked LM."""
    total = sum(p.numel() for p in model.parameters())
    embed = sum(p.numel() for n, p in model.named_parameters() if "embed" in n)
    dense = total - embed - int(model.config.vocab_size)  # the decoder bias is sparse too
    return total, dense, int(model.config.hidden_size)
