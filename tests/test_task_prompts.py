"""Each built-in task's default prompt, filled in, against hand-written text and mask positions."""

from __future__ import annotations

import pytest

from benchmark.examples import Example
from benchmark.prompts import PromptEncoder
from registry import TASKS, load_builtins

load_builtins()

SENTENCES = ("The movie was great.", "Who said it was fun?")

# (uncased WordPiece rendering, mask position, byte-level BPE rendering)
SINGLE = ("[CLS] the movie was great. it was [MASK]. [SEP]", 8, "<s>The movie was great. It was<mask>.</s>")
NLI = ("[CLS] the movie was great? [MASK], who said it was fun? [SEP]", 6,
       "<s>The movie was great?<mask>, who said it was fun?</s>")
PARAPHRASE = ("[CLS] the movie was great. [MASK], who said it was fun? [SEP]", 6,
              "<s>The movie was great.<mask>, who said it was fun?</s>")
EXPECTED = {
    "sst2": SINGLE, "sst5": SINGLE, "mr": SINGLE, "cr": SINGLE, "mpqa": SINGLE,
    "subj": ("[CLS] the movie was great. this is [MASK]. [SEP]", 8, "<s>The movie was great. This is<mask>.</s>"),
    "trec": ("[CLS] [MASK] : the movie was great. [SEP]", 1, "<s><mask>: The movie was great.</s>"),
    "agnews": ("[CLS] the movie was great. this article is about [MASK] news. [SEP]", 10,
               "<s>The movie was great. This article is about<mask> news.</s>"),
    "mnli": NLI, "snli": NLI, "qnli": NLI, "rte": NLI,
    "mrpc": PARAPHRASE, "qqp": PARAPHRASE,
}
LABEL_WORDS = {
    "sst2": ["terrible", "great"], "mr": ["terrible", "great"], "cr": ["terrible", "great"],
    "mpqa": ["terrible", "great"], "sst5": ["terrible", "bad", "okay", "good", "great"],
    "subj": ["subjective", "objective"],
    "trec": ["Description", "Entity", "Expression", "Human", "Location", "Number"],
    "agnews": ["world", "sports", "business", "tech"],
    "mnli": ["No", "Yes", "Maybe"], "snli": ["No", "Yes", "Maybe"], "qnli": ["Yes", "No"], "rte": ["Yes", "No"],
    "mrpc": ["No", "Yes"], "qqp": ["No", "Yes"],
}


def test_all_fourteen_tasks_are_covered() -> None:
    assert sorted(EXPECTED) == sorted(TASKS.names()) == sorted(LABEL_WORDS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_default_prompt_text_mask_and_label_words(name: str, bert_tok, roberta_tok) -> None:
    task = TASKS.get(name)
    example = Example("x", SENTENCES[: task.num_sentences], 0)
    bert_text, bert_mask, bpe_text = EXPECTED[name]
    encoder = PromptEncoder.for_task(bert_tok, task)
    encoded = encoder.encode(example)
    assert encoder.render(example) == bert_text
    assert encoded.mask_pos == bert_mask and encoded.input_ids[bert_mask] == bert_tok.mask_token_id
    assert [task.label_words[label] for label in task.labels] == LABEL_WORDS[name]
    assert encoder.label_word_ids == [bert_tok.convert_tokens_to_ids(w.lower()) for w in LABEL_WORDS[name]]
    bpe = PromptEncoder.for_task(roberta_tok, task)
    assert bpe.render(example) == bpe_text
    assert bpe.label_word_ids == [roberta_tok.convert_tokens_to_ids("Ġ" + w) for w in LABEL_WORDS[name]]
