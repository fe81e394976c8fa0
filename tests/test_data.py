"""Data loading (Hub, LM-BFF files, plain files, k-shot folders), the k-shot sampler, the split cache."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import benchmark.data as data
import registry
from benchmark.data import examples_from_hub_rows, kshot_splits, load_splits, load_task_pools
from benchmark.examples import Example
from registry import BenchError, TaskSpec
from tests.fixtures import taskdata

registry.load_builtins()
SEEDS = (13, 21, 42, 87, 100)


def task(name: str) -> TaskSpec:
    """A built-in task by name."""
    return registry.TASKS.get(name)


def pool(counts: list[int], prefix: str = "x") -> list[Example]:
    """Examples with label i repeated counts[i] times, labels interleaved."""
    out, left = [], list(counts)
    while any(left):
        for label, n in enumerate(left):
            if n:
                out.append(Example(f"{prefix}-{len(out)}", (f"{prefix} text {len(out)}",), label))
                left[label] -= 1
    return out


@pytest.fixture
def fake_hub(monkeypatch):
    """Serve Hub splits from fixtures instead of the network; returns the dict to fill."""
    served: dict[tuple[str, str], object] = {}

    def load(task_spec, hub, split):
        return served[(task_spec.name, split)]

    monkeypatch.setattr(data, "_load_hub_split", load)
    return served


# ----------------------------------------------------------------------------------------- sampler


def test_kshot_takes_exactly_k_per_label_disjoint_train_and_dev():
    train_pool, test_pool = pool([40, 30, 25]), pool([10, 10, 10], "t")
    splits = kshot_splits(train_pool, test_pool, num_labels=3, k=8, seed=13)
    assert Counter(e.label for e in splits.train) == {0: 8, 1: 8, 2: 8}
    assert Counter(e.label for e in splits.dev) == {0: 8, 1: 8, 2: 8}
    assert not {e.guid for e in splits.train} & {e.guid for e in splits.dev}
    assert splits.test == test_pool  # under the cap: all of it, in order
    assert splits.sizes() == {"train": 24, "dev": 24, "test": 30}


def test_kshot_is_deterministic_per_seed_and_varies_across_seeds():
    train_pool, test_pool = pool([50, 50]), pool([700, 700], "t")
    runs = {seed: kshot_splits(train_pool, test_pool, num_labels=2, k=4, seed=seed) for seed in SEEDS}
    again = kshot_splits(train_pool, test_pool, num_labels=2, k=4, seed=13)
    assert again == runs[13]
    assert len({tuple(e.guid for e in s.train) for s in runs.values()}) == len(SEEDS)
    assert len({tuple(e.guid for e in s.dev) for s in runs.values()}) == len(SEEDS)
    tests = {tuple(e.guid for e in s.test) for s in runs.values()}
    assert len(tests) == 1 and len(runs[13].test) == 1000  # one shared test subset for every seed


def test_kshot_matches_lmbff_generate_k_shot_data(tmp_path):
    """Our sampler against LM-BFF's procedure re-run on the same CSV (pandas rows, global numpy seed)."""
    rng = np.random.RandomState(0)
    frame = pd.DataFrame({"label": rng.randint(0, 3, size=400), "text": [f"s{i}" for i in range(400)]})
    test_frame = pd.DataFrame({"label": rng.randint(0, 3, size=1500), "text": [f"t{i}" for i in range(1500)]})
    train_pool = [Example(f"train-{i}", (t,), int(y)) for i, (y, t) in enumerate(frame.values.tolist())]
    test_pool = [Example(f"test-{i}", (t,), int(y)) for i, (y, t) in enumerate(test_frame.values.tolist())]
    for seed in SEEDS:
        lines = frame.values.tolist()
        np.random.seed(seed)
        np.random.shuffle(lines)
        by_label: dict[int, list] = {}
        for line in lines:
            by_label.setdefault(line[0], []).append(line)
        ref_train = [line[1] for group in by_label.values() for line in group[:16]]
        ref_dev = [line[1] for group in by_label.values() for line in group[16:32]]
        ref_test = test_frame.sample(n=1000, random_state=42)["text"].tolist()  # LM-Kernel-FT k-shot-1k-test
        splits = kshot_splits(train_pool, test_pool, num_labels=3, k=16, seed=seed)
        assert [e.texts[0] for e in splits.train] == ref_train
        assert [e.texts[0] for e in splits.dev] == ref_dev
        assert [e.texts[0] for e in splits.test] == ref_test
    # The GLUE TSV branch shuffles the list of test lines with seed 42 instead: the same subset and order.
    lines = [e.texts[0] for e in test_pool]
    np.random.seed(42)
    np.random.shuffle(lines)
    assert [e.texts[0] for e in kshot_splits(train_pool, test_pool, num_labels=3, k=2, seed=1).test] == lines[:1000]


