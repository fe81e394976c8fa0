"""The fine-tuning loop and methods on tiny random models with synthetic, learnable data."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from benchmark import linear_probe, training
from benchmark.adapters import lora_adapter
from benchmark.config import RunConfig
from benchmark.distribution import Distribution
from benchmark.examples import Example
from benchmark.linear_probe import init_head_from_probe
from benchmark.methods import finetune
from benchmark.methods.finetune import AdamOptions, FtAdam, LoraAdamOptions, SgdOptions, mark_trainable
from benchmark.models import ClsHeadLogitModel, PromptLogitModel
from benchmark.prompts import PromptEncoder
from benchmark.run import execute
from benchmark.training import (
    Shard,
    TrainingOptions,
    build_optimizer,
    epoch_batches,
    example_losses,
    global_batch_dropout,
    linear_schedule,
    load_weights,
    save_weights,
    train_model,
)
from registry import METHODS, BenchError, load_builtins
from tests import tiny

TEMPLATE = "*cls**sent_0*_It_was*mask*.*sep+*"
POSITIVE = ("great", "fun", "good", "loved", "best")
NEGATIVE = ("terrible", "boring", "bad", "hated", "worst")
CPU = torch.device("cpu")


def synthetic(n: int, seed: int = 0) -> list[Example]:
    """Sentences whose label is decided by one sentiment word (balanced, shuffled fillers)."""
    rng = random.Random(seed)
    return [Example(guid=str(i), texts=(f"{rng.choice(POSITIVE if i % 2 else NEGATIVE)} .",), label=i % 2)
            for i in range(n)]


@pytest.fixture(scope="module")
def encoder(bert_tok) -> PromptEncoder:
    """Prompt encoder for the tiny BERT tokenizer."""
    return PromptEncoder(bert_tok, template=TEMPLATE, label_words=["terrible", "great"], max_seq_len=32)


@pytest.fixture(scope="module")
def splits(encoder: PromptEncoder):
    """(train, dev) encoded splits of synthetic data."""
    return encoder.encode_all(synthetic(16, seed=1)), encoder.encode_all(synthetic(16, seed=2))


def prompt_model(bert_tok, encoder: PromptEncoder, *, binary: bool = False, seed: int = 0) -> PromptLogitModel:
    """A tiny prompt-based logit model."""
    return PromptLogitModel(tiny.bert_mlm(bert_tok, seed=seed), encoder.label_word_ids, binary=binary)


def opts(**overrides) -> TrainingOptions:
    """Fast training options."""
    return TrainingOptions(**{"lr": 3e-3, "batch_size": 4, "steps": 40, "eval_every": 10, **overrides})


# ------------------------------------------------------------------------------------ loop pieces


def test_linear_schedule_with_warmup():
    assert [linear_schedule(s, warmup=2, total=6) for s in range(7)] == [0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0]
    assert linear_schedule(0, warmup=0, total=4) == 1.0
    assert TrainingOptions(steps=100, warmup_ratio=0.1).warmup() == 10
    assert TrainingOptions(steps=100, warmup_ratio=0.1, warmup_steps=3).warmup() == 3
    with pytest.raises(ValueError, match="warmup"):
        TrainingOptions(steps=5, warmup_steps=6)


def test_example_losses_ce_mse_and_binary():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5]])
    labels = torch.tensor([0, 1])
    assert torch.allclose(example_losses(logits, labels, "ce"), torch.nn.functional.cross_entropy(logits, labels,
                                                                                                   reduction="none"))
    # The reference's MSELoss(logits, one_hot): mean over B*C == mean of our per-example losses.
    reference = torch.nn.functional.mse_loss(logits, torch.nn.functional.one_hot(labels, 2).float())
    assert torch.isclose(example_losses(logits, labels, "mse").mean(), reference)
    one = torch.tensor([[1.5], [-0.5]])
    sign = torch.tensor([-1.0, 1.0])
    assert torch.allclose(example_losses(one, labels, "ce"), torch.nn.functional.softplus(-sign * one[:, 0]))
    assert torch.allclose(example_losses(one, labels, "mse"), (one[:, 0] - sign) ** 2)


def test_epoch_batches_cover_each_epoch_and_depend_on_seed():
    batches = epoch_batches(10, 4, seed=3)
    epoch = [next(batches) for _ in range(3)]
    assert [len(b) for b in epoch] == [4, 4, 2]
    assert sorted(i for b in epoch for i in b) == list(range(10))
    again = epoch_batches(10, 4, seed=3)
    assert [next(again) for _ in range(3)] == epoch
    other = epoch_batches(10, 4, seed=4)
    assert [next(other) for _ in range(3)] != epoch


def test_shard_slices_and_pads_short_batches():
    assert Shard.of(8, 4, 1) == Shard(total=8, start=4, real=4, padded=4)
    assert Shard.of(2, 4, 1) == Shard(total=2, start=2, real=0, padded=1)
    assert Shard.of(2, 4, 1).rows() == [0]
    assert Shard.of(2, 4, 1).weights(CPU).tolist() == [0.0]


def test_global_batch_dropout_masks_do_not_depend_on_the_split():
    x = torch.ones(6, 5)
    torch.manual_seed(0)
    with global_batch_dropout(Shard.of(6, 6, 0)):
        full = torch.nn.functional.dropout(x, 0.5, True)
    halves = []
    for rank in range(2):
        torch.manual_seed(0)
        with global_batch_dropout(Shard.of(6, 3, rank)):
            halves.append(torch.nn.functional.dropout(x[:3], 0.5, True))
    assert torch.equal(full, torch.cat(halves))
    assert torch.nn.functional.dropout is not None and not torch.equal(full, x)


def test_model_dropout_is_the_same_however_the_batch_is_split(bert_tok, encoder, splits):
    """A BERT forward in train mode (hidden and attention dropout): two half batches == the full batch."""
    train, _ = splits
    model = prompt_model(bert_tok, encoder).train()
    inputs, _ = train.collate(list(range(4)))
    torch.manual_seed(0)
    with global_batch_dropout(Shard.of(4, 4, 0)):
        full = model(**inputs)
    halves = []
    for rank in range(2):
        torch.manual_seed(0)
        with global_batch_dropout(Shard.of(4, 2, rank)):
            halves.append(model(**{key: value[2 * rank : 2 * rank + 2] for key, value in inputs.items()}))
    assert torch.allclose(full, torch.cat(halves), atol=1e-6)
    torch.manual_seed(1)
    with global_batch_dropout(Shard.of(4, 4, 0)):
        other = model(**inputs)
    assert not torch.allclose(full, other)  # dropout is really on


# ------------------------------------------------------------------------------------ optimizers


def test_unknown_optimizer_is_a_bench_error(bert_tok, encoder):
    model = prompt_model(bert_tok, encoder)
    with pytest.raises(BenchError, match="unknown optimizer 'rmsprop'"):
        build_optimizer("rmsprop", list(model.named_parameters()), opts())


def test_sgd_really_is_sgd(bert_tok, encoder, splits):
    """Two steps of ft-sgd equal theta - lr * grad with the schedule's multipliers: no momentum, no state."""
    train, dev = splits
    options = opts(lr=0.05, steps=2, eval_every=100, max_grad_norm=0.0)
    optimizer = build_optimizer("sgd", list(prompt_model(bert_tok, encoder).named_parameters()), options)
    assert isinstance(optimizer, torch.optim.SGD)
    assert all(g["momentum"] == 0 and not g["nesterov"] and g["dampening"] == 0 for g in optimizer.param_groups)

    trained = prompt_model(bert_tok, encoder)
    train_model(trained, train, dev, options, optimizer="sgd", seed=5, device=CPU)

    manual = prompt_model(bert_tok, encoder).train()
    torch.manual_seed(5)
    batches = epoch_batches(len(train), options.batch_size, seed=5)
    for step in range(2):
        inputs, labels = train.collate(next(batches))
        with global_batch_dropout(Shard.of(len(labels), options.batch_size, 0)):
            loss = example_losses(manual(**inputs), labels, "ce").mean()
        manual.zero_grad()
        loss.backward()
        lr = options.lr * linear_schedule(step, warmup=0, total=2)
        with torch.no_grad():
            for p in manual.parameters():
                if p.grad is not None:
                    p -= lr * p.grad
    for (name, a), (_, b) in zip(trained.named_parameters(), manual.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name


def test_no_weight_decay_on_biases_and_layer_norm(bert_tok, encoder):
    model = prompt_model(bert_tok, encoder)
    optimizer = build_optimizer("adam", list(model.named_parameters()), opts(weight_decay=0.1))
    assert isinstance(optimizer, torch.optim.AdamW)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, param in model.named_parameters():
        assert (id(param) in decayed) == ("bias" not in name and "LayerNorm" not in name), name


# ------------------------------------------------------------------------------------ training


def test_loss_decreases_and_model_learns(bert_tok, encoder, splits):
    train, dev = splits
    model = prompt_model(bert_tok, encoder)
    result = train_model(model, train, dev, opts(steps=80, eval_every=20), optimizer="adam", seed=13, device=CPU)
    losses = [record.train_loss for record in result.history]
    assert losses[-1] < 0.2 * losses[0]
    assert result.best_metrics["dev_acc"] >= 0.9
    assert not model.training
    assert result.steps_per_second > 0 and result.peak_memory_mb > 0


def test_mse_and_binary_training_learn(bert_tok, encoder, splits):
    train, dev = splits
    model = prompt_model(bert_tok, encoder, binary=True)
    result = train_model(model, train, dev, opts(steps=80, eval_every=20, loss="mse"), optimizer="adam", seed=13,
                         device=CPU)
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.best_metrics["dev_acc"] >= 0.9


def test_training_is_deterministic(bert_tok, encoder, splits):
    train, dev = splits
    runs = []
    for _ in range(2):
        model = prompt_model(bert_tok, encoder)
        train_model(model, train, dev, opts(steps=10), optimizer="adam", seed=21, device=CPU)
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])


