"""A quick check whether the Hugging Face Hub can be reached, so offline use fails fast."""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """True if the Hub endpoint accepts a TCP connection within ``timeout`` seconds.

    ``HF_HUB_OFFLINE=1`` (or ``HF_DATASETS_OFFLINE=1``) means offline without trying. Without
    this check, transformers and datasets retry for most of a minute before giving up.
    """
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False
