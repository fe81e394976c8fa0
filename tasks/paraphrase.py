"""Paraphrase tasks: MRPC and QQP (both also report F1 of the positive class, as GLUE does).

LM-BFF labels both "0" / "1" (``MrpcProcessor`` / ``QqpProcessor.get_labels``); here they are named
not_equivalent / equivalent and not_duplicate / duplicate, in the same order. Templates and label
words follow LM-Kernel-FT ``run_fewshot.sh`` (``{'0':'No','1':'Yes'}``), which sets no length options.
"""

from __future__ import annotations

from registry import HubSource, LocalSource, TaskSpec, register_task

PAIR_TEMPLATE = "*cls**sent_0**mask*,*+sentl_1**sep+*"

MRPC = register_task(
    TaskSpec(
        name="mrpc",
        display_name="MRPC",
        family="paraphrase",
        labels=("not_equivalent", "equivalent"),
        num_sentences=2,
        hub=HubSource(
            path="nyu-mll/glue",
            config="mrpc",
            test_split="validation",
            text_columns=("sentence1", "sentence2"),
            label_column="label",
            label_map={"0": "not_equivalent", "1": "equivalent"},
        ),
        # MrpcProcessor: header "Quality  #1 ID  #2 ID  #1 String  #2 String";
        # text_a=line[3], text_b=line[4], label=line[0].
        local=LocalSource(
            dir="MRPC",
            train_file="train.tsv",
            test_file="dev.tsv",
            delimiter="\t",
            header=True,
            text_columns=("#1 String", "#2 String"),
            label_column="Quality",
            label_map={"0": "not_equivalent", "1": "equivalent"},
        ),
        template=PAIR_TEMPLATE,
        label_words={"not_equivalent": "No", "equivalent": "Yes"},
        max_seq_len=128,
        report_f1=True,
    )
)

QQP = register_task(
    TaskSpec(
        name="qqp",
        display_name="QQP",
        family="paraphrase",
        labels=("not_duplicate", "duplicate"),
        num_sentences=2,
        hub=HubSource(
            path="nyu-mll/glue",
            config="qqp",
            test_split="validation",
            text_columns=("question1", "question2"),
            label_column="label",
            label_map={"0": "not_duplicate", "1": "duplicate"},
        ),
        # QqpProcessor: header "id qid1 qid2 question1 question2 is_duplicate"; text_a=line[3],
        # text_b=line[4], label=line[5], and rows too short for those (IndexError) are skipped.
        local=LocalSource(
            dir="QQP",
            train_file="train.tsv",
            test_file="dev.tsv",
            delimiter="\t",
            header=True,
            text_columns=("question1", "question2"),
            label_column="is_duplicate",
            label_map={"0": "not_duplicate", "1": "duplicate"},
            skip_bad_rows=True,
        ),
        template=PAIR_TEMPLATE,
        label_words={"not_duplicate": "No", "duplicate": "Yes"},
        max_seq_len=128,
        report_f1=True,
    )
)
