"""The 14 built-in tasks of the benchmark, registered in `registry.TASKS` when this package is imported.

CLI names: sst2 sst5 mr cr mpqa subj (`tasks.sentiment`), trec agnews (`tasks.topic`),
mnli snli qnli rte (`tasks.nli`), mrpc qqp (`tasks.paraphrase`).
"""

from __future__ import annotations

# Registration order is the leaderboard's column order (LM-BFF's tables): sentiment, topic, NLI, paraphrase.
# isort: off
from tasks import sentiment, topic, nli, paraphrase
# isort: on

BUILTIN_TASKS = (
    "sst2",
    "sst5",
    "mr",
    "cr",
    "mpqa",
    "subj",
    "trec",
    "agnews",
    "mnli",
    "snli",
    "qnli",
    "rte",
    "mrpc",
    "qqp",
)

__all__ = ["BUILTIN_TASKS", "nli", "paraphrase", "sentiment", "topic"]