def test_best_dev_checkpoint_is_the_one_kept(bert_tok, encoder, splits, monkeypatch):
    """Scripted dev accuracies 0.5, 0.9, 0.9, 0.7: the weights of step 20 (first best) are kept."""
    train, dev = splits
    scripted = iter([0.5, 0.9, 0.9, 0.7])
    seen: dict[int, dict[str, torch.Tensor]] = {}
    model = prompt_model(bert_tok, encoder)

    def fake_evaluate(module, split, name, **kwargs):
        seen[len(seen) + 1] = training.snapshot(module)
        return {"dev_acc": next(scripted)}, []

    monkeypatch.setattr(training, "evaluate_split", fake_evaluate)
    result = train_model(model, train, dev, opts(steps=40), optimizer="adam", seed=13, device=CPU)
    assert [r.step for r in result.history] == [10, 20, 30, 40]
    assert result.best_step == 20 and result.best_metrics == {"dev_acc": 0.9}
    final = training.snapshot(model)
    assert all(torch.equal(final[name], seen[2][name]) for name in final)
    assert not all(torch.equal(final[name], seen[4][name]) for name in final)


def test_disk_checkpoint_matches_memory_checkpoint(bert_tok, encoder, splits, tmp_path):
    train, dev = splits
    states = []
    for where in ("memory", "disk"):
        model = prompt_model(bert_tok, encoder)
        train_model(model, train, dev, opts(steps=20, checkpoint=where), optimizer="adam", seed=13, device=CPU,
                    work_dir=tmp_path)
        states.append(training.snapshot(model))
    assert all(torch.equal(states[0][n], states[1][n]) for n in states[0])
    assert not list(tmp_path.glob("*.pt"))


