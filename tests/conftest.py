"""Shared fixtures: tiny tokenizers and masked LMs built from a config (no download).

The suite never writes outside temporary directories: every test runs in its own ``tmp_path`` as the
current directory, with ``MLFLOW_TRACKING_URI`` and the kernel-bench cache there, and the session runs
with ``HOME`` in a temporary directory. At the end the session fails if the checkout got a new file
(ignored ones such as ``mlruns/`` included; bytecode excepted) and warns if the real ``~/.cache/kernel-bench``
changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
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


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store per module (creating one costs seconds); tests use their own experiments."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="session")
def bert_tok(tmp_path_factory: pytest.TempPathFactory):
    """Tiny uncased WordPiece tokenizer."""
    return tiny.bert_tokenizer(tmp_path_factory.mktemp("bert_tok"))


@pytest.fixture(scope="session")
def roberta_tok(tmp_path_factory: pytest.TempPathFactory):
    """Tiny byte-level BPE tokenizer."""
    return tiny.roberta_tokenizer(tmp_path_factory.mktemp("roberta_tok"))


@pytest.fixture(scope="module")
def bert(bert_tok) -> dict:
    """A tiny float64 BERT masked LM, three label-word ids and its special token ids (the kernel tests' model)."""
    mlm = tiny.bert_mlm(bert_tok, seed=2).double()
    words = bert_tok.convert_tokens_to_ids(["great", "terrible", "okay"])
    ids = dict(vocab=len(bert_tok), pad=bert_tok.pad_token_id, mask=bert_tok.mask_token_id, cls=bert_tok.cls_token_id)
    return {"mlm": mlm, "words": words, "ids": ids}


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, bert_tok) -> Path:
    """A saved tiny random BERT masked LM + tokenizer, loadable with from_pretrained."""
    return tiny.save_pretrained(tiny.bert_mlm(bert_tok), bert_tok, tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory: pytest.TempPathFactory, roberta_tok) -> Path:
    """A saved tiny random RoBERTa masked LM + tokenizer, loadable with from_pretrained."""
    return tiny.save_pretrained(tiny.roberta_mlm(roberta_tok), roberta_tok, tmp_path_factory.mktemp("tiny_roberta"))


@pytest.fixture(autouse=True)
def _isolated_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test: the default MLflow store, the default cache and the current directory in its tmp_path."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    monkeypatch.setenv("KERNEL_BENCH_CACHE", str(tmp_path / "kernel-bench-cache"))
    monkeypatch.chdir(tmp_path)


REPO = Path(__file__).resolve().parents[1]
REAL_CACHE = Path.home() / ".cache" / "kernel-bench"
_SNAPSHOT: dict[str, object] = {}


def checkout_files() -> set[str] | None:
    """Untracked and ignored files of the checkout (bytecode left out), or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--ignored", "--untracked-files=all"],
                             capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {line[3:] for line in out.splitlines() if "__pycache__" not in line and not line.endswith(".pyc")}


def cache_files() -> set[tuple[str, int]]:
    """(path, mtime) of every file under the real ~/.cache/kernel-bench."""
    if not REAL_CACHE.is_dir():
        return set()
    return {(str(p), p.stat().st_mtime_ns) for p in REAL_CACHE.rglob("*") if p.is_file()}


def pytest_configure(config: pytest.Config) -> None:
    """Tests never touch the network (the Hub is reported unreachable at once) nor the user's home."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if hasattr(config, "workerinput"):
        return
    _SNAPSHOT["checkout"], _SNAPSHOT["cache"] = checkout_files(), cache_files()
    extensions = Path.home() / ".cache" / "torch_extensions"
    if extensions.is_dir():  # DeepSpeed's CPU op compiles in ~40 s: reuse a build that exists (slow tests)
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(extensions))
    home = tempfile.mkdtemp(prefix="kernel-bench-test-home-")
    _SNAPSHOT["home"], _SNAPSHOT["real_home"] = home, os.environ.get("HOME")
    os.environ["HOME"] = home


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the temporary HOME."""
    home = _SNAPSHOT.pop("home", None)
    if home:
        real = _SNAPSHOT.get("real_home")
        if isinstance(real, str):
            os.environ["HOME"] = real
        shutil.rmtree(str(home), ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session if the tests wrote into the checkout; warn if the real kernel-bench cache changed
    (other processes on the machine may write there, so that is not proof against the suite)."""
    if "checkout" not in _SNAPSHOT:
        return
    before, after = _SNAPSHOT["checkout"], checkout_files()
    new = sorted(after - before) if isinstance(before, set) and after is not None else []
    changed = sorted(path for path, _ in cache_files() - _SNAPSHOT["cache"])  # type: ignore[operator]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if changed and reporter is not None:
        reporter.write_line(f"warning: {REAL_CACHE} changed during the tests (by them or another process): "
                            f"{changed[:5]}", yellow=True)
    if new:
        if reporter is not None:
            reporter.write_line(f"ERROR: the test suite wrote into the checkout {REPO}: {new[:10]}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
