"""The leaderboard against hand-computed numbers on synthetic MLflow runs; rendering; CLI; Chromium screenshot."""

from __future__ import annotations

import importlib.util
import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from leaderboard import build, render_board
from leaderboard.collect import LeaderboardError
from leaderboard.tables import diagnostics_table
from tests.test_cli_e2e import invoke
from tests.test_sweep import initialized_store

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "lb-test"

# Hand-computed expectations for the synthetic runs below (see `store`).
# sst2 ft-adam: per seed the best dev among two configs -> tests .70 (13), .80 (21, dev tie -> smaller hash),
# .85 (42; an older duplicate of that config is ignored) -> mean 78.333, population std sqrt(116.667 / 3).
FT_MEAN, FT_STD = 78.3333333, math.sqrt(((70 - 235 / 3) ** 2 + (80 - 235 / 3) ** 2 + (85 - 235 / 3) ** 2) / 3)
NTK_MEAN, NTK_STD = 75.0, math.sqrt(50 / 3)  # .75, .70, .80
ZS_MEAN = 60.0


def _run(client: MlflowClient, experiment_id: str, *, task: str, method: str, seed: int, config_hash: str,
         metrics: dict[str, float], k: int = 16, status: str = "FINISHED", end_time: int | None = None,
         parent: str | None = None, family: str = "finetune") -> str:
    tags = {"task": task, "method": method, "method_family": family, "backbone": "roberta-base", "k": str(k),
            "seed": str(seed), "template": "default", "config_hash": config_hash}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    client.log_batch(run_id, metrics=[Metric(name, value, 0, 0) for name, value in metrics.items()])
    if status != "RUNNING":
        client.set_terminated(run_id, status, end_time=end_time)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite store with synthetic runs whose leaderboard is computed by hand above."""
    path = tmp_path_factory.mktemp("lb") / "mlflow.db"
    shutil.copy(initialized_store(tmp_path_factory), path)
    uri = f"sqlite:///{path}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(EXPERIMENT, artifact_location=str(path.parent / "artifacts"))
    ft = {  # seed -> [(hash, dev, test)]
        13: [("a13", 0.80, 0.90), ("b13", 0.85, 0.70)],
        21: [("a21", 0.90, 0.80), ("b21", 0.90, 0.60)],
        42: [("a42", 0.70, 0.85), ("b42", 0.60, 0.95)],
    }
    _run(client, exp, task="sst2", method="ft-adam", seed=42, config_hash="a42",  # older duplicate of a42
         metrics={"dev_acc": 0.99, "test_acc": 0.10}, end_time=1_000)
    for seed, configs in ft.items():
        for config_hash, dev, test in configs:
            _run(client, exp, task="sst2", method="ft-adam", seed=seed, config_hash=config_hash,
                 metrics={"dev_acc": dev, "test_acc": test}, end_time=2_000)
    _run(client, exp, task="sst2", method="ft-adam", seed=13, config_hash="c13", status="FAILED",
         metrics={"dev_acc": 1.0, "test_acc": 1.0})
    _run(client, exp, task="sst2", method="ft-adam", seed=87, config_hash="c87", status="RUNNING",
         metrics={"dev_acc": 1.0, "test_acc": 1.0})
    parent = client.create_run(exp, tags={"run_kind": "sweep", "sweep_seeds": "13,21,42"}).info.run_id
    client.set_terminated(parent, "FINISHED")
    for seed, test, diag in ((13, 0.75, 0.5), (21, 0.70, 0.7), (42, 0.80, 0.9)):
        _run(client, exp, task="sst2", method="ntk-adam", seed=seed, config_hash=f"n{seed}", family="kernel",
             metrics={"dev_acc": 0.7, "test_acc": test, "diag_kernel_agreement": diag}, parent=parent)
        _run(client, exp, task="sst2", method="zero-shot", seed=seed, config_hash=f"z{seed}", family="baseline",
             metrics={"dev_acc": 0.6, "test_acc": 0.6}, parent=parent)
    # MRPC: accuracy and F1 select different configs.
    _run(client, exp, task="mrpc", method="ft-adam", seed=13, config_hash="m1",
         metrics={"dev_acc": 0.8, "test_acc": 0.7, "dev_f1": 0.6, "test_f1": 0.9})
    _run(client, exp, task="mrpc", method="ft-adam", seed=13, config_hash="m2",
         metrics={"dev_acc": 0.7, "test_acc": 0.6, "dev_f1": 0.9, "test_f1": 0.5})
    _run(client, exp, task="sst2", method="ft-adam", seed=13, k=64, config_hash="k64",
         metrics={"dev_acc": 0.9, "test_acc": 0.9})
    return uri


def row(board, task: str, method: str, k: int = 16):
    agg = board.agg
    found = agg[(agg["task"] == task) & (agg["method"] == method) & (agg["k"] == k)]
    assert len(found) == 1
    return found.iloc[0]


# ------------------------------------------------------------------------------------------- numbers


def test_best_dev_per_seed_and_population_std(store) -> None:
    board = build(store, EXPERIMENT)
    ft = row(board, "sst2", "ft-adam")
    assert ft["mean"] == pytest.approx(FT_MEAN) and ft["std"] == pytest.approx(FT_STD)
    assert ft["std"] == pytest.approx(6.2361, abs=1e-4)
    assert (ft["n_seeds"], ft["seeds"], ft["missing_seeds"], ft["n_runs"]) == (3, "13,21,42", "87,100", 6)
    best = board.best[(board.best["method"] == "ft-adam") & (board.best["task"] == "sst2") & (board.best["k"] == 16)]
    assert dict(zip(best["seed"], best["config_hash"], strict=True)) == {13: "b13", 21: "a21", 42: "a42"}
    assert dict(zip(best["seed"], best["test"], strict=True)) == {13: 0.70, 21: 0.80, 42: 0.85}
    ntk = row(board, "sst2", "ntk-adam")
    assert ntk["mean"] == pytest.approx(NTK_MEAN) and ntk["std"] == pytest.approx(NTK_STD)
    assert ntk["missing_seeds"] == ""  # expected seeds: those of the sweep the runs belong to
    assert ntk["diag_kernel_agreement"] == pytest.approx(0.7)
    assert row(board, "sst2", "zero-shot")["std"] == 0.0
    assert row(board, "sst2", "ft-adam", k=64)["mean"] == pytest.approx(90.0)
    assert set(board.runs["status"]) == {"FINISHED"} and "sweep" not in set(board.runs["method"])
    assert row(build(store, EXPERIMENT, seeds=[13, 21]), "sst2", "ft-adam")["missing_seeds"] == ""


def test_f1_metric_selects_by_dev_f1(store) -> None:
    acc = row(build(store, EXPERIMENT), "mrpc", "ft-adam")
    assert (acc["metric"], acc["mean"], acc["f1_mean"]) == ("acc", pytest.approx(70.0), pytest.approx(90.0))
    f1 = row(build(store, EXPERIMENT, metric="f1"), "mrpc", "ft-adam")
    assert (f1["metric"], f1["mean"]) == ("f1", pytest.approx(50.0))
    assert row(build(store, EXPERIMENT, metric="f1"), "sst2", "ft-adam")["metric"] == "acc"


def test_paired_view_gap_and_recovered_share(store) -> None:
    board = build(store, EXPERIMENT, k=16)
    assert [title for title, _ in board.tables] == ["roberta-base, k = 16"]
    pair = board.pairs.iloc[0]
    assert (pair["ft_method"], pair["kernel_method"], pair["task"]) == ("ft-adam", "ntk-adam", "sst2")
    assert pair["gap"] == pytest.approx(NTK_MEAN - FT_MEAN)
    assert pair["recovered"] == pytest.approx(100 * (NTK_MEAN - ZS_MEAN) / (FT_MEAN - ZS_MEAN))  # 81.8 %
    # Paired over seeds 13, 21, 42: kernel − FT = +5, −10, −5 points; t(0.975, 2 dof) = 4.302653.
    diffs = [75 - 70, 70 - 80, 80 - 85]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)
    assert (pair["n_shared"], pair["shared_seeds"]) == (3, "13,21,42")
    assert pair["diff_mean"] == pytest.approx(mean)
    assert (pair["diff_low"], pair["diff_high"]) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert pair["ft_budget"] == "default steps, lr default"
    md = render_board(board, "md")
    assert f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}] | 3 | within noise" in md
    assert "It exceeds 100% when the kernel beats FT" in md
    assert "**At a glance.**" in md and "1 of 1 pairs within noise" in md
    assert ("| ft-adam \\| ntk-adam | sst2 | 78.3 (6.2) [3/5] | 75.0 (4.1) | -3.3 [-22.3, +15.6] | 3 | within noise "
            "| 60.0 | 82% | default steps, lr default |") in md


def _frame_runs() -> pd.DataFrame:
    """Runs as `collect_runs` returns them, from a local model path, with the FT budget in opt.* params."""
    rows = []
    for seed, ft, kernel in ((13, 0.60, 0.66), (21, 0.62, 0.69), (42, 0.58, 0.65), (87, 0.61, 0.66)):
        for method, test, extra in (("ft-sgd", ft, {"opt.steps": "300", "opt.lr": "0.001"}),
                                    ("ntk-sgd", kernel, {}), ("zero-shot", 0.5, {})):
            n = len(rows)
            rows.append({"task": "mr", "method": method, "method_family": "", "k": 16, "seed": seed,
                         "backbone": "/work/shared/models/bert-tiny-splade", "template": "default",
                         "config_hash": f"h{n}", "run_id": f"r{n}", "end_time": n, "dev_acc": 0.5,
                         "test_acc": test, **extra})
    return pd.DataFrame(rows)


def test_backbone_names_budget_and_significant_pair(tmp_path) -> None:
    from leaderboard import from_runs
    from leaderboard.render import write_all

    board = from_runs(_frame_runs(), source="frame", experiment="x")
    assert [title for title, _ in board.tables] == ["bert-tiny-splade, k = 16"]
    pair = board.pairs.iloc[0]
    diffs = [6.0, 7.0, 7.0, 5.0]  # kernel − FT per seed (points)
    mean = sum(diffs) / 4
    half = 3.182446305284263 * math.sqrt(sum((d - mean) ** 2 for d in diffs) / 3) / 2  # t(0.975, 3 dof)
    assert pair["diff_mean"] == pytest.approx(mean) and pair["diff_low"] == pytest.approx(mean - half)
    assert pair["ft_budget"] == "300 steps, lr 0.001"
    written = write_all(board, tmp_path / "out")
    text = "".join(p.read_text() for p in written if p.suffix in (".md", ".csv", ".html"))
    assert "/work/shared" not in text and all("work-shared" not in p.name for p in written)
    assert {p.name for p in written if p.suffix == ".png"} == {"diff-bert-tiny-splade-k16-default.png",
                                                               "scatter-bert-tiny-splade-k16-default.png"}
    md = (tmp_path / "out" / "README.md").read_text()
    assert "0 of 1 pairs within noise" in md and "kernel better" in md and "300 steps, lr 0.001" in md
    assert from_runs(_frame_runs(), backbone="/elsewhere/bert-tiny-splade").agg["backbone"].unique() == [
        "bert-tiny-splade"]


# ------------------------------------------------------------------------------------------- rendering


def _numbers(text: str) -> list[str]:
    return sorted(re.findall(r"\d+\.\d \(\d+\.\d\)(?: \[\d/\d\])?", text))


def test_markdown_html_csv_show_the_same_numbers(store) -> None:
    board = build(store, EXPERIMENT, k=16)
    md, page, csv_text = (render_board(board, fmt) for fmt in ("md", "html", "csv"))
    assert "| ft-adam | **78.3 (6.2) [3/5]** | **70.0 (0.0) [1/5]** | **74.2** |" in md
    assert "| zero-shot | 60.0 (0.0) | – | 60.0† |" in md
    assert '<td class="best">78.3 (6.2) [3/5]</td>' in page
    assert _numbers(md) == _numbers(page) and len(_numbers(md)) >= 6
    assert "missing seeds: ft-adam 87,100 (sst2)" in md
    assert "diag_kernel_agreement" in md and "diag_kernel_agreement" in page
    assert "population" in md and "population" in page
    lines = csv_text.splitlines()
    assert lines[0].startswith("backbone,k,template,task,method,method_family,metric,mean,std")
    assert any(line.startswith("roberta-base,16,default,sst2,ft-adam,finetune,acc,78.3333,6.2361") for line in lines)
    # self-contained: plots inline, nothing fetched from elsewhere
    assert page.count('src="data:image/png;base64,') == 2
    assert not re.search(r'(src|href)="(https?:)?//', page)


def test_reference_column_and_its_errors(store, tmp_path) -> None:
    ref = tmp_path / "ref.csv"
    ref.write_text("# source: hand-made for this test\ntask,method,k,mean,std\nsst2,ft,16,80.0,1.0\n")
    board = build(store, EXPERIMENT, reference=ref)
    ft = row(board, "sst2", "ft-adam")
    assert ft["ref_mean"] == 80.0 and ft["ref_diff"] == pytest.approx(FT_MEAN - 80.0)
    assert math.isnan(row(board, "sst2", "ft-adam", k=64)["ref_mean"])
    md = render_board(board, "md")
    assert "| sst2 | ft-adam | roberta-base | 16 | 78.3 (6.2) [3/5] | 80.0 (1.0) | -1.7 |" in md
    assert "published numbers: hand-made for this test" in md
    bad = tmp_path / "bad.csv"
    bad.write_text("task,method,mean\nsst2,ft,1\n")
    with pytest.raises(LeaderboardError, match="lacks column"):
        build(store, EXPERIMENT, reference=bad)


# ------------------------------------------------------------------------------------------- CLI


def test_cli_formats_and_output_directory(store, tmp_path, monkeypatch, capsys) -> None:
    base = ["leaderboard", "--tracking-uri", store, "--experiment", EXPERIMENT, "--k", "16"]
    code, out, err = invoke([*base, "--format", "csv"], monkeypatch, capsys)
    assert code == 0, err
    assert "sst2,ft-adam,finetune,acc,78.3333" in out
    code, out, err = invoke([*base, "--out", str(tmp_path / "lb.md")], monkeypatch, capsys)
    assert code == 0, err
    md = (tmp_path / "lb.md").read_text()
    assert "**78.3 (6.2) [3/5]**" in md and "](lb_plots/diff-" in md and (tmp_path / "lb_plots").is_dir()
    assert f"Regenerate with `bench leaderboard --tracking-uri {store}" in md
    code, out, err = invoke([*base, "--out", str(tmp_path / "board") + "/"], monkeypatch, capsys)
    assert code == 0, err
    written = {p.name for p in (tmp_path / "board").rglob("*") if p.is_file()}
    assert {"README.md", "leaderboard.html", "leaderboard.csv", "pairs.csv", "selections.csv"} <= written
    selections = (tmp_path / "board" / "selections.csv").read_text().splitlines()
    assert any(line.startswith("roberta-base,16,default,sst2,ft-adam,13,dev_acc,0.8500,test_acc,0.7000,2,b13,")
               for line in selections)
    assert any(name.startswith("scatter-") and name.endswith(".png") for name in written)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--experiment", "nope"], "experiment 'nope' does not exist"),
        (["--tracking-uri", "sqlite:////nonexistent/dir/mlflow.db"], "no MLflow tracking store"),
        (["--tracking-uri", "http://127.0.0.1:9"], "cannot reach the MLflow tracking server"),
        (["--format", "pdf"], "--format must be md, html or csv"),
        (["--metric", "auc"], "--metric must be acc or f1"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(store, monkeypatch, capsys, args, message) -> None:
    base = ["leaderboard", "--tracking-uri", store, "--experiment", EXPERIMENT]
    code, _out, err = invoke([*base, *args], monkeypatch, capsys)
    assert code == 2 and err.startswith("error: ") and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------- Chromium


def _screenshot_module():
    path = REPO / "scripts" / "screenshot_leaderboard.py"
    spec = importlib.util.spec_from_file_location("screenshot_leaderboard", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_html_opens_in_headless_chromium_with_tables_and_plots(store, tmp_path) -> None:
    shot = _screenshot_module()
    if shot.find_chromium() is None:
        pytest.skip("no Chromium installed (apt-get install -y chromium)")
    import numpy as np
    from matplotlib.image import imread

    html = tmp_path / "leaderboard.html"
    html.write_text(render_board(build(store, EXPERIMENT, k=16), "html"))
    png = shot.screenshot(html, tmp_path / "leaderboard.png", width=1200, height=1800)
    pixels = imread(png)[..., :3]
    assert pixels.shape[:2] == (1800, 1200) and pixels.std() > 0.05

    def has_colour(hex_colour: str) -> bool:
        rgb = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
        return bool((np.abs(pixels - rgb).max(axis=-1) < 0.03).sum() > 200)

    assert has_colour("#4C72B0")  # the paired-difference plot (within noise) and the headline bar
    assert has_colour("#E8F3E8")  # the best-cell highlight of the tables


def test_diagnostics_view_skips_sections_and_columns_without_values() -> None:
    section = pd.DataFrame({
        "method": ["ft-adam", "ntk-adam"], "template": ["default", "default"], "task": ["mr", "mr"],
        "diag_movement": [0.5, float("nan")], "diag_lin_rel_error": [float("nan"), float("nan")],
    })
    table = diagnostics_table(section, "diag")
    assert table is not None and table.columns == ["method", "task", "diag_movement"]
    assert table.rows == [["ft-adam", "mr", "0.5"]]
    assert diagnostics_table(section.assign(diag_movement=float("nan")), "diag") is None
    assert diagnostics_table(section.drop(columns=["diag_movement", "diag_lin_rel_error"]), "diag") is None


def test_rebuild_from_selections_gives_the_same_numbers(store, tmp_path, monkeypatch, capsys) -> None:
    from leaderboard.render import write_all

    board = build(store, EXPERIMENT)
    write_all(board, tmp_path / "first")
    code, _out, err = invoke(["leaderboard", "--from-selections", str(tmp_path / "first" / "selections.csv"),
                              "--experiment", EXPERIMENT, "--out", str(tmp_path / "again") + "/"], monkeypatch, capsys)
    assert code == 0, err
    first = pd.read_csv(tmp_path / "first" / "leaderboard.csv")
    again = pd.read_csv(tmp_path / "again" / "leaderboard.csv")
    keys = ["backbone", "k", "template", "task", "method"]
    merged = first.merge(again, on=keys, suffixes=("", "_again"))
    assert len(merged) == len(first) == len(again)
    assert (merged["mean"] - merged["mean_again"]).abs().max() < 1e-3
    assert (merged["std"] - merged["std_again"]).abs().max() < 1e-3
    assert (merged["seeds"] == merged["seeds_again"]).all()
    assert "the runs an earlier leaderboard selected" in (tmp_path / "again" / "README.md").read_text()
    code, _out, err = invoke(["leaderboard", "--from-selections", str(tmp_path / "nope.csv")], monkeypatch, capsys)
    assert code == 2 and "selections file" in err and "does not exist" in err


def test_readme_links_point_to_files_that_exist() -> None:
    for readme in (REPO / "README.md", REPO / "leaderboard" / "mr-bert-tiny" / "README.md"):
        text = readme.read_text()
        links = re.findall(r"\]\(([^)#\s]+)\)", text)
        paths = re.findall(r"`((?:benchmark|registry|tasks|runners|leaderboard|tests|scripts)/"
                           r"[A-Za-z0-9_./-]+)`", text)
        missing = [link for link in [*links, *paths] if not link.startswith("http")
                   and not (readme.parent / link).exists() and not (REPO / link).exists()]
        assert links and not missing, (readme.name, missing)