def test_batch_size_must_divide_across_ranks(bert_tok, encoder, splits):
    train, dev = splits
    with pytest.raises(BenchError, match="not divisible by the 3 processes"):
        train_model(prompt_model(bert_tok, encoder), train, dev, opts(), optimizer="adam", seed=0, device=CPU,
                    dist=Distribution(rank=0, world_size=3))


# ------------------------------------------------------------------------------------ LoRA and head


def test_lora_leaves_base_weights_bit_identical(bert_tok, encoder, splits):
    train, dev = splits
    options = LoraAdamOptions(lr=1e-2, batch_size=4, steps=20, eval_every=10)
    model = PromptLogitModel(lora_adapter(options, seed=0)(tiny.bert_mlm(bert_tok)), encoder.label_word_ids)
    n_trainable = mark_trainable(model, lora=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable)
    assert all("lora_" in n or n.startswith("head.") for n in trainable)
    assert "encoder.embeddings.word_embeddings.weight" not in trainable  # tied to the MLM decoder: frozen
    assert n_trainable == sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    train_model(model, train, dev, options, optimizer="adam", seed=0, device=CPU)
    for name, param in model.named_parameters():
        if name in trainable:
            continue
        assert torch.equal(param, before[name]), name
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if "lora_B" in n)


def test_lora_without_matching_modules_is_a_bench_error(bert_tok):
    options = LoraAdamOptions(lora_targets=["q_proj", "v_proj"])
    with pytest.raises(BenchError, match=r"LoRA targets \['q_proj', 'v_proj'\] match no module.*query"):
        lora_adapter(options, seed=0)(tiny.bert_mlm(bert_tok))


