"""Kernel-regime diagnostics: linearization (jvp), kernel drift, movement, the CLI and the sweep default."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from benchmark.diagnostics import (
    coarse_group,
    compute_diagnostics,
    kernel_drift,
    linearized_logits,
    movement,
    parameter_group,
    split_batches,
)
from benchmark.models import PromptLogitModel
from benchmark.prompts import PromptEncoder
from benchmark.training import TrainingOptions, restore, snapshot, train_model
from tests import tiny
from tests.test_cli_e2e import invoke
from tests.test_finetune import TEMPLATE, synthetic, write_mr

CPU = torch.device("cpu")
DIAG = {"diag_lin_rel_error", "diag_lin_test_acc", "diag_lin_agreement", "diag_movement", "diag_kernel_drift",
        "diag_kernel_alignment"}


@pytest.fixture(scope="module")
def encoder(bert_tok) -> PromptEncoder:
    """Prompt encoder for the tiny BERT tokenizer."""
    return PromptEncoder(bert_tok, template=TEMPLATE, label_words=["terrible", "great"], max_seq_len=32)


@pytest.fixture(scope="module")
def splits(encoder: PromptEncoder):
    """(train, dev, test) encoded synthetic splits."""
    return tuple(encoder.encode_all(synthetic(n, seed=s)) for n, s in ((16, 1), (16, 2), (24, 3)))


class LinearLogitModel(nn.Module):
    """logits = phi(x) W^T + b, phi a fixed (buffer) mean-pooled random embedding: linear in (W, b)."""

    def __init__(self, vocab_size: int, dim: int = 8, num_outputs: int = 2, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("table", torch.randn(vocab_size, dim, generator=generator, dtype=torch.float64))
        self.classifier = nn.Linear(dim, num_outputs, dtype=torch.float64)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_pos: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits ``[B, C]``."""
        keep = attention_mask.to(self.table.dtype).unsqueeze(-1)
        return self.classifier((self.table[input_ids] * keep).sum(1) / keep.sum(1))


def prompt_model(bert_tok, encoder: PromptEncoder) -> PromptLogitModel:
    """A tiny prompt-based logit model (eval mode) with every parameter trainable."""
    model = PromptLogitModel(tiny.bert_mlm(bert_tok, seed=0), encoder.label_word_ids).eval()
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def fine_tune(model: nn.Module, splits, *, lr: float, optimizer: str = "sgd", steps: int = 10):
    """theta_0 snapshot, then a short training run (the model keeps the best-dev weights)."""
    theta_0 = snapshot(model)
    options = TrainingOptions(lr=lr, batch_size=4, steps=steps, eval_every=steps, max_grad_norm=0.0)
    train_model(model, splits[0], splits[1], options, optimizer=optimizer, seed=0, device=CPU)
    return theta_0


def diagnostics_of(model: nn.Module, theta_0, splits, formula: str = "sgd"):
    """`compute_diagnostics` on the train (kernel) and test (linearization) splits."""
    return compute_diagnostics(model, theta_0, split_batches(splits[0], 8, CPU), split_batches(splits[2], 8, CPU),
                               splits[2].labels, formula=formula, kernel_options={"progress": False})


# ------------------------------------------------------------------------------------------- pieces


def test_parameter_groups():
    assert parameter_group("encoder.embeddings.word_embeddings.weight") == "embeddings"
    assert parameter_group("encoder.encoder.layer.1.attention.self.query.weight") == "layer_1"
    assert parameter_group("encoder.encoder.layer.0.attention.self.query.lora_A.default.weight") == "lora"
    assert parameter_group("head.predictions.transform.dense.weight") == "head"
    assert parameter_group("classifier.bias") == "head"
    assert parameter_group("encoder.pooler.dense.weight") == "other"
    assert [coarse_group(g) for g in ("embeddings", "layer_3", "other", "head", "lora")] == [
        "embeddings", "encoder", "encoder", "head", "lora"]


