"""``python -m benchmark.cli``: the same as the ``bench`` console script."""

from benchmark.cli import main

main()
