"""Tiny tokenizers and randomly initialised masked LMs for tests (no download, deterministic)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertTokenizerFast,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaTokenizerFast,
)

# Every template word and label word of the 14 built-in tasks, plus filler text for fixtures.
WORDS = (
    "it was this is about news article terrible great bad okay good subjective objective "
    "description entity expression human location number world sports business tech yes no maybe "
    "the a an movie film plot acting story fun boring loved hated and but of to in on for with "
    "what who where when how why which many much city country name company team game market price "
    "said says new old best worst very not really quite man woman people day year time "
    "rain sun cat dog sat ran walked is are be been question answer sentence same different "
    "hello world one two three four five six seven eight nine ten"
).split()
PUNCTUATION = list(".,?!:;'\"-()")


def bert_tokenizer(directory: Path) -> BertTokenizerFast:
    """An uncased WordPiece tokenizer over `WORDS` plus single letters, saved in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    digits = [str(d) for d in range(10)]
    pieces = [f"##{c}" for c in letters + digits]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *PUNCTUATION, *letters, *digits, *pieces]
    vocab += [w for w in dict.fromkeys(WORDS) if w not in vocab]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab=str(directory / "vocab.txt"), do_lower_case=True)


def roberta_tokenizer(directory: Path) -> RobertaTokenizerFast:
    """A byte-level BPE tokenizer trained on `WORDS` (each word a single ' word' token)."""
    directory.mkdir(parents=True, exist_ok=True)
    corpus = directory / "corpus.txt"
    words = WORDS + [w.capitalize() for w in WORDS]
    corpus.write_text(("\n".join(" ".join(words) for _ in range(50))) + "\n")
    bpe = ByteLevelBPETokenizer()
    bpe.train(
        [str(corpus)],
        vocab_size=2000,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    bpe.save_model(str(directory))
    return RobertaTokenizerFast(vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"))


def _small(vocab_size: int, pad_token_id: int, **extra: object) -> dict[str, object]:
    return dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=160,
        pad_token_id=pad_token_id,
        attn_implementation="eager",
        **extra,
    )


def bert_mlm(tokenizer: BertTokenizerFast, seed: int = 0) -> BertForMaskedLM:
    """A 2-layer, 32-wide BERT masked LM with random weights, in eval mode."""
    torch.manual_seed(seed)
    config = BertConfig(**_small(len(tokenizer), tokenizer.pad_token_id))
    return BertForMaskedLM(config).eval()


def roberta_mlm(tokenizer: RobertaTokenizerFast, seed: int = 0) -> RobertaForMaskedLM:
    """A 2-layer, 32-wide RoBERTa masked LM with random weights, in eval mode."""
    torch.manual_seed(seed)
    config = RobertaConfig(**_small(len(tokenizer), tokenizer.pad_token_id, type_vocab_size=1))
    return RobertaForMaskedLM(config).eval()


def save_pretrained(model: torch.nn.Module, tokenizer: object, directory: Path) -> Path:
    """Save a tiny model and tokenizer so that `from_pretrained(directory)` loads them offline."""
    model.save_pretrained(directory)  # type: ignore[attr-defined]
    tokenizer.save_pretrained(directory)  # type: ignore[attr-defined]
    json.loads((directory / "config.json").read_text())
    return directory
