"""The run <-> leaderboard contract: the tags a run records (`registry.schema`), pairs and order from method
metadata, the views registry, cycling plot styles, and a plugin view and a fifth pair through entry points."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from leaderboard import from_runs, render_board
from leaderboard.collect import collect_runs
from leaderboard.methods import method_catalog, method_order
from leaderboard.plots import MARKERS, pair_markers, scatter_figure
from leaderboard.views import DEFAULT_VIEWS, VIEWS, resolve_views
from registry import BenchError, schema
from tests.plugin_site import install_plugin
from tests.test_cli_e2e import _run_args, invoke, workspace  # noqa: F401  (workspace is a fixture)

BUILTIN_PAIRS = [("ft-sgd", "ntk-sgd"), ("ft-adam", "ntk-adam"), ("lora-sgd", "lora-ntk-sgd"),
                 ("lora-adam", "lora-ntk-adam")]
# The paper's order, as the leaderboard listed it before methods carried their own display order.
PAPER_ORDER = ["zero-shot", "linear-probe", "ft-sgd", "ntk-sgd", "ft-adam", "ntk-adam", "ntk-signgd", "lora-sgd",
               "lora-ntk-sgd", "lora-adam", "lora-ntk-adam"]
LMBFF_TASK_ORDER = ["sst2", "sst5", "mr", "cr", "mpqa", "subj", "trec", "agnews", "mnli", "snli", "qnli", "rte",
                    "mrpc", "qqp"]


# ------------------------------------------------------------------------------------------ schema


def test_bench_run_records_the_tags_the_leaderboard_reads(workspace, monkeypatch, capsys) -> None:  # noqa: F811
    code, _out, err = invoke(_run_args(workspace, "--task", "mr", "--method", "zero-shot", "--seed", "13"),
                             monkeypatch, capsys)
    assert code == 0, err
    client = MlflowClient(tracking_uri=workspace["uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("kernel-bench").experiment_id])
    tags = run.data.tags
    missing = [name for name in (*schema.CELL_TAGS, *schema.METHOD_TAGS, schema.CODE_VERSION_TAG) if name not in tags]
    assert not missing, missing
    assert tags[schema.METHOD_FAMILY_TAG] == "baseline" and tags[schema.METHOD_ANALOG_TAG] == ""
    assert tags[schema.METHOD_ORDER_TAG] == "0" and tags[schema.TASK_TAG] == "mr" and tags[schema.SEED_TAG] == "13"

    runs = collect_runs(workspace["uri"], "kernel-bench")
    assert method_catalog(runs)["zero-shot"] == schema.MethodInfo("zero-shot", "baseline", None, 0)
    # The leaderboard reads what the run recorded, not what the code says today.
    client.set_tag(run.info.run_id, schema.METHOD_ORDER_TAG, "7")
    client.set_tag(run.info.run_id, schema.METHOD_ANALOG_TAG, "linear-probe")
    info = method_catalog(collect_runs(workspace["uri"], "kernel-bench"))["zero-shot"]
    assert (info.display_order, info.analog_of) == (7, "linear-probe")


def test_kernel_run_tags_name_its_fine_tuning_analog(workspace) -> None:  # noqa: F811
    from benchmark.config import RunConfig
    from benchmark.resolve import resolve_run
    from benchmark.run import run_tags

    config = RunConfig(task="mr", method="ntk-sgd", backbone=workspace["model"], data_dir=Path(workspace["data"]),
                       k=4, cache_dir=Path(workspace["cache"]))
    tags = run_tags(resolve_run(config))
    assert {name: tags[name] for name in schema.METHOD_TAGS} == {
        "method_family": "kernel", "method_analog_of": "ft-sgd", "method_display_order": "30"}


def test_store_helpers_and_seeds_are_shared() -> None:
    import benchmark.config
    import benchmark.tracking
    from leaderboard import LMBFF_SEEDS, collect

    assert benchmark.config.LMBFF_SEEDS is schema.LMBFF_SEEDS is LMBFF_SEEDS
    assert benchmark.tracking.sqlite_path is schema.sqlite_path
    assert benchmark.tracking.DEFAULT_STORE is schema.DEFAULT_STORE
    assert collect.CELL_TAGS is schema.CELL_TAGS and collect.resolve_uri is schema.resolve_uri
    assert schema.sqlite_path("sqlite:////abs/dir/mlflow.db") == Path("/abs/dir/mlflow.db")
    assert schema.sqlite_path("sqlite:///rel/mlflow.db") == Path.cwd() / "rel" / "mlflow.db"
    assert schema.sqlite_path("sqlite:///:memory:") is None and schema.sqlite_path("http://host:5000") is None
    assert schema.http_unreachable("http://127.0.0.1:9", 1.0)  # nothing listens on the discard port


# ------------------------------------------------------------------------------------------ metadata


def _frame(rows: list[dict]) -> pd.DataFrame:
    """Selected-run rows as `collect_runs` gives them (one config per seed)."""
    out = []
    for i, row in enumerate(rows):
        out.append({"task": "mr", "backbone": "roberta-base", "k": 16, "template": "default", "method_family": "",
                    "config_hash": f"h{i}", "run_id": f"r{i}", "status": "FINISHED", "end_time": i, **row})
    return pd.DataFrame(out)


def _pair_runs(extra: list[dict] | None = None) -> pd.DataFrame:
    """Two seeds of zero-shot, ntk-signgd and the four built-in pairs (no metadata tags: runs logged before
    them), plus ``extra`` rows."""
    rows = []
    for offset, method in enumerate(["zero-shot", "ntk-signgd", *[m for pair in BUILTIN_PAIRS for m in pair]]):
        for seed in (13, 21):
            rows.append({"method": method, "seed": seed, "dev_acc": 0.6, "test_acc": 0.5 + offset / 100 + seed / 1e4})
    return _frame(rows + (extra or []))


def _plugin_pair_rows() -> list[dict]:
    tags = {"my-ft": ("finetune", "", "125"), "my-ntk": ("kernel", "my-ft", "126")}
    return [{"method": m, "seed": s, "dev_acc": 0.7, "test_acc": t, "method_family": tags[m][0],
             "method_analog_of": tags[m][1], "method_display_order": tags[m][2]}
            for m, s, t in (("my-ft", 13, 0.60), ("my-ft", 21, 0.64), ("my-ntk", 13, 0.58), ("my-ntk", 21, 0.66))]


def test_pairs_and_order_come_from_method_metadata(tmp_path) -> None:
    board = from_runs(_pair_runs(_plugin_pair_rows()))
    pairs = list(dict.fromkeys(zip(board.pairs["ft_method"], board.pairs["kernel_method"], strict=True)))
    assert pairs == [*BUILTIN_PAIRS, ("my-ft", "my-ntk")]  # built-ins from the registry, the fifth from run tags
    fifth = board.pairs[board.pairs["kernel_method"] == "my-ntk"].iloc[0]
    assert fifth["ft_mean"] == pytest.approx(62.0) and fifth["kernel_mean"] == pytest.approx(62.0)
    assert fifth["diff_mean"] == pytest.approx(0.0) and fifth["n_shared"] == 2
    (_title, tables), = board.tables
    rows = [r[0] for r in tables[0].rows]
    expected = [m for m in PAPER_ORDER if m != "linear-probe"] + ["my-ft", "my-ntk"]
    assert rows == expected and list(board.agg["method"]) == expected
    # Five pairs render (the fourth marker list entry no longer ends the styles).
    markdown = render_board(board, "md", plots_dir=tmp_path / "plots", plots_link="plots")
    assert "my-ft \\| my-ntk" in markdown and (tmp_path / "plots" / "scatter-roberta-base-k16-default.png").is_file()


def test_method_and_task_order_keep_the_published_order() -> None:
    assert method_order(reversed(PAPER_ORDER)) == PAPER_ORDER
    assert method_order(["zzz-unknown", "aaa-unknown", "zero-shot"]) == ["zero-shot", "aaa-unknown", "zzz-unknown"]
    assert schema.task_order(reversed(LMBFF_TASK_ORDER)) == LMBFF_TASK_ORDER
    assert schema.task_order(["qqp", "zz-task", "mr", "aa-task"]) == ["mr", "qqp", "aa-task", "zz-task"]
    assert [schema.canonical_method(n) for n in ("FT", " lora ", "ntk-sgd", "Not-A-Method")] == [
        "ft-adam", "lora-adam", "ntk-sgd", "not-a-method"]


def test_scatter_markers_cycle_and_keep_each_pairs_marker() -> None:
    many = [(f"ft{i}", f"ntk{i}") for i in range(len(MARKERS) + 2)]
    markers = pair_markers(many)
    assert [markers[p] for p in many] == [*MARKERS, MARKERS[0], MARKERS[1]]
    board = from_runs(_pair_runs(_plugin_pair_rows()))
    fig = scatter_figure(board.pairs, "five pairs", pair_markers([*BUILTIN_PAIRS, ("my-ft", "my-ntk")]))
    drawn = {c.get_label(): c.lines[0].get_marker() for c in fig.axes[0].containers}
    assert drawn == {"ft-sgd | ntk-sgd": "o", "ft-adam | ntk-adam": "s", "lora-sgd | lora-ntk-sgd": "^",
                     "lora-adam | lora-ntk-adam": "D", "my-ft | my-ntk": "v"}


# ------------------------------------------------------------------------------------------ views


def test_views_registry_default_set_and_selection(monkeypatch, capsys, tmp_path) -> None:
    assert set(DEFAULT_VIEWS) <= set(VIEWS.names())
    assert [v.name for v in resolve_views(None)] == list(DEFAULT_VIEWS) == [v.name for v in resolve_views(["default"])]
    runs = _pair_runs()
    full = from_runs(runs)
    assert [b.key for b in full.tables[0][1]] == ["tasks", "paired"] and full.headlines
    only = from_runs(runs, views=["paired", "tasks"])
    assert [b.key for _t, blocks in only.sections for b in blocks] == ["paired", "tasks"]  # in the order asked
    assert only.parts == [] and not only.headlines
    assert "### Tasks × methods" in render_board(only, "md") and "At a glance" not in render_board(only, "md")
    with pytest.raises(BenchError, match=r"unknown view 'nope'.*Available: .*headline"):
        resolve_views(["nope"])
    selections = tmp_path / "selections.csv"
    selections.write_text(_selections(runs).to_csv(index=False))
    code, _out, err = invoke(["leaderboard", "--from-selections", str(selections), "--view", "nope"], monkeypatch,
                             capsys)
    assert code == 2 and err.startswith("error: unknown view 'nope'") and len(err.strip().splitlines()) == 1
    code, out, err = invoke(["leaderboard", "--from-selections", str(selections), "--view", "tasks"], monkeypatch,
                            capsys)
    assert code == 0, err
    assert "### Tasks × methods (roberta-base, k = 16)" in out and "Fine-tuning vs. its kernel analog" not in out


def _selections(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` as a leaderboard's selections.csv (one selected run per method and seed)."""
    out = runs[["backbone", "k", "template", "task", "method", "seed", "config_hash", "run_id"]].copy()
    out.insert(6, "dev_metric", "dev_acc")
    out.insert(7, "dev", runs["dev_acc"])
    out.insert(8, "test_metric", "test_acc")
    out.insert(9, "test", runs["test_acc"])
    out.insert(10, "n_trials", 1)
    return out