def test_lora_init_depends_on_seed(bert_tok):
    def lora_a(seed: int) -> torch.Tensor:
        mlm = lora_adapter(LoraAdamOptions(), seed=seed)(tiny.bert_mlm(bert_tok))
        return torch.cat([p.flatten() for n, p in mlm.named_parameters() if "lora_A" in n])

    assert torch.equal(lora_a(1), lora_a(1))
    assert not torch.equal(lora_a(1), lora_a(2))


@pytest.mark.parametrize("binary", [False, True])
def test_linear_probe_head_init(bert_tok, binary, monkeypatch):
    model = ClsHeadLogitModel(tiny.bert_mlm(bert_tok), 2, binary=binary)
    encoder = PromptEncoder(bert_tok, template=None, label_words=[], max_seq_len=32)
    train = encoder.encode_all(synthetic(8))
    weight = np.arange(2 * 32, dtype=np.float64).reshape(2, 32) / 100
    bias = np.array([-0.25, 0.25])
    calls = []

    def fake_probe(features, labels, *, c, seed, max_iter=2000):
        calls.append((features.shape, labels.tolist(), c, seed))
        return weight, bias

    monkeypatch.setattr(linear_probe, "fit_linear_probe", fake_probe)

    class Ctx:
        config = RunConfig(task="mr", method="ft-adam", seed=7, batch_size=4)
        device = CPU

    prepared = type("P", (), {"encoded": {"train": train}})()
    init_head_from_probe(model, prepared, Ctx, c=0.5)  # type: ignore[arg-type]
    assert calls == [((8, 32), [ex.label for ex in synthetic(8)], 0.5, 7)]
    if binary:
        assert torch.allclose(model.classifier.weight, torch.tensor(weight[1:] - weight[:1], dtype=torch.float32))
        assert torch.allclose(model.classifier.bias, torch.tensor([0.5]))
    else:
        assert torch.allclose(model.classifier.weight, torch.tensor(weight, dtype=torch.float32))
        assert torch.allclose(model.classifier.bias, torch.tensor(bias, dtype=torch.float32))


def test_save_and_load_weights_round_trip(bert_tok, encoder, tmp_path):
    model = prompt_model(bert_tok, encoder, seed=1)
    save_weights(model, tmp_path / "model", {"method": "ft-adam"})
    fresh = prompt_model(bert_tok, encoder, seed=2)
    meta = load_weights(fresh, tmp_path / "model")
    assert meta["method"] == "ft-adam"
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters(), strict=True))
    with pytest.raises(BenchError, match="no fine-tuned weights"):
        load_weights(fresh, tmp_path)


# ------------------------------------------------------------------------------------ options


def test_options_defaults_coercion_and_errors():
    assert AdamOptions().lr == 1e-5 and SgdOptions().lr == 1e-3 and LoraAdamOptions().lr == 1e-4
    assert AdamOptions(steps=1000).eval_every == 100 and AdamOptions().batch_size == 8
    parsed = AdamOptions.model_validate({"lr": "2e-5", "batch_size": "4", "train_grid": {"lr": ["1e-5", 5e-5]}})
    assert parsed.lr == 2e-5 and parsed.batch_size == 4
    assert [p.lr for p in parsed.grid_points()] == [1e-5, 5e-5]
    grid = AdamOptions(train_grid={"lr": [1e-5, 2e-5], "batch_size": [2, 4]}).grid_points()
    assert [(p.lr, p.batch_size) for p in grid] == [(1e-5, 2), (1e-5, 4), (2e-5, 2), (2e-5, 4)]
    config = RunConfig(task="mr", method="ft-adam", options={"train_grid": {"momentum": [0.9]}})
    with pytest.raises(BenchError, match="train_grid key 'momentum' is not an option"):
        FtAdam.from_config(config)
    with pytest.raises(BenchError, match="bad option 'loss'"):
        FtAdam.from_config(RunConfig(task="mr", method="ft-adam", options={"loss": "hinge"}))
    with pytest.raises(BenchError, match="train_grid point"):
        FtAdam.from_config(RunConfig(task="mr", method="ft-adam", options={"train_grid": {"lr": [1e-5, "fast"]}}))
    # the model is built once per run: a grid over its structure would be ignored, so it is refused
    with pytest.raises(BenchError, match=r"train_grid key 'lora_r' changes the model.*bench sweep --grid lora_r=v1,v2"):
        METHODS.get("lora-adam").from_config(
            RunConfig(task="mr", method="lora-adam", options={"train_grid": {"lora_r": [4, 8]}})
        )
    with pytest.raises(BenchError, match="train_grid key 'lr' needs a non-empty list"):
        FtAdam.from_config(RunConfig(task="mr", method="ft-adam", options={"train_grid": {"lr": []}}))
    # the option's old name is refused with the new one, on one line
    with pytest.raises(BenchError, match=r"^method 'ft-adam' has no option 'grid' any more: it is 'train_grid' "
                                         r"\(bench run --train-grid key=v1,v2") as caught:
        FtAdam.from_config(RunConfig(task="mr", method="ft-adam", options={"grid": {"lr": [1e-5]}}))
    assert "\n" not in str(caught.value)


