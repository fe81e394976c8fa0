"""Topic and question-type tasks: TREC (coarse question type) and AG News.

Templates, label words and length limits follow princeton-nlp/LM-Kernel-FT ``run_fewshot.sh``.
"""

from __future__ import annotations

from registry import HubSource, LocalSource, TaskSpec, register_task

# LM-BFF's trec data is harvardnlp/sent-conv-torch's TREC.{train,test}.all, whose integer classes are
# 0 DESC, 1 ENTY, 2 ABBR, 3 HUM, 4 LOC, 5 NUM (e.g. "0 What is an atom ?", "2 What does NASA stand for ?");
# LM-BFF's mapping {0:'Description',1:'Entity',2:'Expression',3:'Human',4:'Location',5:'Number'} names them.
TREC_LABELS = ("description", "entity", "abbreviation", "human", "location", "number")

TREC = register_task(
    TaskSpec(
        name="trec",
        display_name="TREC",
        family="topic",
        labels=TREC_LABELS,
        # CogComp/trec (the Hub's `trec`): 5,452 / 500 like LM-BFF, but coarse_label is ordered
        # 0 ABBR, 1 ENTY, 2 DESC, 3 HUM, 4 LOC, 5 NUM, so it is remapped to LM-BFF's order here.
        hub=HubSource(
            path="CogComp/trec",
            test_split="test",
            text_columns=("text",),
            label_column="coarse_label",
            label_map={
                "0": "abbreviation",
                "1": "entity",
                "2": "description",
                "3": "human",
                "4": "location",
                "5": "number",
            },
        ),
        local=LocalSource(
            dir="trec",
            train_file="train.csv",
            test_file="test.csv",
            delimiter=",",
            header=False,
            text_columns=(1,),
            label_column=0,
            label_map={str(i): name for i, name in enumerate(TREC_LABELS)},
        ),
        template="*cls**mask*:*+sent_0**sep+*",
        label_words={
            "description": "Description",
            "entity": "Entity",
            "abbreviation": "Expression",
            "human": "Human",
            "location": "Location",
            "number": "Number",
        },
        max_seq_len=128,
        first_sent_limit=110,  # run_fewshot.sh trec: --first_sent_limit 110
    )
)

AGNEWS = register_task(
    TaskSpec(
        name="agnews",
        display_name="AG News",
        family="topic",
        labels=("world", "sports", "business", "tech"),
        # fancyzhx/ag_news (the Hub's `ag_news`): label 0 World, 1 Sports, 2 Business, 3 Sci/Tech. Its `text`
        # is title and description joined, whereas LM-Kernel-FT feeds the description alone (see below).
        hub=HubSource(
            path="fancyzhx/ag_news",
            test_split="test",
            text_columns=("text",),
            label_column="label",
            label_map={"0": "world", "1": "sports", "2": "business", "3": "tech"},
        ),
        # LM-Kernel-FT (task name / folder `ag_news`) reads the original ag_news_csv files: no header,
        # columns class (1-4), title, description; src/processors.py uses text_a=line[2] (the description
        # only) and label=line[0], mapped by run_fewshot.sh {1:'world',2:'sports',3:'business',4:'tech'}.
        local=LocalSource(
            dir="ag_news",
            train_file="train.csv",
            test_file="test.csv",
            delimiter=",",
            header=False,
            text_columns=(2,),
            label_column=0,
            label_map={"1": "world", "2": "sports", "3": "business", "4": "tech"},
        ),
        template="*cls**sent_0*_This_article_is_about*mask*_news.*sep+*",
        label_words={"world": "world", "sports": "sports", "business": "business", "tech": "tech"},
        max_seq_len=256,  # run_fewshot.sh ag_news: --max_seq_len 256 --first_sent_limit 240
        first_sent_limit=240,
    )
)