PLUGIN = '''
from benchmark.method import Method
from leaderboard.tables import Table
from leaderboard.views import View


class MyFineTune(Method):
    name = "my-ft"
    summary = "a plugin fine-tuning method (only its metadata is used here)"
    family = "finetune"
    display_order = 125

    def run(self, ctx):
        raise NotImplementedError("this test never runs it")


class MyKernel(Method):
    name = "my-ntk"
    summary = "the plugin fine-tuning method's kernel analog"
    family = "kernel"
    analog_of = "my-ft"
    display_order = 126

    def run(self, ctx):
        raise NotImplementedError("this test never runs it")


def _seeds(section):
    rows = [[r["method"], r["task"], r["seeds"]] for _, r in section.rows.iterrows()]
    return Table(title=f"Seeds per cell ({section.title})", columns=["method", "task", "seeds"], rows=rows,
                 key="seeds")


VIEW = View(name="seed-list", summary="the seeds behind every mean", build=_seeds)
'''


def test_plugin_view_and_fifth_pair_through_entry_points(tmp_path) -> None:
    env = install_plugin(tmp_path / "site", "kb_view_plugin", "0.2", PLUGIN,
                         "[kernel_bench.views]\nseed-list = kb_view_plugin:VIEW\n\n"
                         "[kernel_bench.methods]\nmy-ft = kb_view_plugin:MyFineTune\n"
                         "my-ntk = kb_view_plugin:MyKernel\n")
    plugin_rows = [{k: v for k, v in row.items() if not k.startswith("method_")} for row in _plugin_pair_rows()]
    selections = tmp_path / "selections.csv"  # no metadata columns: the plugin's registered methods supply it
    selections.write_text(_selections(_pair_runs(plugin_rows)).to_csv(index=False))
    bench = [sys.executable, "-c", "from benchmark.cli import main; main()"]
    done = subprocess.run([*bench, "leaderboard", "--from-selections", str(selections), "--view", "default",
                           "--view", "seed-list", "--out", str(tmp_path / "board") + "/"],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    readme = (tmp_path / "board" / "README.md").read_text()
    assert "### Seeds per cell (roberta-base, k = 16)" in readme and "| my-ntk | mr | 13,21 |" in readme
    assert readme.index("### Fine-tuning vs. its kernel analog") < readme.index("### Seeds per cell")
    assert "| my-ft \\| my-ntk | mr |" in readme  # the fifth pair, from the plugin methods' analog_of
    assert "Seeds per cell" in (tmp_path / "board" / "leaderboard.html").read_text()
    pairs = pd.read_csv(tmp_path / "board" / "pairs.csv")
    assert list(pairs["kernel_method"]) == ["ntk-sgd", "ntk-adam", "lora-ntk-sgd", "lora-ntk-adam", "my-ntk"]
    assert (tmp_path / "board" / "plots" / "scatter-roberta-base-k16-default.png").is_file()
