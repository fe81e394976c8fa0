"""A throwaway plugin distribution for tests: one module plus a dist-info folder with entry points."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path


def install_plugin(site: Path, module: str, version: str, source: str, entry_points: str) -> dict[str, str]:
    """Write ``<site>/<module>.py`` and its ``<module>-<version>.dist-info`` (distribution ``module`` with
    dashes); returns an environment whose ``PYTHONPATH`` starts with ``site``, so subprocesses discover it."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    dist = site / f"{module}-{version}.dist-info"
    dist.mkdir()
    name = module.replace("_", "-")
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(entry_points)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