def test_movement_overall_and_per_group():
    theta_0 = {"encoder.embeddings.w": torch.tensor([3.0, 4.0]), "encoder.encoder.layer.0.w": torch.tensor([0.0]),
               "classifier.weight": torch.tensor([1.0])}
    theta_ft = {"encoder.embeddings.w": torch.tensor([3.0, 4.0]), "encoder.encoder.layer.0.w": torch.tensor([2.0]),
                "classifier.weight": torch.tensor([1.0])}
    moved = movement(theta_0, theta_ft)
    assert moved["overall"]["relative"] == pytest.approx(2.0 / math.sqrt(26.0))
    assert moved["groups"]["embeddings"]["relative"] == 0.0
    assert moved["groups"]["layer_0"]["relative"] == math.inf  # moved from an all-zero start
    assert moved["coarse"]["encoder"]["delta_norm"] == pytest.approx(2.0)
    assert list(moved["groups"]) == ["embeddings", "layer_0", "head"]


def test_kernel_drift_distance_and_alignment():
    k0 = torch.eye(4, dtype=torch.float64).reshape(2, 2, 2, 2)
    assert kernel_drift(k0, k0) == {"rel_distance": 0.0, "alignment": 1.0, "norm_0": 2.0, "norm_ft": 2.0}
    scaled = kernel_drift(k0, 3 * k0)
    assert scaled["rel_distance"] == pytest.approx(2.0) and scaled["alignment"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------- the maths


@pytest.mark.parametrize("formula", ["sgd", "asym"])
def test_linear_model_is_exactly_linear_and_its_kernel_does_not_drift(bert_tok, splits, formula):
    model = LinearLogitModel(len(bert_tok))
    theta_0 = fine_tune(model, splits, lr=0.5, optimizer="sgd" if formula == "sgd" else "adam")
    diag = diagnostics_of(model, theta_0, splits, formula)
    assert DIAG <= set(diag.metrics)
    assert diag.details["linearization"]["change_norm"] > 0.1  # it did move
    assert diag.metrics["diag_lin_rel_error"] < 1e-12
    assert diag.metrics["diag_lin_agreement"] == 1.0
    assert diag.details["linearization"]["lin_acc"] == diag.details["linearization"]["ft_acc"]
    assert diag.metrics["diag_kernel_drift"] == 0.0
    assert diag.metrics["diag_kernel_alignment"] == pytest.approx(1.0, abs=1e-12)
    assert diag.metrics["diag_movement"] > 0.0 and diag.metrics["diag_movement_head"] > 0.0


def test_jvp_linearization_equals_finite_differences(bert_tok, encoder, splits):
    model = prompt_model(bert_tok, encoder).double()
    theta_0 = snapshot(model)
    generator = torch.Generator().manual_seed(0)
    direction = {n: torch.randn(v.shape, generator=generator, dtype=v.dtype) * 1e-2 for n, v in theta_0.items()}
    restore(model, {n: theta_0[n] + direction[n] for n in theta_0})  # theta_FT = theta_0 + direction
    batches = split_batches(splits[2], 8, CPU)
    f0, f_lin, f_ft = linearized_logits(model, theta_0, batches)
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())  # functional_call put them back

    def logits_at(scale: float) -> torch.Tensor:
        restore(model, {n: theta_0[n] + scale * direction[n] for n in theta_0})
        with torch.no_grad():
            return torch.cat([model(**b) for b in batches]).double()

    h = 1e-4
    finite = (logits_at(h) - logits_at(-h)) / (2 * h)
    assert torch.allclose(f0, logits_at(0.0), atol=1e-12)
    assert torch.allclose(f_lin - f0, finite, rtol=1e-6, atol=1e-9)
    assert torch.allclose(f_ft, logits_at(1.0), atol=1e-12)
    assert (f_ft - f_lin).norm() > 1e-8  # the transformer is not linear in its weights


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_linearity_and_kernel_drift_grow_with_the_learning_rate(bert_tok, encoder, splits, optimizer):
    rates = (1e-4, 1e-2, 1e-1) if optimizer == "sgd" else (1e-6, 1e-4, 1e-2)
    results = []
    for lr in rates:
        model = prompt_model(bert_tok, encoder)
        theta_0 = fine_tune(model, splits, lr=lr, optimizer=optimizer)
        diag = diagnostics_of(model, theta_0, splits, "sgd" if optimizer == "sgd" else "asym")
        results.append(diag.metrics)
    errors = [m["diag_lin_rel_error"] for m in results]
    drifts = [m["diag_kernel_drift"] for m in results]
    moves = [m["diag_movement"] for m in results]
    assert errors[0] < 1e-2 and drifts[0] < 1e-2, (errors, drifts)  # tiny lr: f_lin = f_FT, fixed kernel
    assert errors == sorted(errors) and drifts == sorted(drifts) and moves == sorted(moves), (errors, drifts, moves)
    assert errors[-1] > 0.3 and drifts[-1] > 0.3, (errors, drifts)
    assert results[0]["diag_lin_agreement"] == 1.0 and results[0]["diag_kernel_alignment"] > 0.9999


