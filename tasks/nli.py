"""Natural-language-inference tasks: MNLI, SNLI, QNLI, RTE.

Label names and order are LM-BFF's ``get_labels()`` (``src/processors.py``): MNLI/SNLI
["contradiction", "entailment", "neutral"], QNLI/RTE ["entailment", "not_entailment"]. The Hub's GLUE
and SNLI encode 0 entailment, 1 neutral, 2 contradiction, so those are remapped explicitly.

Local files are LM-BFF's GLUE-style TSVs with a header line; GLUE's dev set is our test set, as in
LM-BFF ``tools/generate_k_shot_data.py`` ("Use the original development set as the test set").
Templates, label words and length limits follow LM-Kernel-FT ``run_fewshot.sh``.
"""

from __future__ import annotations

from registry import HubSource, LocalSource, TaskSpec, register_task

NLI3 = ("contradiction", "entailment", "neutral")
NLI3_WORDS = {"contradiction": "No", "entailment": "Yes", "neutral": "Maybe"}
HUB_NLI3_MAP = {"0": "entailment", "1": "neutral", "2": "contradiction"}
NLI2 = ("entailment", "not_entailment")
NLI2_WORDS = {"entailment": "Yes", "not_entailment": "No"}
QUESTION_TEMPLATE = "*cls**sent-_0*?*mask*,*+sentl_1**sep+*"


def _identity(labels: tuple[str, ...]) -> dict[str, str]:
    return {label: label for label in labels}


MNLI = register_task(
    TaskSpec(
        name="mnli",
        display_name="MNLI",
        family="nli",
        labels=NLI3,
        num_sentences=2,
        hub=HubSource(
            path="nyu-mll/glue",
            config="mnli",
            test_split="validation_matched",
            text_columns=("premise", "hypothesis"),
            label_column="label",
            label_map=HUB_NLI3_MAP,
        ),
        # MnliProcessor: text_a=line[8] (sentence1), text_b=line[9] (sentence2), label=line[-1] (gold_label);
        # the test set is dev_matched.tsv.
        local=LocalSource(
            dir="MNLI",
            train_file="train.tsv",
            test_file="dev_matched.tsv",
            delimiter="\t",
            header=True,
            text_columns=("sentence1", "sentence2"),
            label_column="gold_label",
            label_map=_identity(NLI3),
        ),
        template=QUESTION_TEMPLATE,
        label_words=NLI3_WORDS,
        max_seq_len=256,  # run_fewshot.sh MNLI: --max_seq_len 256 --first_sent_limit 240
        first_sent_limit=240,
    )
)

SNLI = register_task(
    TaskSpec(
        name="snli",
        display_name="SNLI",
        family="nli",
        labels=NLI3,
        num_sentences=2,
        # stanfordnlp/snli marks pairs without a gold label -1; they are dropped (LM-BFF's GLUE-style SNLI
        # files have none: 9,842 test pairs = 10,000 - 158).
        hub=HubSource(
            path="stanfordnlp/snli",
            test_split="validation",
            text_columns=("premise", "hypothesis"),
            label_column="label",
            label_map=HUB_NLI3_MAP,
            drop_labels=("-1",),
        ),
        # SnliProcessor: text_a=line[7] (sentence1), text_b=line[8] (sentence2), label=line[-1] (gold_label).
        local=LocalSource(
            dir="SNLI",
            train_file="train.tsv",
            test_file="dev.tsv",
            delimiter="\t",
            header=True,
            text_columns=("sentence1", "sentence2"),
            label_column="gold_label",
            label_map=_identity(NLI3),
        ),
        template=QUESTION_TEMPLATE,
        label_words=NLI3_WORDS,
        max_seq_len=256,  # run_fewshot.sh SNLI: --max_seq_len 256 (no sentence limit)
    )
)

QNLI = register_task(
    TaskSpec(
        name="qnli",
        display_name="QNLI",
        family="nli",
        labels=NLI2,
        num_sentences=2,
        hub=HubSource(
            path="nyu-mll/glue",
            config="qnli",
            test_split="validation",
            text_columns=("question", "sentence"),
            label_column="label",
            label_map={"0": "entailment", "1": "not_entailment"},
        ),
        # QnliProcessor: header "index question sentence label"; text_a=line[1], text_b=line[2], label=line[-1].
        local=LocalSource(
            dir="QNLI",
            train_file="train.tsv",
            test_file="dev.tsv",
            delimiter="\t",
            header=True,
            text_columns=("question", "sentence"),
            label_column="label",
            label_map=_identity(NLI2),
        ),
        template=QUESTION_TEMPLATE,
        label_words=NLI2_WORDS,
        max_seq_len=128,  # run_fewshot.sh QNLI: no TASK_EXTRA
    )
)

RTE = register_task(
    TaskSpec(
        name="rte",
        display_name="RTE",
        family="nli",
        labels=NLI2,
        num_sentences=2,
        hub=HubSource(
            path="nyu-mll/glue",
            config="rte",
            test_split="validation",
            text_columns=("sentence1", "sentence2"),
            label_column="label",
            label_map={"0": "entailment", "1": "not_entailment"},
        ),
        # RteProcessor: header "index sentence1 sentence2 label"; text_a=line[1], text_b=line[2], label=line[-1].
        local=LocalSource(
            dir="RTE",
            train_file="train.tsv",
            test_file="dev.tsv",
            delimiter="\t",
            header=True,
            text_columns=("sentence1", "sentence2"),
            label_column="label",
            label_map=_identity(NLI2),
        ),
        template=QUESTION_TEMPLATE,
        label_words=NLI2_WORDS,
        max_seq_len=256,  # run_fewshot.sh RTE: --max_seq_len 256 --first_sent_limit 240
        first_sent_limit=240,
    )
)
