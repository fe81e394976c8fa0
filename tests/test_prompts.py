"""Tests for the LM-BFF prompt encoder: exact token sequences on WordPiece and byte-level BPE."""

from __future__ import annotations

import pytest
import torch

import registry
from benchmark.examples import Example
from benchmark.prompts import (
    EncodedSplit,
    PromptEncoder,
    TemplatePart,
    label_word_id,
    parse_template,
    register_task_templates,
    resolve_prompt,
)
from registry import BenchError, Registry, TaskSpec, TemplateSpec

SST2_TEMPLATE = "*cls**sent_0*_It_was*mask*.*sep+*"
NLI_TEMPLATE = "*cls**sent-_0*?*mask*,*+sentl_1**sep+*"


def enc(tok, text: str) -> list[int]:
    """Independent reference: the tokenizer's own ids without special tokens."""
    return tok.encode(text, add_special_tokens=False)


def one(tok, token: str) -> int:
    return tok.convert_tokens_to_ids(token)


@pytest.fixture(params=["bert", "roberta"])
def tok(request, bert_tok, roberta_tok):
    """Both tiny tokenizers."""
    return bert_tok if request.param == "bert" else roberta_tok


def sst2_task(**overrides) -> TaskSpec:
    fields = dict(
        name="tsst2",
        display_name="Test SST-2",
        family="sentiment",
        labels=("0", "1"),
        template=SST2_TEMPLATE,
        label_words={"0": "terrible", "1": "great"},
        max_seq_len=32,
        first_sent_limit=None,
    )
    fields.update(overrides)
    return TaskSpec(**fields)


def nli_task(**overrides) -> TaskSpec:
    fields = dict(
        name="tnli",
        display_name="Test NLI",
        family="nli",
        labels=("contradiction", "entailment", "neutral"),
        num_sentences=2,
        template=NLI_TEMPLATE,
        label_words={"contradiction": "No", "entailment": "Yes", "neutral": "Maybe"},
        max_seq_len=64,
        first_sent_limit=20,
    )
    fields.update(overrides)
    return TaskSpec(**fields)


@pytest.fixture
def fresh_registries(monkeypatch):
    """Empty task and template registries holding two test tasks; built-ins not loaded."""
    tasks: Registry[TaskSpec] = Registry("task")
    templates: Registry[TemplateSpec] = Registry("template")
    monkeypatch.setattr(registry, "TASKS", tasks)
    monkeypatch.setattr(registry, "TEMPLATES", templates)
    monkeypatch.setattr(registry, "load_builtins", lambda: None)
    tasks.add("tsst2", sst2_task())
    tasks.add("tnli", nli_task())
    return tasks, templates


# ------------------------------------------------------------------------------------------
# Template parsing
# ------------------------------------------------------------------------------------------


def test_parse_template_parts():
    parts = parse_template(NLI_TEMPLATE)
    assert parts == (
        TemplatePart("cls"),
        TemplatePart("sent", index=0, drop_last=True),
        TemplatePart("text", text="?"),
        TemplatePart("mask"),
        TemplatePart("text", text=","),
        TemplatePart("sent", index=1, space=True, case="l"),
        TemplatePart("sep+"),
    )
    assert parse_template(SST2_TEMPLATE)[2] == TemplatePart("text", text=" It was")
    assert parse_template("*cls**sentl-_0**mask**+sentu_1**label_1*")[1] == TemplatePart(
        "sent", index=0, case="l", drop_last=True
    )


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("*cls**sent_0*_It_was.*sep+*", r"no \*mask\*"),
        ("*cls**sent_0**mask**mask**sep*", r"2 \*mask\* parts"),
        ("*cls**foo**mask**sep*", r"unknown template part '\*foo\*'"),
        ("*cls**sent_0*mask*", "unmatched"),
        ("*cls**labelx_0**mask*", r"'\*labelx_0\*'"),
    ],
)
def test_parse_template_errors(template, match):
    with pytest.raises(BenchError, match=match):
        parse_template(template)


# ------------------------------------------------------------------------------------------
# Exact token sequences
# ------------------------------------------------------------------------------------------