def test_methods_are_registered_with_aliases():
    load_builtins()
    assert METHODS.get("ft") is METHODS.get("ft-adam") is finetune.FtAdam
    assert METHODS.get("lora") is finetune.LoraAdam
    assert METHODS.get("ft-sgd").optimizer == "sgd" and METHODS.get("lora-sgd").lora
    with pytest.raises(BenchError, match="unknown method 'ft-rmsprop'"):
        METHODS.get("ft-rmsprop")


# ------------------------------------------------------------------------------------ methods end to end


def write_mr(root: Path, n_train: int = 40, n_test: int = 20) -> Path:
    """LM-BFF-layout MR data (``original/mr/{train,test}.csv``) of synthetic sentences."""
    folder = root / "original" / "mr"
    folder.mkdir(parents=True)
    for name, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        with (folder / f"{name}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            for ex in synthetic(n, seed=seed):
                writer.writerow([ex.label, ex.texts[0]])
    return root


def experiment_runs(config: RunConfig) -> list:
    """All runs of ``config``'s experiment."""
    client = MlflowClient(config.tracking_uri)
    experiment = client.get_experiment_by_name(config.experiment)
    return client.search_runs([experiment.experiment_id]) if experiment else []


@pytest.fixture()
def run_config(tmp_path: Path, tiny_bert_dir: Path, mlflow_uri: str):
    """A RunConfig factory on synthetic MR data and the tiny BERT, logging to this test's experiment."""
    data = write_mr(tmp_path / "data")

    def make(method: str, **kwargs) -> RunConfig:
        base = dict(task="mr", method=method, backbone=str(tiny_bert_dir), k=4, seed=13, data_dir=data,
                    tracking_uri=mlflow_uri, experiment=tmp_path.name, cache_dir=tmp_path / "cache", batch_size=8)
        return RunConfig(**{**base, **kwargs})

    return make


def test_grid_selects_by_dev_accuracy_and_logs_points(run_config, monkeypatch):
    """Scripted dev accuracies per grid point: the best (first of ties) is chosen, logged and reported."""
    accs = {1e-4: 0.5, 1e-3: 0.75, 1e-2: 0.75}
    real = finetune.train_model

    def scripted(model, train, dev, options, **kwargs):
        result = real(model, train, dev, options, **kwargs)
        result.best_metrics = {"dev_acc": accs[options.lr]}
        return result

    monkeypatch.setattr(finetune, "train_model", scripted)
    config = run_config("ft-adam", options={"steps": 2, "eval_every": 1, "batch_size": 4,
                                            "train_grid": {"lr": [1e-4, 1e-3, 1e-2]}})
    outcome = execute(config)
    assert outcome.result.params["grid_best"] == 1 and outcome.result.params["grid.lr"] == 1e-3
    run = MlflowClient(config.tracking_uri).get_run(outcome.run_id)
    assert run.data.params["hp.lr"] == "0.001" and run.data.params["result.grid.lr"] == "0.001"
    assert {run.data.metrics[f"grid/{i}/dev_acc"] for i in range(3)} == {0.5, 0.75}
    assert "grid/2/train/loss" in run.data.metrics


@pytest.mark.parametrize(
    ("method", "options", "template"),
    [
        ("ft-adam", {"lr": 1e-3, "save_model": True}, None),
        ("ft-sgd", {"lr": 0.1}, None),
        ("lora-adam", {"lr": 1e-2, "save_model": True}, None),
        ("ft", {"lr": 1e-3, "init_head": "linear-probe"}, "none"),
    ],
)
def test_methods_run_end_to_end_and_log_to_mlflow(run_config, method, options, template):
    config = run_config(method, template=template, options={"steps": 30, "eval_every": 10, "batch_size": 4,
                                                            **options})
    outcome = execute(config)
    assert set(outcome.result.metrics) == {"dev_acc", "test_acc"}
    assert len(outcome.result.predictions["test"]) == 20
    client = MlflowClient(config.tracking_uri)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert {"best_step", "train_steps_per_second", "train_seconds", "peak_memory_mb", "wall_seconds"} <= set(metrics)
    assert metrics["dev_acc"] == outcome.result.metrics["dev_acc"]
    losses = client.get_metric_history(outcome.run_id, "train/loss")
    assert [m.step for m in losses] == [10, 20, 30]
    assert [m.step for m in client.get_metric_history(outcome.run_id, "eval/dev_acc")] == [10, 20, 30]
    best = max(client.get_metric_history(outcome.run_id, "eval/dev_acc"), key=lambda m: (m.value, -m.step))
    assert metrics["dev_acc"] == best.value and metrics["best_step"] == best.step
    assert run.data.params["hp.batch_size"] == "4"
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id)}
    assert {"config.json", "predictions.json"} <= artifacts
    if options.get("save_model"):
        saved = {a.path for a in client.list_artifacts(outcome.run_id, "model")}
        assert saved == {"model/weights.safetensors", "model/finetune.json"}


