"""The 14 built-in task specs: names, labels, prompts, lengths, sources; and task files."""

from __future__ import annotations

from pathlib import Path

import pytest

import registry
from benchmark.data import examples_from_hub_rows, load_task_pools
from benchmark.examples import Example
from registry import BenchError, TaskSpec, load_task_file
from tests.fixtures import taskdata

registry.load_builtins()

IT_WAS = "*cls**sent_0*_It_was*mask*.*sep+*"
NLI = "*cls**sent-_0*?*mask*,*+sentl_1**sep+*"
PAIR = "*cls**sent_0**mask*,*+sentl_1**sep+*"

# name: (template, label words in label order, max_seq_len, first_sent_limit, other_sent_limit)
# -- typed in from LM-Kernel-FT run_fewshot.sh.
EXPECTED = {
    "sst2": (IT_WAS, ("terrible", "great"), 128, None, None),
    "sst5": (IT_WAS, ("terrible", "bad", "okay", "good", "great"), 128, None, None),
    "mr": (IT_WAS, ("terrible", "great"), 128, 110, 50),
    "cr": (IT_WAS, ("terrible", "great"), 128, 110, 50),
    "mpqa": (IT_WAS, ("terrible", "great"), 128, 110, None),
    "subj": ("*cls**sent_0*_This_is*mask*.*sep+*", ("subjective", "objective"), 128, 110, 50),
    "trec": (
        "*cls**mask*:*+sent_0**sep+*",
        ("Description", "Entity", "Expression", "Human", "Location", "Number"),
        128,
        110,
        None,
    ),
    "agnews": (
        "*cls**sent_0*_This_article_is_about*mask*_news.*sep+*",
        ("world", "sports", "business", "tech"),
        256,
        240,
        None,
    ),
    "mnli": (NLI, ("No", "Yes", "Maybe"), 256, 240, None),
    "snli": (NLI, ("No", "Yes", "Maybe"), 256, None, None),
    "qnli": (NLI, ("Yes", "No"), 128, None, None),
    "rte": (NLI, ("Yes", "No"), 256, 240, None),
    "mrpc": (PAIR, ("No", "Yes"), 128, None, None),
    "qqp": (PAIR, ("No", "Yes"), 128, None, None),
}


def test_all_fourteen_tasks_are_registered():
    assert set(registry.TASKS.names()) >= set(EXPECTED)
    assert len(EXPECTED) == 14


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_task_spec_matches_reference(name):
    task = registry.TASKS.get(name)
    template, words, max_len, first, other = EXPECTED[name]
    assert task.name == name
    assert task.labels == taskdata.LABELS[name]
    assert task.template == template
    assert tuple(task.label_words[label] for label in task.labels) == words
    assert (task.max_seq_len, task.first_sent_limit, task.other_sent_limit) == (max_len, first, other)
    assert task.num_sentences == (2 if name in taskdata.PAIR_TASKS else 1)
    assert task.report_f1 == (name in ("mrpc", "qqp"))
    assert task.hub is not None and task.local is not None
    assert task.local.dir == taskdata.ORIGINAL_DIRS[name]


@pytest.mark.parametrize(
    ("name", "hub_label", "expected"),
    [
        ("mnli", 2, "contradiction"),
        ("mnli", 0, "entailment"),
        ("mnli", 1, "neutral"),
        ("snli", 2, "contradiction"),
        ("trec", 0, "abbreviation"),
        ("trec", 2, "description"),
        ("trec", 5, "number"),
        ("agnews", 3, "tech"),
        ("qnli", 1, "not_entailment"),
        ("rte", 0, "entailment"),
        ("mrpc", 1, "equivalent"),
        ("qqp", 0, "not_duplicate"),
        ("sst2", 1, "positive"),
        ("mr", 0, "negative"),
    ],
)
def test_hub_integer_labels_map_to_lmbff_names(name, hub_label, expected):
    task = registry.TASKS.get(name)
    layout = taskdata.HUB[name]
    texts = ("a premise.", "a hypothesis.") if task.num_sentences == 2 else ("a sentence.",)
    label_name = next(k for k, v in layout.encoding.items() if v == hub_label)
    [example] = examples_from_hub_rows(task, taskdata.hub_dataset(name, [(texts, label_name)]), split="test")
    assert task.labels[example.label] == expected
    assert example.guid == "test-0"


def test_snli_rows_without_gold_label_are_dropped():
    task = registry.TASKS.get("snli")
    rows = [(("a.", "b."), "neutral"), (("c.", "d."), "-"), (("e.", "f."), "contradiction")]
    examples = examples_from_hub_rows(task, taskdata.hub_dataset("snli", rows))
    assert [task.labels[e.label] for e in examples] == ["neutral", "contradiction"]
    assert [e.texts for e in examples] == [("a.", "b."), ("e.", "f.")]