def test_sst2_template_exact_ids(tok):
    encoder = PromptEncoder(tok, template=SST2_TEMPLATE, label_words=["terrible", "great"], max_seq_len=32)
    out = encoder.encode(Example("g0", ("the movie was great",), 1))
    prefix = [tok.cls_token_id, *enc(tok, "the movie was great"), *enc(tok, " It was")]
    assert out.input_ids == [*prefix, tok.mask_token_id, *enc(tok, "."), tok.sep_token_id]
    assert out.mask_pos == len(prefix)
    assert out.input_ids[out.mask_pos] == tok.mask_token_id
    assert out.label == 1 and out.guid == "g0"
    assert out.attention_mask == [1] * len(out.input_ids)
    assert encoder.prompt_based


def test_sst2_template_literal_tokens_differ_by_tokenizer(bert_tok, roberta_tok):
    # ' It was' keeps its word-start marker under BPE; WordPiece lower-cases it.
    assert roberta_tok.convert_ids_to_tokens(enc(roberta_tok, " It was")) == ["ĠIt", "Ġwas"]
    assert bert_tok.convert_ids_to_tokens(enc(bert_tok, " It was")) == ["it", "was"]


def test_nli_template_drop_last_char_and_lowercase_with_space(tok):
    encoder = PromptEncoder(tok, template=NLI_TEMPLATE, label_words=["No", "Yes", "Maybe"], max_seq_len=64)
    out = encoder.encode(Example("g1", ("The cat sat.", "A dog ran"), 2))
    head = [tok.cls_token_id, *enc(tok, "The cat sat"), one(tok, "?")]
    expected = [*head, tok.mask_token_id, one(tok, ","), *enc(tok, " a dog ran"), tok.sep_token_id]
    assert out.input_ids == expected
    assert out.mask_pos == len(head)


def test_sentence_variants(roberta_tok):
    tok = roberta_tok
    ex = Example("g", ("the cat sat.", "Dog ran"), 0)
    cases = {
        "*sent_0**mask*": enc(tok, "the cat sat."),
        "*+sent_0**mask*": enc(tok, " the cat sat."),
        "*sent-_0**mask*": enc(tok, "the cat sat"),
        "*sentu_0**mask*": enc(tok, "The cat sat."),
        "*+sentu_0**mask*": enc(tok, " The cat sat."),
        "*sentl_1**mask*": enc(tok, "dog ran"),
        "*+sentl_1**mask*": enc(tok, " dog ran"),
        "*sentl-_1**mask*": enc(tok, "dog ra"),
    }
    for template, sentence_ids in cases.items():
        encoder = PromptEncoder(tok, template=template, label_words=[], max_seq_len=64)
        assert encoder.encode(ex).input_ids == [*sentence_ids, tok.mask_token_id], template


def test_label_part_inserts_label_word(tok):
    template = "*cls**label_1*_or*label_0*?*mask*"
    encoder = PromptEncoder(tok, template=template, label_words=["bad", "good"], max_seq_len=32)
    out = encoder.encode(Example("g", ("ignored",), 0))
    good, bad = encoder.label_word_ids[1], encoder.label_word_ids[0]
    assert out.input_ids == [tok.cls_token_id, good, *enc(tok, " or"), bad, one(tok, "?"), tok.mask_token_id]


def test_token_type_ids_increment_after_sep_plus(bert_tok, roberta_tok):
    template = "*cls**sent_0**sep+*_It_was*mask*.*sep+**sent_1**sep*"
    ex = Example("g", ("the movie", "fun"), 0)
    bert = PromptEncoder(bert_tok, template=template, label_words=[], max_seq_len=64).encode(ex)
    n0 = 1 + len(enc(bert_tok, "the movie")) + 1
    n1 = len(enc(bert_tok, " It was")) + 3
    n2 = len(enc(bert_tok, "fun")) + 1
    assert bert.token_type_ids == [0] * n0 + [1] * n1 + [2] * n2
    # *sep* does not bump the segment; RoBERTa takes no token type ids (as in LM-BFF).
    roberta = PromptEncoder(roberta_tok, template=template, label_words=[], max_seq_len=64)
    assert roberta.encode(ex).token_type_ids is None
    forced = PromptEncoder(bert_tok, template=template, label_words=[], max_seq_len=64, use_token_type_ids=False)
    assert forced.encode(ex).token_type_ids is None