# ------------------------------------------------------------------------------ runs, CLI, leaderboard


def _printed(out: str) -> dict[str, float]:
    values = {}
    for line in out.splitlines():
        name, sep, value = line.partition(" = ")
        if sep and name.startswith("diag_"):
            values[name.strip()] = float(value)
    return values


def test_runs_log_diagnostics_and_diagnose_reproduces_them(tmp_path, tiny_bert_dir, monkeypatch, capsys):
    data = write_mr(tmp_path / "data")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = ["run", "--task", "mr", "--backbone", str(tiny_bert_dir), "--data-dir", str(data), "--tracking-uri", uri,
            "--cache-dir", str(tmp_path / "cache"), "--k", "4", "--batch-size", "8",
            "--opt", "steps=10", "--opt", "eval_every=5", "--opt", "batch_size=4"]
    cases = [("ft-sgd", [], ["--opt", "lr=0.05", "--opt", "save_model=true"]),
             ("ft-sgd", ["--template", "none"], ["--opt", "lr=0.05", "--opt", "save_model=true"]),
             ("lora-adam", [], ["--opt", "lr=0.01", "--opt", "save_model=true"]),
             ("ft-adam", [], ["--opt", "lr=0.001"])]
    for method, template, extra in cases:
        code, out, err = invoke([*base, "--method", method, *template, *extra, "--diagnostics"], monkeypatch, capsys)
        assert code == 0, err
        assert "diag_lin_rel_error=" in out
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("kernel-bench")
    runs = sorted(client.search_runs([experiment.experiment_id]), key=lambda r: r.info.start_time)
    assert [(r.data.tags["method"], r.data.tags["template"]) for r in runs] == [
        ("ft-sgd", "default"), ("ft-sgd", "none"), ("lora-adam", "default"), ("ft-adam", "default")]
    for run in runs:
        metrics = run.data.metrics
        assert DIAG <= set(metrics) and run.data.params["opt.diagnostics"] == "True"
        assert "diagnostics.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
        assert metrics["diag_lin_rel_error"] >= 0 and 0 <= metrics["diag_lin_test_acc"] <= 1
    prompt, none, lora = (r.data.metrics for r in runs[:3])
    assert {"movement/embeddings", "movement/layer_0", "movement/layer_1", "movement/head"} <= set(prompt)
    assert {"diag_movement_embeddings", "diag_movement_encoder", "diag_movement_head"} <= set(none)
    assert {"diag_movement_lora", "diag_movement_head"} <= set(lora) and "diag_movement_embeddings" not in lora
    artifact = client.download_artifacts(runs[0].info.run_id, "diagnostics.json", str(tmp_path))
    details = json.loads(Path(artifact).read_text())
    assert details["kernel"]["formula"] == "sgd" and details["linearization"]["split"] == "test"
    assert details["setup"]["theta_ft"].startswith("reported checkpoint (best dev)")
    adam = client.download_artifacts(runs[3].info.run_id, "diagnostics.json", str(tmp_path / "adam"))
    assert json.loads(Path(adam).read_text())["kernel"]["formula"] == "asym"

    # bench diagnose rebuilds theta_0 (pre-trained / seeded head / seeded LoRA init) and loads theta_FT.
    for run, log in ((runs[0], "--log"), (runs[1], "--no-log"), (runs[2], "--no-log")):
        code, out, err = invoke(["diagnose", "--run-id", run.info.run_id, "--tracking-uri", uri, log],
                                monkeypatch, capsys)
        assert code == 0, err
        assert ("logged to run" in out) == (log == "--log")
        printed = _printed(out)
        assert set(printed) == {k for k in run.data.metrics if k.startswith("diag_")}
        for name, value in printed.items():
            assert value == pytest.approx(run.data.metrics[name], rel=1e-4, abs=1e-6), name
    assert len(client.get_metric_history(runs[0].info.run_id, "diag_lin_rel_error")) == 2
    assert len(client.get_metric_history(runs[1].info.run_id, "diag_lin_rel_error")) == 1

    # A run without saved weights, and a run that is not fine-tuning: one line, exit 2.
    code, out, err = invoke(["diagnose", "--run-id", runs[3].info.run_id, "--tracking-uri", uri], monkeypatch, capsys)
    assert code == 2 and "save_model=true" in err and len(err.strip().splitlines()) == 1
    code, out, err = invoke([*base[:-6], "--method", "zero-shot"], monkeypatch, capsys)
    assert code == 0, err
    zero = client.search_runs([experiment.experiment_id], filter_string="tags.method = 'zero-shot'")[0]
    code, out, err = invoke(["diagnose", "--run-id", zero.info.run_id, "--tracking-uri", uri], monkeypatch, capsys)
    assert code == 2 and "fine-tuning runs" in err
    code, out, err = invoke(["diagnose", "--run-id", "0" * 32, "--tracking-uri", uri], monkeypatch, capsys)
    assert code == 2 and "cannot open run" in err

    # The leaderboard shows the diag_* metrics (not the per-layer ones) for prompt and no-prompt FT.
    from leaderboard import build

    board = build(uri, "kernel-bench", k=4)
    tables = [t for _, views in board.tables for t in views if t.key == "diagnostics"]
    assert len(tables) == 1
    assert DIAG <= set(tables[0].columns) and not any(c.startswith("movement/") for c in tables[0].columns)
    assert {row[0] for row in tables[0].rows} >= {"ft-sgd", "ft-sgd [none]", "lora-adam", "ft-adam"}


def test_sweeps_turn_diagnostics_on_for_fine_tuning_cells(tiny_bert_dir):
    from benchmark.sweeps import expand_cells, validate_spec

    spec = validate_spec({"tasks": ["mr"], "methods": ["ft-adam", "lora-sgd", "zero-shot", "ntk-sgd"], "seeds": [13],
                          "backbone": str(tiny_bert_dir)})
    options = {c.config.method: c.config.options for c in expand_cells(spec, tracking_uri="sqlite:///unused.db")}
    assert options["ft-adam"] == {"diagnostics": True} and options["lora-sgd"] == {"diagnostics": True}
    assert options["zero-shot"] == {} and options["ntk-sgd"] == {}
    off = validate_spec({"tasks": ["mr"], "methods": {"ft-adam": {"options": {"diagnostics": False}}}, "seeds": [13],
                         "backbone": str(tiny_bert_dir)})
    assert [c.config.options for c in expand_cells(off, tracking_uri="sqlite:///unused.db")] == [{"diagnostics": False}]