def test_test_cap_zero_keeps_everything_and_small_caps_sample():
    train_pool, test_pool = pool([10, 10]), pool([30, 30], "t")
    assert kshot_splits(train_pool, test_pool, num_labels=2, k=2, seed=1, test_cap=0).test == test_pool
    capped = kshot_splits(train_pool, test_pool, num_labels=2, k=2, seed=1, test_cap=7).test
    assert len(capped) == 7 and len({e.guid for e in capped}) == 7
    assert capped == [test_pool[i] for i in np.random.RandomState(42).permutation(60)[:7]]


def test_k_too_large_says_which_label_and_the_largest_k():
    train_pool = pool([40, 9, 30])
    with pytest.raises(BenchError) as info:
        kshot_splits(train_pool, [], num_labels=3, k=16, seed=13, label_names=("a", "b", "c"))
    message = str(info.value)
    assert "label 'b' has 9" in message and "largest k possible is 4" in message and "\n" not in message
    with pytest.raises(BenchError, match="label 2 has 0"):
        kshot_splits(pool([5, 5]), [], num_labels=3, k=1, seed=13)


def test_sampler_rejects_bad_arguments():
    with pytest.raises(BenchError, match="k must be"):
        kshot_splits(pool([4, 4]), [], num_labels=2, k=0, seed=1)
    with pytest.raises(BenchError, match="seed"):
        kshot_splits(pool([4, 4]), [], num_labels=2, k=1, seed=-1)
    with pytest.raises(BenchError, match="outside"):
        kshot_splits(pool([4, 4, 4]), [], num_labels=2, k=1, seed=1)
    with pytest.raises(BenchError, match="test_cap"):
        kshot_splits(pool([4, 4]), [], num_labels=2, k=1, seed=1, test_cap=-1)


# ------------------------------------------------------------------------------ all 14 tasks, both formats


@pytest.mark.parametrize("name", taskdata.TASK_NAMES)
def test_every_task_samples_the_same_splits_from_hub_and_original_files(name, tmp_path, fake_hub):
    spec = task(name)
    train = taskdata.make_rows(name, 6, "train")
    test = taskdata.make_rows(name, 3, "test")
    fake_hub[(name, spec.hub.train_split)] = taskdata.hub_dataset(name, train)
    fake_hub[(name, spec.hub.test_split)] = taskdata.hub_dataset(name, test)
    taskdata.write_original(name, tmp_path, train, test, bad_qqp_row=False)

    from_hub = load_splits(spec, k=2, seed=13, data_dir=None, test_cap=5, cache_dir=None)
    from_files = load_splits(spec, k=2, seed=13, data_dir=tmp_path, test_cap=5, cache_dir=None)
    n = spec.num_labels
    assert from_hub.sizes() == from_files.sizes() == {"train": 2 * n, "dev": 2 * n, "test": 5}
    for split in ("train", "dev", "test"):
        hub_part, file_part = getattr(from_hub, split), getattr(from_files, split)
        assert [e.guid for e in hub_part] == [e.guid for e in file_part]
        assert [e.label for e in hub_part] == [e.label for e in file_part]
        if name != "agnews":
            assert [e.texts for e in hub_part] == [e.texts for e in file_part]
    assert Counter(e.label for e in from_hub.train) == dict.fromkeys(range(n), 2)
    rows = {texts: label for texts, label in train}
    assert all(spec.labels[e.label] == rows[e.texts] for e in from_files.train)


# -------------------------------------------------------------------------------------- local layouts


def test_plain_per_split_files_csv_and_jsonl(tmp_path):
    folder = tmp_path / "mnli"
    folder.mkdir()
    # Hub column names and Hub encoding (2 = contradiction), or label names
    pd.DataFrame({"premise": ["p0", "p1"], "hypothesis": ["h0", "h1"], "label": [2, "neutral"]}).to_csv(
        folder / "train.csv", index=False
    )
    (folder / "test.jsonl").write_text(
        json.dumps({"sentence1": "a", "sentence2": "b", "label": 0}) + "\n\n"
        + json.dumps({"sentence1": "c", "sentence2": "d", "label": "contradiction"}) + "\n"
    )
    train, test = load_task_pools(task("mnli"), tmp_path)
    assert [(e.texts, task("mnli").labels[e.label]) for e in train] == [
        (("p0", "h0"), "contradiction"),
        (("p1", "h1"), "neutral"),
    ]
    assert [task("mnli").labels[e.label] for e in test] == ["entailment", "contradiction"]