def test_standard_inputs_without_template(tok):
    encoder = PromptEncoder(tok, template=None, label_words=[], max_seq_len=64)
    assert not encoder.prompt_based and encoder.label_word_ids == []
    single = encoder.encode(Example("s", ("the movie was great",), 1))
    assert single.input_ids == [tok.cls_token_id, *enc(tok, "the movie was great"), tok.sep_token_id]
    assert single.mask_pos is None
    pair = encoder.encode(Example("p", ("the cat sat", "a dog ran"), 0))
    s0, s1 = enc(tok, "the cat sat"), enc(tok, "a dog ran")
    assert pair.input_ids == [tok.cls_token_id, *s0, tok.sep_token_id, *s1, tok.sep_token_id]
    if tok.model_input_names.count("token_type_ids"):
        assert pair.token_type_ids == [0] * (len(s0) + 2) + [1] * (len(s1) + 1)
    else:
        assert pair.token_type_ids is None
    short = PromptEncoder(tok, template=None, label_words=[], max_seq_len=4).encode(pair_example := Example(
        "p", ("the cat sat", "a dog ran"), 0))
    assert short.input_ids == encoder.encode(pair_example).input_ids[:4]


def test_standard_inputs_keep_label_word_ids_when_given(bert_tok):
    encoder = PromptEncoder(bert_tok, template=None, label_words=["bad", "good"], max_seq_len=8)
    assert encoder.label_word_ids == [one(bert_tok, "bad"), one(bert_tok, "good")]


# ------------------------------------------------------------------------------------------
# Truncation
# ------------------------------------------------------------------------------------------

LONG = " ".join(["the movie was great and the plot was fun"] * 6)


def test_first_and_other_sent_limits(tok):
    ex = Example("g", (LONG, "a dog ran and the cat sat"), 0)
    encoder = PromptEncoder(
        tok, template=NLI_TEMPLATE, label_words=["No", "Yes", "Maybe"], max_seq_len=128,
        first_sent_limit=5, other_sent_limit=3,
    )
    out = encoder.encode(ex)
    s0 = enc(tok, LONG[:-1])[:5]
    s1 = enc(tok, " a dog ran and the cat sat")[:3]
    assert out.input_ids == [
        tok.cls_token_id, *s0, one(tok, "?"), tok.mask_token_id, one(tok, ","), *s1, tok.sep_token_id
    ]
    assert out.mask_pos == 1 + 5 + 1


def test_first_sent_limit_keeps_mask_within_max_len(tok):
    full = len(enc(tok, LONG))
    assert full > 30
    encoder = PromptEncoder(tok, template=SST2_TEMPLATE, label_words=[], max_seq_len=24, first_sent_limit=18)
    out = encoder.encode(Example("g", (LONG,), 0))
    tail = enc(tok, " It was")
    assert out.input_ids == [tok.cls_token_id, *enc(tok, LONG)[:18], *tail, tok.mask_token_id, *enc(tok, "."),
                             tok.sep_token_id]
    assert len(out.input_ids) <= 24 and out.input_ids[out.mask_pos] == tok.mask_token_id


def test_tail_truncation_keeps_leading_mask(tok):
    template = "*cls**mask*:*+sent_0**sep+*"
    out = PromptEncoder(tok, template=template, label_words=[], max_seq_len=10).encode(Example("g", (LONG,), 0))
    assert out.input_ids == [tok.cls_token_id, tok.mask_token_id, *enc(tok, ":"), *enc(tok, " " + LONG)][:10]
    assert out.mask_pos == 1


def test_truncate_head_shifts_mask_position(tok):
    encoder = PromptEncoder(tok, template=SST2_TEMPLATE, label_words=[], max_seq_len=12, truncate_head=True)
    out = encoder.encode(Example("g", (LONG,), 0))
    full = [tok.cls_token_id, *enc(tok, LONG), *enc(tok, " It was"), tok.mask_token_id, *enc(tok, "."),
            tok.sep_token_id]
    assert out.input_ids == full[-12:]
    assert out.mask_pos == 12 - 3 and out.input_ids[out.mask_pos] == tok.mask_token_id