def test_saved_lora_model_loads_back_for_diagnostics(run_config, tmp_path):
    """`rebuild_finetuned` gives the saved theta_FT (same predictions) and the run's own theta_0."""
    from benchmark.data import load_splits
    from benchmark.finetuned import rebuild_finetuned
    from benchmark.method import RunContext
    from benchmark.resolve import resolve_run
    from benchmark.tracking import NullTracker

    config = run_config("lora-adam", options={"steps": 10, "eval_every": 5, "batch_size": 4, "lr": 1e-2,
                                              "save_model": True})
    outcome = execute(config)
    local = MlflowClient(config.tracking_uri).download_artifacts(outcome.run_id, "model", str(tmp_path))
    run = resolve_run(config)
    splits = load_splits(run.task, k=config.k, seed=config.seed, data_dir=config.data_dir, test_cap=config.test_cap)

    def context(run) -> RunContext:
        return RunContext(run=run, splits=splits, tracker=NullTracker(), device=CPU, work_dir=tmp_path)

    rebuilt = rebuild_finetuned(context(run), Path(local))
    prepared = rebuilt.prepared
    metrics, predicted = training.evaluate_split(prepared.model, prepared.encoded["test"], "test", batch_size=8,
                                                 device=CPU, dist=Distribution(), report_f1=False)
    assert predicted == outcome.result.predictions["test"]
    assert metrics["test_acc"] == outcome.result.metrics["test_acc"]
    # theta_0 is what the run started from: the same method builds the same seeded LoRA init
    fresh, _ = run.method.build_model(context(run), run.method.options, binary=run.binary)
    start = training.snapshot(fresh.model)
    assert set(rebuilt.theta_0) == set(start) and any("lora_A" in name for name in start)
    assert all(torch.equal(rebuilt.theta_0[name], start[name]) for name in start)
    assert not all(torch.equal(rebuilt.theta_0[n], p.detach()) for n, p in prepared.model.named_parameters()
                   if n in start)  # the weights loaded are not theta_0
    with pytest.raises(BenchError, match="not a saved fine-tuned model"):
        rebuild_finetuned(context(run), tmp_path / "nothing")
    full = resolve_run(run_config("ft-adam", options={"steps": 10}))
    with pytest.raises(BenchError, match="saved by a LoRA fine-tuning run \\('lora-adam'\\), not by 'ft-adam'"):
        rebuild_finetuned(context(full), Path(local))
    zero = resolve_run(run_config("zero-shot"))
    with pytest.raises(BenchError, match="'zero-shot' is not a fine-tuning method"):
        rebuild_finetuned(context(zero), Path(local))


def test_init_head_linear_probe_needs_template_none(run_config):
    config = run_config("ft-adam", options={"steps": 2, "init_head": "linear-probe"})
    with pytest.raises(BenchError, match="template none"):
        execute(config)
    assert experiment_runs(config) == []  # a usage error is refused before any MLflow run exists
