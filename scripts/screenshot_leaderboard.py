"""Open a leaderboard HTML file in headless Chromium and save a screenshot (PNG).

    python scripts/screenshot_leaderboard.py leaderboard/leaderboard.html /tmp/leaderboard.png
    python scripts/screenshot_leaderboard.py --demo /tmp/leaderboard.png   # synthetic runs, no store needed

Chromium comes from the system (Debian: ``apt-get install -y chromium``); ``$CHROMIUM`` overrides the
binary. The page is self-contained, so no network is needed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The Chromium binary: ``$CHROMIUM``, else the first of `BINARIES` on the PATH."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((path for name in BINARIES if (path := shutil.which(name))), None)


def screenshot(html: Path, png: Path, *, width: int = 1280, height: int = 2600, timeout: float = 120) -> Path:
    """Render ``html`` in headless Chromium at ``width`` x ``height`` and write ``png``."""
    binary = find_chromium()
    if binary is None:
        raise RuntimeError("no Chromium found; install it (apt-get install -y chromium) or set $CHROMIUM")
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                   "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}",
                   f"--screenshot={png.resolve()}", f"--window-size={width},{height}",
                   html.resolve().as_uri()]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if not png.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot (exit {result.returncode}): {result.stderr[-2000:]}")
    return png


def demo_html(path: Path) -> Path:
    """A leaderboard of synthetic runs (for a quick look without an MLflow store)."""
    import numpy as np
    import pandas as pd

    from leaderboard import from_runs, render_board

    rng = np.random.default_rng(0)
    rows = []
    bases = {"zero-shot": 0.62, "linear-probe": 0.70, "ft-sgd": 0.86, "ntk-sgd": 0.83, "ft-adam": 0.88,
             "ntk-adam": 0.85, "lora-adam": 0.87, "lora-ntk-adam": 0.84}
    for task, shift in (("sst2", 0.03), ("mr", 0.0), ("cr", 0.01), ("subj", 0.02), ("mnli", -0.25), ("rte", -0.2)):
        for method, base in bases.items():
            for seed in (13, 21, 42, 87, 100):
                n = len(rows)
                rows.append({"task": task, "method": method, "method_family": "", "backbone": "roberta-base", "k": 16,
                             "seed": seed, "template": "default", "config_hash": f"h{n}", "run_id": f"r{n}",
                             "end_time": n, "dev_acc": base + shift + rng.normal(0, 0.03),
                             "test_acc": base + shift + rng.normal(0, 0.02)})
    board = from_runs(pd.DataFrame(rows), source="synthetic demo runs", experiment="demo")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_board(board, "html"))
    return path


def main(argv: list[str] | None = None) -> int:
    """CLI: ``HTML PNG`` or ``--demo PNG``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", nargs="?", type=Path, help="leaderboard HTML file")
    parser.add_argument("png", type=Path, help="screenshot to write")
    parser.add_argument("--demo", action="store_true", help="render a synthetic leaderboard first")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2600)
    args = parser.parse_args(argv)
    html = args.html
    if args.demo:
        html = demo_html(args.png.with_suffix(".html"))
    if html is None:
        parser.error("give the HTML file (or --demo)")
    try:
        out = screenshot(html, args.png, width=args.width, height=args.height)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