def test_mask_truncated_away_raises(tok):
    encoder = PromptEncoder(tok, template=SST2_TEMPLATE, label_words=[], max_seq_len=16)
    room = 16 - (1 + len(enc(tok, " It was")) + 3)  # the limit that makes the input fit exactly
    with pytest.raises(BenchError, match=rf"example 'long-7'.*first_sent_limit={room} or a larger max_seq_len"):
        encoder.encode(Example("long-7", (LONG,), 0))
    head = PromptEncoder(tok, template="*cls**mask*:*+sent_0**sep+*", label_words=[], max_seq_len=8, truncate_head=True)
    with pytest.raises(BenchError, match="long-8"):
        head.encode(Example("long-8", (LONG,), 0))


# ------------------------------------------------------------------------------------------
# Label words
# ------------------------------------------------------------------------------------------


def test_label_word_ids_bpe_use_leading_space(roberta_tok):
    encoder = PromptEncoder(roberta_tok, template=SST2_TEMPLATE, label_words=["terrible", "great"], max_seq_len=8)
    assert roberta_tok.convert_ids_to_tokens(encoder.label_word_ids) == ["Ġterrible", "Ġgreat"]
    assert len(enc(roberta_tok, "great")) > 1  # without the space it is not one token
    assert label_word_id(roberta_tok, "Description") == one(roberta_tok, "ĠDescription")


def test_label_word_ids_wordpiece(bert_tok):
    assert label_word_id(bert_tok, "great") == one(bert_tok, "great")
    assert label_word_id(bert_tok, "Yes") == one(bert_tok, "yes")  # uncased vocabulary


def test_label_words_starting_with_special_chars_are_verbatim(tok):
    assert label_word_id(tok, ".") == one(tok, ".")
    assert label_word_id(tok, tok.mask_token) == tok.mask_token_id
    with pytest.raises(BenchError, match="not in the tokenizer's vocabulary"):
        label_word_id(tok, "[nonexistent]")


def test_multi_token_label_word_raises(tok):
    with pytest.raises(BenchError, match=r"label word 'xyzzyq' is not a single token: ' xyzzyq' tokenizes to \["):
        PromptEncoder(tok, template=SST2_TEMPLATE, label_words=["xyzzyq", "great"], max_seq_len=8)


def test_unknown_wordpiece_label_word_raises(bert_tok):
    with pytest.raises(BenchError, match="label word"):
        label_word_id(bert_tok, "☃")


def test_duplicate_label_word_ids_raise(bert_tok):
    with pytest.raises(BenchError, match="same token"):
        PromptEncoder(bert_tok, template=SST2_TEMPLATE, label_words=["Great", "great"], max_seq_len=8)


def test_template_sentence_missing_from_example_raises(tok):
    encoder = PromptEncoder(tok, template=NLI_TEMPLATE, label_words=[], max_seq_len=32)
    with pytest.raises(BenchError, match=r"example 'one'.*sentence 1"):
        encoder.encode(Example("one", ("just one",), 0))
    with pytest.raises(BenchError, match="sentence 1"):
        PromptEncoder(tok, template=NLI_TEMPLATE, label_words=[], max_seq_len=32, num_sentences=1)


def test_label_part_needs_label_words(tok):
    with pytest.raises(BenchError, match=r"\*label_2\*"):
        PromptEncoder(tok, template="*label_2**mask*", label_words=["bad", "good"], max_seq_len=8)


# ------------------------------------------------------------------------------------------
# resolve_prompt and template registration
# ------------------------------------------------------------------------------------------


def test_register_task_templates(fresh_registries):
    _, templates = fresh_registries
    register_task_templates()
    spec = templates.get("tsst2")
    assert spec.template == SST2_TEMPLATE
    assert spec.label_words == {"0": "terrible", "1": "great"}
    assert spec.description == "LM-BFF default for tsst2"
    assert "tnli" in templates and "it-was" in templates and "none" not in templates
    register_task_templates()  # idempotent


