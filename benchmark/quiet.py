"""Keep third-party libraries to warnings: no INFO chatter, no model-loading progress bars."""

from __future__ import annotations

import logging
import warnings

LIBRARY_LOGGERS = ("mlflow", "alembic", "datasets", "transformers", "deepspeed", "httpx")


def quiet_libraries() -> None:
    """Third-party loggers at WARNING and transformers' own progress bars off (the suite's bars stay)."""
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # torch.distributed deprecation notices, printed once per rank on every DeepSpeed run.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