def test_original_layout_wins_over_plain_and_errors_are_one_line(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        load_task_pools(task("sst2"), tmp_path / "missing")
    with pytest.raises(BenchError, match=r"no data for task 'sst2'.*original/SST-2"):
        load_task_pools(task("sst2"), tmp_path)
    folder = tmp_path / "original" / "SST-2"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("sentence\tlabel\ngood\t1\n")
    with pytest.raises(BenchError, match=r"no 'dev\.tsv'"):
        load_task_pools(task("sst2"), tmp_path)
    (folder / "dev.tsv").write_text("text\tlabel\nfine\t1\n")
    with pytest.raises(BenchError, match="no column 'sentence'"):
        load_task_pools(task("sst2"), tmp_path)
    (folder / "dev.tsv").write_text("sentence\tlabel\nfine\t7\n")
    with pytest.raises(BenchError, match=r"line 2 has label '7'") as info:
        load_task_pools(task("sst2"), tmp_path)
    assert "\n" not in str(info.value)
    # with both layouts present, LM-BFF's original/ folder is read
    (folder / "dev.tsv").write_text("sentence\tlabel\nfine\t1\n")
    plain = tmp_path / "sst2"
    plain.mkdir()
    (plain / "train.csv").write_text("sentence,label\nplain,0\n")
    (plain / "test.csv").write_text("sentence,label\nplain,0\n")
    train, _ = load_task_pools(task("sst2"), tmp_path)
    assert [(e.texts, e.label) for e in train] == [(("good",), 1)]


def test_plain_layout_errors(tmp_path):
    folder = tmp_path / "rte"
    folder.mkdir()
    (folder / "train.csv").write_text("sentence1,sentence2,label\na,b,0\n")
    with pytest.raises(BenchError, match=r"no test\.csv or test\.jsonl"):
        load_task_pools(task("rte"), tmp_path)
    (folder / "test.csv").write_text("text,label\na,0\n")
    with pytest.raises(BenchError, match="no text column"):
        load_task_pools(task("rte"), tmp_path)
    (folder / "test.csv").write_text("sentence1,sentence2,label\na,b,maybe\n")
    with pytest.raises(BenchError, match="label 'maybe'"):
        load_task_pools(task("rte"), tmp_path)
    (folder / "test.jsonl").write_text("[1, 2]\n")
    (folder / "test.csv").unlink()
    with pytest.raises(BenchError, match="JSON object"):
        load_task_pools(task("rte"), tmp_path)


def test_lmbff_original_folder_passed_directly_gets_a_hint(tmp_path):
    taskdata.write_original("mr", tmp_path, taskdata.make_rows("mr", 2, "a"), taskdata.make_rows("mr", 2, "b"))
    with pytest.raises(BenchError, match="pass the folder above it"):
        load_task_pools(task("mr"), tmp_path / "original")


def test_existing_kshot_folder_is_used_directly_with_test_cap(tmp_path, monkeypatch):
    folder = tmp_path / "k-shot-1k-test" / "MNLI" / "4-13"
    folder.mkdir(parents=True)
    header = "\t".join([f"c{i}" for i in range(8)] + ["sentence1", "sentence2", "label1", "gold_label"]) + "\n"

    def lines(prefix: str, n: int) -> str:
        labels = ("contradiction", "entailment", "neutral")
        return header + "".join(
            "\t".join([str(i)] * 8 + [f"{prefix}{i}", "h", labels[i % 3], labels[i % 3]]) + "\n" for i in range(n)
        )

    (folder / "train.tsv").write_text(lines("tr", 12))
    (folder / "dev_matched.tsv").write_text(lines("dv", 12))
    (folder / "test_matched.tsv").write_text(lines("te", 30))
    monkeypatch.setattr(data, "_pools_from_source", lambda *a: pytest.fail("the k-shot folder was not used"))
    splits = load_splits(task("mnli"), k=4, seed=13, data_dir=tmp_path, test_cap=10, cache_dir=None)
    assert [e.texts[0] for e in splits.train] == [f"tr{i}" for i in range(12)]
    assert splits.sizes() == {"train": 12, "dev": 12, "test": 10}
    assert [e.texts[0] for e in splits.test] == [f"te{i}" for i in np.random.RandomState(42).permutation(30)[:10]]
    (folder / "dev_matched.tsv").unlink()
    with pytest.raises(BenchError, match=r"has no 'dev_matched\.tsv'"):
        load_splits(task("mnli"), k=4, seed=13, data_dir=tmp_path, test_cap=10, cache_dir=None)


# ------------------------------------------------------------------------------------------------ cache


def test_split_cache_is_reused_invalidated_and_repaired(tmp_path, monkeypatch):
    train, test = taskdata.make_rows("cr", 5, "train"), taskdata.make_rows("cr", 5, "test")
    taskdata.write_original("cr", tmp_path / "data", train, test)
    cache = tmp_path / "cache"
    kwargs = {"k": 2, "seed": 21, "data_dir": tmp_path / "data", "test_cap": 4, "cache_dir": cache}
    first = load_splits(task("cr"), **kwargs)
    [cache_file] = cache.glob("*.json")
    assert not list(cache.glob("*.tmp"))

    real = data._pools_from_source
    monkeypatch.setattr(data, "_pools_from_source", lambda *a: pytest.fail("cache not used"))
    assert load_splits(task("cr"), **kwargs) == first

    cache_file.write_text("{not json")
    monkeypatch.setattr(data, "_pools_from_source", real)
    assert load_splits(task("cr"), **kwargs) == first
    assert json.loads(cache_file.read_text())["task"] == "cr"  # rewritten

    other = load_splits(task("cr"), **{**kwargs, "seed": 42})
    assert other != first and len(list(cache.glob("*.json"))) == 2

    # a changed source file gives a new cache entry (size and mtime are part of the key)
    taskdata.write_original("cr", tmp_path / "data", train + taskdata.make_rows("cr", 1, "more"), test)
    load_splits(task("cr"), **kwargs)
    assert len(list(cache.glob("*.json"))) == 3


# -------------------------------------------------------------------------------------------------- Hub


def test_hub_unreachable_fails_fast_with_a_data_dir_hint(monkeypatch):
    import benchmark.hub

    monkeypatch.setattr(benchmark.hub, "hub_reachable", lambda *a, **kw: False)
    spec = task("sst2").model_copy(
        update={"hub": task("sst2").hub.model_copy(update={"path": "kernel-bench-tests/not-a-dataset"})}
    )
    start = time.perf_counter()
    with pytest.raises(BenchError) as info:
        load_task_pools(spec, None)
    assert time.perf_counter() - start < 20
    message = str(info.value)
    assert "could not reach the Hugging Face Hub" in message and "--data-dir" in message
    assert "original/SST-2" in message and "\n" not in message


def test_hub_load_failure_online_is_a_bench_error(monkeypatch):
    import datasets

    import benchmark.hub

    monkeypatch.setattr(benchmark.hub, "hub_reachable", lambda *a, **kw: True)

    def boom(*args, **kwargs):
        raise ValueError("Unknown split 'validation'.\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(BenchError, match=r"could not load 'nyu-mll/glue/rte'.*Unknown split") as info:
        load_task_pools(task("rte"), None)
    assert "\n" not in str(info.value)


def test_hub_rows_with_wrong_columns_or_labels_raise():
    import datasets

    with pytest.raises(BenchError, match="no column 'sentence'"):
        examples_from_hub_rows(task("sst2"), datasets.Dataset.from_dict({"text": ["a"], "label": [0]}))
    with pytest.raises(BenchError, match="label '7'"):
        examples_from_hub_rows(task("sst2"), datasets.Dataset.from_dict({"sentence": ["a"], "label": [7]}))


def test_hub_splits_feed_the_sampler(fake_hub):
    spec = task("trec")
    fake_hub[("trec", "train")] = taskdata.hub_dataset("trec", taskdata.make_rows("trec", 4, "train"))
    fake_hub[("trec", "test")] = taskdata.hub_dataset("trec", taskdata.make_rows("trec", 1, "test"))
    splits = load_splits(spec, k=2, seed=87, data_dir=None, test_cap=1000, cache_dir=None)
    assert splits.sizes() == {"train": 12, "dev": 12, "test": 6}
    # CogComp/trec coarse_label 2 (DESC) is LM-BFF's class 0
    assert [spec.labels[e.label] for e in splits.test] == list(taskdata.LABELS["trec"])
    with pytest.raises(BenchError, match="largest k possible is 2"):
        load_splits(spec, k=3, seed=87, data_dir=None, test_cap=1000, cache_dir=None)


def test_load_splits_argument_checks(tmp_path):
    with pytest.raises(BenchError, match="k must be"):
        load_splits(task("mr"), k=0, seed=1, data_dir=tmp_path, test_cap=10, cache_dir=None)
    with pytest.raises(BenchError, match="test_cap"):
        load_splits(task("mr"), k=1, seed=1, data_dir=tmp_path, test_cap=-2, cache_dir=None)
    with pytest.raises(BenchError, match="does not exist"):
        load_splits(task("mr"), k=1, seed=1, data_dir=Path(tmp_path / "nope"), test_cap=10, cache_dir=None)