def test_resolve_prompt_default_and_none(fresh_registries):
    task = sst2_task()
    assert resolve_prompt(task, None, None) == (SST2_TEMPLATE, ["terrible", "great"])
    assert resolve_prompt(task, "none", None) == (None, ["terrible", "great"])
    assert resolve_prompt(task, "None", ("bad", "good")) == (None, ["bad", "good"])


def test_resolve_prompt_template_string_and_label_words(fresh_registries):
    task = sst2_task()
    template = "*cls**sent_0*_This_is*mask*.*sep+*"
    assert resolve_prompt(task, template, None) == (template, ["terrible", "great"])
    assert resolve_prompt(task, None, ("bad", "good")) == (SST2_TEMPLATE, ["bad", "good"])
    assert resolve_prompt(task, None, {"1": "good"}) == (SST2_TEMPLATE, ["terrible", "good"])


def test_resolve_prompt_registered_name(fresh_registries):
    _, templates = fresh_registries
    task = nli_task(name="tsnli")
    assert resolve_prompt(task, "tnli", None) == (NLI_TEMPLATE, ["No", "Yes", "Maybe"])
    templates.add("nli-words", TemplateSpec(
        name="nli-words", template=NLI_TEMPLATE,
        label_words={"contradiction": "no", "entailment": "yes", "neutral": "maybe"},
    ))
    assert resolve_prompt(task, "nli-words", None)[1] == ["no", "yes", "maybe"]
    assert resolve_prompt(task, "nli-words", {"neutral": "Maybe"})[1] == ["no", "yes", "Maybe"]
    # a generic alternate has no words of its own: the task's are used
    assert resolve_prompt(sst2_task(), "this-is", None) == ("*cls**sent_0*_This_is*mask*.*sep+*", ["terrible", "great"])


def test_resolve_prompt_errors(fresh_registries):
    task = sst2_task()
    with pytest.raises(BenchError, match=r"unknown template 'nope'.*Available: .*tsst2.*template string"):
        resolve_prompt(task, "nope", None)
    with pytest.raises(BenchError, match=r"no \*mask\*"):
        resolve_prompt(task, "*cls**sent_0*_It_was.*sep+*", None)
    with pytest.raises(BenchError, match="got 3 label words"):
        resolve_prompt(task, None, ("a", "b", "c"))
    with pytest.raises(BenchError, match=r"unknown label\(s\) \['2'\]"):
        resolve_prompt(task, None, {"2": "okay"})
    with pytest.raises(BenchError, match="uses sentence 1"):
        resolve_prompt(task, NLI_TEMPLATE, None)
    three = nli_task(name="t3", num_sentences=1, template=SST2_TEMPLATE)
    with pytest.raises(BenchError, match=r"template 'tsst2' gives label words for labels \['0', '1'\] but task 't3'"):
        resolve_prompt(three, "tsst2", {"neutral": "maybe"})
    # full label words make a registered template with other labels usable
    assert resolve_prompt(three, "tsst2", ("no", "yes", "maybe")) == (SST2_TEMPLATE, ["no", "yes", "maybe"])
    with pytest.raises(BenchError, match="empty"):
        resolve_prompt(task, None, ("", "good"))


def test_for_task_uses_task_settings(fresh_registries, bert_tok):
    task = nli_task(first_sent_limit=2, other_sent_limit=2)
    encoder = PromptEncoder.for_task(bert_tok, task)
    assert encoder.max_seq_len == 64 and encoder.first_sent_limit == 2 and encoder.num_sentences == 2
    out = encoder.encode(Example("g", ("the movie was great.", "A dog ran"), 1))
    assert out.input_ids[1:3] == enc(bert_tok, "the movie")
    standard = PromptEncoder.for_task(bert_tok, task, template="none")
    assert not standard.prompt_based and standard.label_word_ids == []


# ------------------------------------------------------------------------------------------
# Splits and batches
# ------------------------------------------------------------------------------------------


