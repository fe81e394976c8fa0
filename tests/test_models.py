"""Logit models against a direct computation with the masked LM."""

from __future__ import annotations

import pytest
import torch

from benchmark.models import ClsHeadLogitModel, PromptLogitModel, additive_attention_mask, build_logit_model
from registry import BenchError
from tests import tiny


def _batch(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    mask_pos = (enc["input_ids"] == tokenizer.mask_token_id).int().argmax(dim=1)
    return {**enc, "mask_pos": mask_pos}


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_prompt_logits_equal_mlm_logits_at_mask(family: str, bert_tok, roberta_tok) -> None:
    tokenizer = bert_tok if family == "bert" else roberta_tok
    mlm = tiny.bert_mlm(tokenizer) if family == "bert" else tiny.roberta_mlm(tokenizer)
    mask = tokenizer.mask_token
    batch = _batch(tokenizer, [f"the movie was fun . it was {mask} .", f"it was {mask} ."])
    word_ids = [tokenizer.convert_tokens_to_ids(t) for t in tokenizer.tokenize(" terrible great")]
    model = PromptLogitModel(mlm, word_ids)
    logits = model(**batch)
    plain = {k: v for k, v in batch.items() if k != "mask_pos"}
    expected = mlm(**plain).logits[torch.arange(2), batch["mask_pos"]][:, word_ids]
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    binary = PromptLogitModel(mlm, word_ids, binary=True)(**batch)
    torch.testing.assert_close(binary[:, 0], expected[:, 1] - expected[:, 0], rtol=1e-5, atol=1e-5)
    assert model.num_outputs == 2


def test_padding_does_not_change_logits(bert_tok) -> None:
    mlm = tiny.bert_mlm(bert_tok)
    model = PromptLogitModel(mlm, [bert_tok.convert_tokens_to_ids("great"), bert_tok.convert_tokens_to_ids("bad")])
    alone = model(**_batch(bert_tok, ["it was [MASK] ."]))
    padded = model(**_batch(bert_tok, ["it was [MASK] .", "the movie was fun and the acting was good . it was [MASK]"]))
    torch.testing.assert_close(padded[:1], alone, rtol=1e-5, atol=1e-6)


def test_cls_head_model_and_set_head(bert_tok) -> None:
    mlm = tiny.bert_mlm(bert_tok)
    model = ClsHeadLogitModel(mlm, 3, seed=1)
    batch = _batch(bert_tok, ["it was good .", "bad movie"])
    inputs = {k: v for k, v in batch.items() if k != "mask_pos"}
    weight, bias = torch.randn(3, 32), torch.randn(3)
    model.set_head(weight, bias)
    cls_hidden = mlm.base_model(**inputs).last_hidden_state[:, 0]
    torch.testing.assert_close(model(**inputs), cls_hidden @ weight.T + bias, rtol=1e-5, atol=1e-5)
    same_seed = ClsHeadLogitModel(tiny.bert_mlm(bert_tok), 3, seed=1)
    other_seed = ClsHeadLogitModel(tiny.bert_mlm(bert_tok), 3, seed=2)
    fresh = ClsHeadLogitModel(tiny.bert_mlm(bert_tok), 3, seed=1)
    assert torch.equal(same_seed.classifier.weight, fresh.classifier.weight)
    assert not torch.equal(same_seed.classifier.weight, other_seed.classifier.weight)


def test_binary_needs_two_labels(bert_tok) -> None:
    mlm = tiny.bert_mlm(bert_tok)
    with pytest.raises(BenchError, match="exactly 2 labels, the task has 3"):
        build_logit_model(mlm, prompt_based=True, label_word_ids=[5, 6, 7], num_labels=3, binary=True)
    with pytest.raises(BenchError, match="exactly 2 labels"):
        build_logit_model(mlm, prompt_based=False, label_word_ids=[], num_labels=3, binary=True)


def test_additive_mask() -> None:
    mask = torch.tensor([[1, 1, 0]])
    additive = additive_attention_mask(mask, torch.float32)
    assert additive.shape == (1, 1, 1, 3)
    assert additive[0, 0, 0, 0] == 0 and additive[0, 0, 0, 2] == torch.finfo(torch.float32).min