def test_setfit_tasks_map_through_label_text():
    """SetFit's integers are not trusted: subj's fixture deliberately uses 0 = objective."""
    task = registry.TASKS.get("subj")
    rows = [(("a fact.",), "objective"), (("i think so.",), "subjective")]
    examples = examples_from_hub_rows(task, taskdata.hub_dataset("subj", rows))
    assert [task.labels[e.label] for e in examples] == ["objective", "subjective"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hub_and_original_formats_load_to_the_same_examples(name, tmp_path):
    task = registry.TASKS.get(name)
    train = taskdata.make_rows(name, 3, "train")
    test = taskdata.make_rows(name, 2, "test")
    hub_train = examples_from_hub_rows(task, taskdata.hub_dataset(name, train), split="train")
    hub_test = examples_from_hub_rows(task, taskdata.hub_dataset(name, test), split="test")
    taskdata.write_original(name, tmp_path, train, test)
    local_train, local_test = load_task_pools(task, tmp_path)

    for rows, hub, local in ((train, hub_train, local_train), (test, hub_test, local_test)):
        expected_labels = [label for _, label in rows]
        assert [task.labels[e.label] for e in hub] == expected_labels
        assert [task.labels[e.label] for e in local] == expected_labels
        assert [e.texts for e in hub] == [taskdata.hub_text(name, texts) for texts, _ in rows]
        # LM-Kernel-FT feeds AG News' description only; every other task reads the same text.
        assert [e.texts for e in local] == [texts for texts, _ in rows]
        assert all(isinstance(e, Example) for e in hub + local)


def test_qqp_short_rows_are_skipped_like_qqp_processor(tmp_path):
    task = registry.TASKS.get("qqp")
    train = taskdata.make_rows("qqp", 2, "train")
    taskdata.write_original("qqp", tmp_path, train, train)
    pool, _ = load_task_pools(task, tmp_path)
    assert len(pool) == len(train)


def test_builtin_templates_encode_with_tiny_tokenizers(bert_tok, roberta_tok):
    prompts = pytest.importorskip("benchmark.prompts")
    for tokenizer in (bert_tok, roberta_tok):
        for name in EXPECTED:
            task = registry.TASKS.get(name)
            encoder = prompts.PromptEncoder.for_task(tokenizer, task)
            assert len(encoder.label_word_ids) == task.num_labels
            texts = ("the movie was great .", "it is about the city .")[: task.num_sentences]
            encoded = encoder.encode(Example(f"{name}-0", texts, 0))
            assert encoded.input_ids[encoded.mask_pos] == tokenizer.mask_token_id, name
            assert len(encoded.input_ids) <= task.max_seq_len


# ---------------------------------------------------------------------------------------- task files

YAML_TASK = """
name: mytask
display_name: My Task
family: sentiment
labels: [bad, good]
hub: {path: someone/mydata, test_split: validation, text_columns: [review], label_column: stars,
      label_map: {"1": bad, "5": good}}
local: {dir: mydata, train_file: train.tsv, test_file: test.tsv, delimiter: "\\t", header: true,
        text_columns: [review], label_column: stars, label_map: {"1": bad, "5": good}}
template: "*cls**sent_0*_It_was*mask*.*sep+*"
label_words: {bad: terrible, good: great}
first_sent_limit: 100
"""

TOML_TASK = """
name = "mypairs"
display_name = "My Pairs"
family = "paraphrase"
labels = ["different", "same"]
num_sentences = 2
template = "*cls**sent_0**mask*,*+sentl_1**sep+*"
report_f1 = true

[label_words]
different = "No"
same = "Yes"

[local]
dir = "pairs"
train_file = "train.csv"
test_file = "test.csv"
text_columns = [1, 2]
label_column = 0
"""


def test_task_from_yaml_file_loads_and_reads_local_data(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text(YAML_TASK)
    task = load_task_file(path)
    assert isinstance(task, TaskSpec)
    assert task.labels == ("bad", "good") and task.first_sent_limit == 100
    assert task.hub is not None and task.hub.label_map == {"1": "bad", "5": "good"}
    folder = tmp_path / "data" / "original" / "mydata"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("id\treview\tstars\n0\tawful\t1\n1\tlovely\t5\n")
    (folder / "test.tsv").write_text("id\treview\tstars\n0\tfine\t5\n")
    train, test = load_task_pools(task, tmp_path / "data")
    assert [(e.texts, e.label) for e in train] == [(("awful",), 0), (("lovely",), 1)]
    assert [(e.texts, e.label) for e in test] == [(("fine",), 1)]


def test_task_from_toml_file_loads_and_reads_local_data(tmp_path):
    path = tmp_path / "task.toml"
    path.write_text(TOML_TASK)
    task = load_task_file(path)
    assert task.num_sentences == 2 and task.report_f1 and task.hub is None
    folder = tmp_path / "data" / "original" / "pairs"
    folder.mkdir(parents=True)
    # local.label_map is None: label names or class indices are accepted
    (folder / "train.csv").write_text('same,"a, b",c\n0,d,e\n')
    (folder / "test.csv").write_text("1,f,g\n")
    train, test = load_task_pools(task, tmp_path / "data")
    assert [(e.texts, e.label) for e in train] == [(("a, b", "c"), 1), (("d", "e"), 0)]
    assert [e.label for e in test] == [1]
    with pytest.raises(BenchError, match="no Hub source"):
        load_task_pools(task, None)


@pytest.mark.parametrize(
    ("filename", "text", "message"),
    [
        ("task.json", "{}", "must end in .yaml"),
        ("task.yaml", "name: [unclosed", "does not parse"),
        ("task.toml", "name = ", "does not parse"),
        ("task.yaml", "- a\n- b\n", "mapping"),
        ("task.yaml", YAML_TASK.replace("label_words: {bad: terrible, good: great}", "label_words: {bad: x}"),
         "label_words"),
        ("task.yaml", YAML_TASK.replace("*mask*", "*sent_1*"), "mask"),
        ("task.yaml", YAML_TASK.replace("first_sent_limit: 100", "colour: red"), "colour"),
        ("task.toml", TOML_TASK.replace("text_columns = [1, 2]", "text_columns = [1]"), "text columns"),
    ],
)
def test_bad_task_files_raise_bench_error(tmp_path, filename, text, message):
    path = tmp_path / filename
    path.write_text(text)
    with pytest.raises(BenchError, match=message):
        load_task_file(path)


def test_missing_task_file_raises(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        load_task_file(Path(tmp_path / "nope.yaml"))