def _split(tok, template=SST2_TEMPLATE) -> tuple[PromptEncoder, EncodedSplit, list[Example]]:
    texts = ["great", "the movie was great", "bad", "the plot was fun and the acting was good", "okay"]
    examples = [Example(f"e{i}", (text,), i % 2) for i, text in enumerate(texts)]
    encoder = PromptEncoder(tok, template=template, label_words=["terrible", "great"], max_seq_len=64)
    return encoder, encoder.encode_all(examples), examples


def test_batches_padding_and_masks(tok):
    encoder, split, examples = _split(tok)
    assert len(split) == 5
    assert torch.equal(split.labels, torch.tensor([0, 1, 0, 1, 0]))
    assert split.labels.dtype == torch.long
    batches = list(split.batches(2))
    assert [len(labels) for _, labels in batches] == [2, 2, 1]
    inputs, labels = batches[1]
    a, b = encoder.encode(examples[2]), encoder.encode(examples[3])
    width = max(len(a.input_ids), len(b.input_ids))
    assert inputs["input_ids"].shape == (2, width) and inputs["input_ids"].dtype == torch.long
    assert inputs["input_ids"][0].tolist() == a.input_ids + [tok.pad_token_id] * (width - len(a.input_ids))
    assert inputs["attention_mask"][0].tolist() == [1] * len(a.input_ids) + [0] * (width - len(a.input_ids))
    assert inputs["attention_mask"][1].tolist() == [1] * width
    assert inputs["mask_pos"].tolist() == [a.mask_pos, b.mask_pos]
    assert inputs["mask_pos"].shape == (2,)
    rows = torch.arange(2)
    assert (inputs["input_ids"][rows, inputs["mask_pos"]] == tok.mask_token_id).all()
    assert labels.tolist() == [0, 1]
    assert ("token_type_ids" in inputs) == ("token_type_ids" in tok.model_input_names)
    if "token_type_ids" in inputs:
        assert inputs["token_type_ids"].shape == (2, width)


def test_standard_batches_have_no_mask_pos(tok):
    _, split, _ = _split(tok, template=None)
    inputs, _ = next(split.batches(8))
    assert "mask_pos" not in inputs and inputs["input_ids"].shape[0] == 5


def test_shuffle_is_deterministic(tok):
    _, split, _ = _split(tok)

    def order(seed):
        return [tuple(labels.tolist()) for _, labels in split.batches(2, shuffle_seed=seed)], [
            row.tolist() for inputs, _ in split.batches(2, shuffle_seed=seed) for row in inputs["input_ids"]
        ]

    assert order(3) == order(3)
    expected = torch.randperm(5, generator=torch.Generator().manual_seed(3)).tolist()
    flat = [label for batch in order(3)[0] for label in batch]
    assert flat == [split.labels[i].item() for i in expected]
    orders = {tuple(torch.randperm(5, generator=torch.Generator().manual_seed(s)).tolist()) for s in range(6)}
    assert len(orders) > 1
    unshuffled = [row for inputs, _ in split.batches(5) for row in inputs["input_ids"]]
    assert unshuffled[0][: len(split[0].input_ids)].tolist() == split[0].input_ids


def test_subset_and_render(tok):
    encoder, split, examples = _split(tok)
    sub = split.subset([3, 0])
    assert len(sub) == 2 and sub.guids == ["e3", "e0"]
    assert sub.labels.tolist() == [1, 0]
    assert sub.subset(torch.tensor([1])).guids == ["e0"]
    text = encoder.render(examples[1])
    assert tok.mask_token in text and "movie" in text
    with pytest.raises(BenchError, match="batch size"):
        next(split.batches(0))
    assert list(EncodedSplit([], pad_token_id=0, prompt_based=True, use_token_type_ids=False).batches(4)) == []


def test_builtin_task_templates_encode(tok):
    registry.load_builtins()
    register_task_templates()
    for name, task in registry.TASKS.items():
        encoder = PromptEncoder.for_task(tok, task)
        assert len(encoder.label_word_ids) == task.num_labels, name
        assert registry.TEMPLATES.get(name).template == task.template
        texts = tuple(["The movie was great."] * task.num_sentences)
        out = encoder.encode(Example(f"{name}-0", texts, 0))
        assert out.input_ids[out.mask_pos] == tok.mask_token_id, name
