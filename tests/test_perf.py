"""`bench perf kernel` and `bench perf train` end to end on tiny sizes: the report's fields and ratios, bad input."""

from __future__ import annotations

import re

import pytest
import torch

from benchmark.perf.inputs import preset_config
from tests.test_cli_e2e import invoke

pytestmark = pytest.mark.usefixtures("one_thread")

NUMBER = r"([0-9.]+(?:e[+-]?[0-9]+)?)"


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"no match for {pattern!r} in:\n{text}"
    return float(match.group(1))


def test_perf_kernel_reports_plan_floor_and_float64_error(monkeypatch, capsys) -> None:
    code, out, err = invoke(
        ["perf", "kernel", "--n-train", "2", "--n-eval", "3", "--seq-len", "16", "--formulas", "sgd,signgd",
         "--no-reference", "--error-sub", "2", "--memory-budget", "256MiB", "--threads", "1"], monkeypatch, capsys)
    assert code == 0, err
    assert "model: random RoBERTa-shaped (small) (4.42M parameters" in out
    assert "training side stored as: per-example float gradients + int8 signs" in out
    assert re.search(r"plan: 1 pass\(es\)", out)
    assert re.search(r"peak extra memory [0-9.]+ GiB \(budget 0.25 GiB: (within|OVER)\)", out)
    assert _number(r"CPU: forward " + NUMBER, out) >= 0
    assert _number(r"fast / floor = " + NUMBER + "x", out) > 0
    assert _number(r"error vs float64 on the first 2 x 2 block .*: sgd " + NUMBER, out) <= 1e-6
    assert "reference strategy" not in out
    assert "estimate: roberta-base" in out  # the small preset extrapolates, with roberta-base's own plan:
    planned = _number(r"its plan under a 0.25 GiB budget: " + NUMBER + r" pass\(es\)", out)
    code, plan_out, err = invoke(
        ["perf", "kernel", "--preset", "roberta-base", "--n-train", "32", "--n-eval", "904", "--seq-len", "16",
         "--formulas", "sgd,signgd", "--memory-budget", "256MiB", "--plan-only"], monkeypatch, capsys)
    assert code == 0, err
    assert planned == _number(NUMBER + r" pass\(es\), \d+ parameter group", plan_out) > 1


def test_perf_kernel_plan_only_prints_the_factored_plan_and_computes_nothing(monkeypatch, capsys) -> None:
    """Under a budget the raw stored gradients do not fit, the plan keeps the weights as factors in one pass."""
    code, out, err = invoke(
        ["perf", "kernel", "--n-train", "64", "--n-eval", "64", "--seq-len", "32", "--formulas", "sgd",
         "--memory-budget", "300MiB", "--plan-only"], monkeypatch, capsys)
    assert code == 0, err
    assert "plan of the fast strategy (nothing computed)" in out
    assert re.search(r"1 pass\(es\), 1 parameter group\(s\), chunk 64 train examples", out)
    assert re.search(r"training side stored as: per-example float gradients; \d+ weight matrices as layer inputs", out)
    assert "fast strategy (per-example" not in out and "reference strategy" not in out


def test_perf_kernel_on_a_saved_model_agrees_with_the_reference(tiny_bert_dir, monkeypatch, capsys) -> None:
    code, out, err = invoke(
        ["perf", "kernel", "--model", str(tiny_bert_dir), "--n-train", "2", "--n-eval", "3", "--seq-len", "12",
         "--formulas", "sgd,asym", "--ref-full", "--error-sub", "2", "--no-floor", "-C", "1"], monkeypatch, capsys)
    assert code == 0, err
    assert f"model: {tiny_bert_dir}" in out and "C=1" in out
    assert "measured on all eval examples" in out and "EXTRAPOLATED" not in out
    assert _number(r"speed-up \(reference / fast\): wall " + NUMBER + "x", out) > 0
    assert _number(r"sgd +kernel +fast vs reference " + NUMBER, out) <= 1e-5
    assert _number(r"asym +flipped +fast vs reference " + NUMBER, out) <= 2e-4
    assert len(re.findall(r" OK$", out, flags=re.M)) == 3 and "MISMATCH" not in out
    assert "one-pass floor" not in out


def test_perf_kernel_without_error_check_or_reference(tiny_bert_dir, monkeypatch, capsys) -> None:
    code, out, err = invoke(["perf", "kernel", "--model", str(tiny_bert_dir), "--n-train", "1", "--n-eval", "2",
                             "--seq-len", "8", "--error-sub", "0", "--no-reference"], monkeypatch, capsys)
    assert code == 0, err
    assert "error vs float64" not in out and "reference strategy" not in out and "fast / floor" in out


