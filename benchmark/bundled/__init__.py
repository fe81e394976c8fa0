"""Real data shipped inside the distribution, so that a fresh install runs a real job offline.

- ``models/bert-tiny/``: a pre-trained 4.4M-parameter BERT masked LM (Apache-2.0, see its NOTICE),
  registered as backbone ``bert-tiny``.
- ``data/original/mr/``: the MR movie-review sentences in LM-BFF's ``original/`` layout (see
  ``data/README.md`` for their provenance), used with ``--data-dir bundled``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

BUNDLED = "bundled"
"""The ``--data-dir`` value that selects the bundled data folder."""


def model_dir() -> Path:
    """The bundled bert-tiny model folder (loadable with ``AutoModelForMaskedLM.from_pretrained``)."""
    return Path(str(files(__name__) / "models" / "bert-tiny"))


def data_dir() -> Path:
    """The bundled data root, in LM-BFF's layout (``original/mr/{train,test}.csv``)."""
    return Path(str(files(__name__) / "data"))


def bundled_tasks() -> list[str]:
    """The ``original/`` folder names with bundled data (``['mr']``)."""
    return sorted(p.name for p in (data_dir() / "original").iterdir() if p.is_dir())


def resolve_data_dir(value: str | Path) -> Path:
    """``value`` as a data root: the word ``bundled`` is the bundled data folder, anything else a path."""
    if str(value) == BUNDLED:
        return data_dir()
    return Path(value).expanduser()
