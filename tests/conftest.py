"""Shared fixtures: tiny tokenizers and masked LMs built from a config (no download)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests import tiny


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is much faster than several on a shared machine (per module)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def bert_tok(tmp_path_factory: pytest.TempPathFactory):
    """Tiny uncased WordPiece tokenizer."""
    return tiny.bert_tokenizer(tmp_path_factory.mktemp("bert_tok"))


@pytest.fixture(scope="session")
def roberta_tok(tmp_path_factory: pytest.TempPathFactory):
    """Tiny byte-level BPE tokenizer."""
    return tiny.roberta_tokenizer(tmp_path_factory.mktemp("roberta_tok"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, bert_tok) -> Path:
    """A saved tiny random BERT masked LM + tokenizer, loadable with from_pretrained."""
    return tiny.save_pretrained(tiny.bert_mlm(bert_tok), bert_tok, tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory: pytest.TempPathFactory, roberta_tok) -> Path:
    """A saved tiny random RoBERTa masked LM + tokenizer, loadable with from_pretrained."""
    return tiny.save_pretrained(tiny.roberta_mlm(roberta_tok), roberta_tok, tmp_path_factory.mktemp("tiny_roberta"))


def pytest_configure(config: pytest.Config) -> None:
    """Tests never touch the network: the Hub is reported unreachable at once."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