def test_perf_kernel_extrapolates_the_reference_from_two_subsets(tiny_bert_dir, monkeypatch, capsys) -> None:
    code, out, err = invoke(
        ["perf", "kernel", "--model", str(tiny_bert_dir), "--n-train", "1", "--n-eval", "6", "--seq-len", "10",
         "--ref-eval", "4", "--error-sub", "5", "--no-floor"], monkeypatch, capsys)
    assert code == 0, err
    assert "EXTRAPOLATED to 6 eval examples along the line through measurements on 1 " in out
    assert "and 4 (CPU" in out
    assert _number(r"error vs float64 on the first 1 x 5 block .*: sgd " + NUMBER, out) <= 1e-6


def test_roberta_base_preset_has_roberta_base_shape() -> None:
    from transformers import RobertaForMaskedLM

    config = preset_config("roberta-base")
    with torch.device("meta"):  # the shape only: no memory, no weights
        model = RobertaForMaskedLM(config)
    h, ff, vocab, layers = 768, 3072, 50265, 12
    embeddings = vocab * h + 514 * h + h + 2 * h
    layer = 4 * (h * h + h) + 2 * h + (h * ff + ff) + (ff * h + h) + 2 * h
    head = h * h + h + 2 * h + vocab  # decoder weight tied to the word embeddings
    assert sum(p.numel() for p in model.parameters()) == embeddings + layers * layer + head == 124_697_433
    assert config._attn_implementation == "eager"  # jvp and vmap need eager attention


def test_perf_train_reports_ratio_and_that_both_loops_do_the_same_work(tiny_bert_dir, monkeypatch, capsys) -> None:
    code, out, err = invoke(
        ["perf", "train", "--model", str(tiny_bert_dir), "--examples", "8", "--words", "6", "--batch-size", "4",
         "--steps", "2", "--rounds", "1", "--check-steps", "2", "--full-vocab", "--threads", "1"], monkeypatch, capsys)
    assert code == 0, err
    apart = _number(r"weights differ by " + NUMBER, out)
    moved = _number(r"while they moved " + NUMBER, out)
    assert moved > 1e-7 and apart <= 1e-6 * max(1.0, moved * 1e6)  # trained, and the same computation
    for clock in ("wall", "cpu "):
        assert _number(rf"\[{clock}\] ours \(train_model\) +" + NUMBER + " steps/s", out) > 0
        assert _number(rf"\[{clock}\] ratio ours / plain-mask: " + NUMBER, out) > 0
        assert _number(rf"\[{clock}\] ratio .*ours / plain whole-vocabulary: " + NUMBER, out) > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["perf", "kernel", "--formulas", "sgd,nope"], "unknown kernel formula 'nope'"),
        (["perf", "kernel", "--formulas", ","], "--formulas: give at least one formula"),
        (["perf", "kernel", "--n-train", "0"], "--n-train: Input should be greater than or equal to 1"),
        (["perf", "kernel", "--preset", "huge"], "--preset: Input should be 'small' or 'roberta-base'"),
        (["perf", "kernel", "--dtype", "half"], "--dtype: Input should be 'float32' or 'float64'"),
        (["perf", "kernel", "--memory-budget", "lots"], "cannot read memory size 'lots'"),
        (["perf", "kernel", "--device", "tpu9"], "--device: unknown device 'tpu9'"),
        (["perf", "kernel", "--model", "no-such-backbone"], "no-such-backbone"),
        (["perf", "train", "--steps", "0"], "--steps: Input should be greater than or equal to 1"),
        (["perf", "train", "--model", "no-such-backbone"], "no-such-backbone"),
    ],
)
def test_perf_bad_input_is_one_line_exit_2(monkeypatch, capsys, args, message) -> None:
    code, out, err = invoke(args, monkeypatch, capsys)
    assert code == 2, out + err
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err


def test_perf_model_directory_without_config_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "empty").mkdir()
    code, _out, err = invoke(["perf", "train", "--model", str(tmp_path / "empty")], monkeypatch, capsys)
    assert code == 2 and "has no config.json" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_perf_kernel_roberta_base_preset_end_to_end(monkeypatch, capsys) -> None:
    """The 124.7M-parameter preset really runs (about 2 GB of memory, tens of seconds on one thread)."""
    code, out, err = invoke(
        ["perf", "kernel", "--preset", "roberta-base", "--n-train", "1", "--n-eval", "2", "--seq-len", "8",
         "--no-reference", "--error-sub", "1", "--memory-budget", "8GiB"], monkeypatch, capsys)
    assert code == 0, err
    assert "model: random RoBERTa-shaped (roberta-base) (124.70M parameters, 85.65M dense non-embedding)" in out
    assert _number(r"error vs float64 on the first 1 x 1 block .*: sgd " + NUMBER, out) <= 1e-6
    assert _number(r"fast / floor = " + NUMBER + "x", out) > 0
    assert "roberta-base measured directly above (no estimate)" in out
