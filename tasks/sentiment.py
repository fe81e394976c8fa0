"""Single-sentence sentiment tasks (SST-2, SST-5, MR, CR, MPQA) and Subj.

Templates, label words and length limits follow princeton-nlp/LM-Kernel-FT ``run_fewshot.sh``
(the kernel paper's run script); label order follows LM-BFF ``src/processors.py``
(``TextClassificationProcessor``: the CSV label is the integer class, label ``i`` is class ``i``;
``Sst2Processor``: labels "0", "1").

LM-BFF's original files for mr, cr, mpqa, subj and sst-5 are ``train.csv`` / ``test.csv`` without a
header, the label in column 0 and the sentence in column 1 (``pd.read_csv(header=None)``, then
``text_a=line[1], label=line[0]``). They come from harvardnlp/sent-conv-torch, where MR/CR/MPQA use
0 = negative, 1 = positive and Subj 0 = subjective, 1 = objective (LM-BFF mapping
``{0:'subjective',1:'objective'}``).
"""

from __future__ import annotations

from registry import HubSource, LocalSource, TaskSpec, register_task

# LM-Kernel-FT run_fewshot.sh: SST-2, mr, cr, mpqa, sst-5 all use this template.
IT_WAS = "*cls**sent_0*_It_was*mask*.*sep+*"
BINARY = ("negative", "positive")
BINARY_WORDS = {"negative": "terrible", "positive": "great"}
BINARY_CSV_MAP = {"0": "negative", "1": "positive"}


def _lmbff_csv(directory: str, label_map: dict[str, str]) -> LocalSource:
    """LM-BFF's headerless ``label,sentence`` CSV layout (TextClassificationProcessor)."""
    return LocalSource(
        dir=directory,
        train_file="train.csv",
        test_file="test.csv",
        delimiter=",",
        header=False,
        text_columns=(1,),
        label_column=0,
        label_map=label_map,
    )


SST2 = register_task(
    TaskSpec(
        name="sst2",
        display_name="SST-2",
        family="sentiment",
        labels=BINARY,
        # GLUE has no public test labels: LM-BFF tests on the original dev set (generate_k_shot_data.py).
        hub=HubSource(
            path="nyu-mll/glue",
            config="sst2",
            test_split="validation",
            text_columns=("sentence",),
            label_column="label",
            label_map={"0": "negative", "1": "positive"},
        ),
        # GLUE TSV with header "sentence<TAB>label" (Sst2Processor: text_a=line[0], label=line[1]).
        local=LocalSource(
            dir="SST-2",
            train_file="train.tsv",
            test_file="dev.tsv",
            delimiter="\t",
            header=True,
            text_columns=("sentence",),
            label_column="label",
            label_map=BINARY_CSV_MAP,
        ),
        template=IT_WAS,
        label_words=BINARY_WORDS,
        max_seq_len=128,
    )
)

SST5 = register_task(
    TaskSpec(
        name="sst5",
        display_name="SST-5",
        family="sentiment",
        labels=("very negative", "negative", "neutral", "positive", "very positive"),
        # SetFit/sst5 keeps the standard SST split (8,544 / 1,101 / 2,210), as LM-BFF's sst-5 (8,544 / 2,210).
        # Mapped through the string column so that an encoding change on the Hub fails loudly.
        hub=HubSource(
            path="SetFit/sst5",
            test_split="test",
            text_columns=("text",),
            label_column="label_text",
            label_map={
                "very negative": "very negative",
                "negative": "negative",
                "neutral": "neutral",
                "positive": "positive",
                "very positive": "very positive",
            },
        ),
        local=_lmbff_csv(
            "sst-5",
            {"0": "very negative", "1": "negative", "2": "neutral", "3": "positive", "4": "very positive"},
        ),
        template=IT_WAS,
        label_words={
            "very negative": "terrible",
            "negative": "bad",
            "neutral": "okay",
            "positive": "good",
            "very positive": "great",
        },
        # LM-Kernel-FT run_fewshot.sh sets no TASK_EXTRA for sst-5 (LM-BFF's 110/20 limits were for demos).
        max_seq_len=128,
    )
)

MR = register_task(
    TaskSpec(
        name="mr",
        display_name="MR",
        family="sentiment",
        labels=BINARY,
        # jxm/mr mirrors LM-BFF's own MR split (train 8,662 / test 2,000, columns sentence,label, LM-BFF's
        # 0/1 encoding), so Hub runs sample the same k-shot sets as LM-BFF.
        hub=HubSource(
            path="jxm/mr",
            test_split="test",
            text_columns=("sentence",),
            label_column="label",
            label_map=BINARY_CSV_MAP,
        ),
        local=_lmbff_csv("mr", BINARY_CSV_MAP),
        template=IT_WAS,
        label_words=BINARY_WORDS,
        max_seq_len=128,
        first_sent_limit=110,  # run_fewshot.sh mr: --first_sent_limit 110 --other_sent_limit 50
        other_sent_limit=50,
    )
)

CR = register_task(
    TaskSpec(
        name="cr",
        display_name="CR",
        family="sentiment",
        labels=BINARY,
        # SetFit/SentEval-CR (text, label, label_text); its train/test split differs from LM-BFF's (1,775 / 2,000).
        hub=HubSource(
            path="SetFit/SentEval-CR",
            test_split="test",
            text_columns=("text",),
            label_column="label_text",
            label_map={"negative": "negative", "positive": "positive"},
        ),
        local=_lmbff_csv("cr", BINARY_CSV_MAP),
        template=IT_WAS,
        label_words=BINARY_WORDS,
        max_seq_len=128,
        first_sent_limit=110,  # run_fewshot.sh cr: --first_sent_limit 110 --other_sent_limit 50
        other_sent_limit=50,
    )
)

MPQA = register_task(
    TaskSpec(
        name="mpqa",
        display_name="MPQA",
        family="sentiment",
        labels=BINARY,
        # jxm/mpqa mirrors LM-BFF's MPQA (test 2,000; train 8,603 of LM-BFF's 8,606 rows).
        hub=HubSource(
            path="jxm/mpqa",
            test_split="test",
            text_columns=("sentence",),
            label_column="label",
            label_map=BINARY_CSV_MAP,
        ),
        local=_lmbff_csv("mpqa", BINARY_CSV_MAP),
        template=IT_WAS,
        label_words=BINARY_WORDS,
        max_seq_len=128,
        first_sent_limit=110,  # run_fewshot.sh mpqa: --first_sent_limit 110 (no other_sent_limit)
    )
)

SUBJ = register_task(
    TaskSpec(
        name="subj",
        display_name="Subj",
        family="other",
        labels=("subjective", "objective"),
        # SetFit/subj (text, label, label_text; 8,000 / 2,000). Mapped through label_text, not the integer,
        # because the integer encoding is not LM-BFF's guaranteed 0 = subjective.
        hub=HubSource(
            path="SetFit/subj",
            test_split="test",
            text_columns=("text",),
            label_column="label_text",
            label_map={"subjective": "subjective", "objective": "objective"},
        ),
        local=_lmbff_csv("subj", {"0": "subjective", "1": "objective"}),
        template="*cls**sent_0*_This_is*mask*.*sep+*",
        label_words={"subjective": "subjective", "objective": "objective"},
        max_seq_len=128,
        first_sent_limit=110,  # run_fewshot.sh subj: --first_sent_limit 110 --other_sent_limit 50
        other_sent_limit=50,
    )
)
