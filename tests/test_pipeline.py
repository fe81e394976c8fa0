"""`benchmark.pipeline.prepare` encodes a run's splits exactly as `PromptEncoder.for_task` does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmark.config import RunConfig
from benchmark.examples import Example, Splits
from benchmark.method import RunContext
from benchmark.pipeline import prepare
from benchmark.prompts import PromptEncoder, resolve_prompt
from benchmark.resolve import ResolvedRun, canonical_backbone, resolve_method
from benchmark.tracking import NullTracker
from registry import TASKS, load_builtins

pytestmark = pytest.mark.usefixtures("one_thread")


def two_sentence_examples(n: int) -> list[Example]:
    """Premise / hypothesis pairs long enough that the task's sentence limits cut them."""
    words = "the man said the movie was very good but the plot of the story was not really fun".split()
    return [Example(guid=str(i), texts=(" ".join(words[i % 5:] * 2), " ".join(words[: 6 + i % 7])), label=i % 2)
            for i in range(n)]


def context(task, template_choice: str | None, tmp_path: Path, backbone: Path) -> RunContext:
    """A run context for ``task`` resolved the way `resolve_run` resolves a prompt (no data files needed)."""
    config = RunConfig(task=task.name, method="zero-shot" if template_choice != "none" else "linear-probe",
                       backbone=str(backbone), template=template_choice)
    template, words = resolve_prompt(task, config.template, config.label_words)
    _, spec = canonical_backbone(str(backbone))
    run = ResolvedRun(config=config, task=task, method=resolve_method(config), backbone=spec, backbone_identity={},
                      template=template, label_words=tuple(words) if template is not None else (), binary=False,
                      data_identity={})
    splits = Splits(train=two_sentence_examples(4), dev=two_sentence_examples(3), test=two_sentence_examples(5))
    return RunContext(run=run, splits=splits, tracker=NullTracker(), device=torch.device("cpu"), work_dir=tmp_path)


@pytest.mark.parametrize("template_choice", [None, "*cls**sent_0**mask*,*+sentl_1**sep+*", "none"])
def test_a_two_sentence_task_encodes_the_same_through_the_pipeline(tmp_path, tiny_bert_dir, bert_tok,
                                                                    template_choice) -> None:
    load_builtins()
    task = TASKS.get("rte").model_copy(update={"max_seq_len": 24, "first_sent_limit": 9, "other_sent_limit": 5})
    assert task.num_sentences == 2
    prepared = prepare(context(task, template_choice, tmp_path, tiny_bert_dir))
    expected = PromptEncoder.for_task(bert_tok, task, template=template_choice)
    assert prepared.encoder.prompt_based == (template_choice != "none")
    assert prepared.encoder.label_word_ids == expected.label_word_ids
    for name in ("train", "dev", "test"):
        split = getattr(context(task, template_choice, tmp_path, tiny_bert_dir).splits, name)
        ours, theirs = prepared.encoded[name], expected.encode_all(split)
        assert [(e.input_ids, e.token_type_ids, e.mask_pos, e.label) for e in ours] == \
               [(e.input_ids, e.token_type_ids, e.mask_pos, e.label) for e in theirs]
        assert all(len(e.input_ids) <= 24 for e in ours)
    assert prepared.encoder.num_sentences == 2  # the hand-built encoder used to drop it
    # the second sentence is in the inputs: changing it changes the encoding
    example = Example(guid="a", texts=("the movie", "was good"), label=0)
    other = Example(guid="a", texts=("the movie", "hello world"), label=0)
    assert prepared.encoder.encode(other).input_ids != prepared.encoder.encode(example).input_ids
