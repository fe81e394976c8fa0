"""Kernel analogs of fine-tuning: eNTK at the pre-trained weights + a kernel solver chosen on dev.

``ntk-sgd`` (K_SGD), ``ntk-signgd`` (K_SignGD) and ``ntk-adam`` (K_A-SignGD, the Adam analog, solved
with the asymmetric LS-SVM); ``lora-ntk-sgd`` / ``lora-ntk-adam`` differentiate only the LoRA adapters
(at their initialisation). Binary tasks use the single logit-difference output by default, as the
reference does. Multi-class A-SignGD is solved one-vs-rest over the C logits (see
`benchmark.kernels.solvers`). Kernels are cached on disk per (backbone, task, k, seed, prompt,
formula, parameters, inputs) and reused across solver hyper-parameters and runs.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator

from benchmark.adapters import LoraOptions, lora_adapter
from benchmark.grids import refuse_old_grid, settings_list
from benchmark.identity import file_digest
from benchmark.kernels import (
    KernelArgs,
    KernelCache,
    KernelSplit,
    empirical_ntks,
    get_solver,
    get_strategy,
    select_hyperparameters,
    select_parameters,
)
from benchmark.kernels.cache import ReferenceKernels, load_reference_kernels, reference_kernel_path
from benchmark.kernels.memory import PeakMemory, parse_bytes
from benchmark.kernels.ntk import initial_logits
from benchmark.kernels.params import params_predicate, params_tag
from benchmark.kernels.solvers import missing_outputs_message
from benchmark.linear_probe import init_head_from_probe
from benchmark.method import MEASUREMENT, SOLVER, Method, MethodOptions, RunContext, RunResult, role
from benchmark.metrics import split_metrics
from benchmark.pipeline import Prepared, prepare, to_device, use_binary
from registry import BenchError, register_method
from registry.formulas import FORMULAS, Formula, get_formula

if TYPE_CHECKING:
    from benchmark.config import RunConfig
    from benchmark.examples import Splits
    from benchmark.resolve import ResolvedRun

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")


class KernelOptions(MethodOptions):
    """Options shared by the kernel methods (``--opt key=value``).

    Roles: ``solver`` options change the run's numbers but not its kernels (they stay out of the
    kernel cache key); ``measurement`` options change neither (``memory_budget`` only changes how
    the kernels are computed; ``load_kernels`` counts through the files' contents, not their path).
    """

    solver: str | None = Field(default=None, description="a registered kernel solver: lstsq | logistic | svr | svc | "
                               "asym | a plugin's (default: the formula's)", json_schema_extra=role(SOLVER))
    formula: str | None = Field(default=None, description="a registered kernel formula (default: the method's, e.g. "
                                "sgd for ntk-sgd); a plugin's formula runs through any kernel method")
    params: str | list[str] = Field(
        default="all", description="parameters in the kernel: all, no-embeddings, no-head, biases, lora, lora+head"
    )
    strategy: str = Field(default="fast", description="kernel strategy: fast | reference (or a plugin's)")
    memory_budget: str | None = Field(default=None, description="peak extra memory, e.g. '4GiB' (default: auto)",
                                      json_schema_extra=role(MEASUREMENT))
    f0: bool = Field(default=True, description="also try the initial-logit correction (f0 scaling) on dev",
                     json_schema_extra=role(SOLVER))
    solver_grid: list[dict[str, Any]] | None = Field(
        default=None,
        description="solver settings tried on dev, in order of preference: a list of settings, or key -> values "
                    "(their product; --solver-grid key=v1,v2); None: the solver's built-in grid",
        json_schema_extra=role(SOLVER),
    )
    selection: Literal["one-se", "best"] = Field(
        default="one-se",
        description="dev selection over the grid: first setting within one standard error of the best, or the best",
        json_schema_extra=role(SOLVER),
    )
    save_kernels: bool = Field(default=False, description="log the kernels as an MLflow artifact",
                               json_schema_extra=role(MEASUREMENT))
    load_kernels: Path | None = Field(default=None, description="folder of reference {split}_kernels_<task>.pt files",
                                      json_schema_extra=role(MEASUREMENT))
    kernel_batch_size: int = Field(default=16, ge=1, description="examples per forward/backward pass")
    init_head: Literal["linear-probe", "random"] = Field(
        default="linear-probe", description="[CLS] head init for --template none (the reference uses the probe)"
    )

    def identity(self, *, exclude_roles: tuple[str, ...] = (MEASUREMENT,)) -> dict[str, Any]:
        """As `MethodOptions.identity`; ``formula`` only when set, so runs made before the option existed
        keep their config hashes and kernel cache keys (the method's own formula is in its name)."""
        data = super().identity(exclude_roles=exclude_roles)
        if data.get("formula") is None:
            data.pop("formula", None)
        return data


    @field_validator("solver_grid", mode="before")
    @classmethod
    def _settings(cls, value: Any) -> Any:
        return settings_list(value)


class LoraKernelOptions(LoraOptions, KernelOptions):
    """Kernel options plus the LoRA adapters whose gradients span the kernel (`benchmark.adapters`)."""

    params: str | list[str] = "lora"


def _inputs_digest(prepared: Prepared) -> str:
    """A hash of every encoded input, so a cache entry can never serve other data or prompts."""
    digest = hashlib.sha256()
    for name in SPLITS:
        split = prepared.encoded[name]
        for inputs, labels in split.batches(256):
            for key in sorted(inputs):
                digest.update(key.encode())
                digest.update(inputs[key].numpy().tobytes())
            digest.update(labels.numpy().tobytes())
    return digest.hexdigest()[:24]


def _batches(prepared: Prepared, name: str, batch_size: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    return [to_device(inputs, device) for inputs, _ in prepared.encoded[name].batches(batch_size)]


def _output_tensors(spec: Formula, kernels: dict[str, dict[str, Any]]) -> dict[str, torch.Tensor]:
    """``{split}_{output}`` tensors of formula ``spec`` from `empirical_ntks`'s result."""
    tensors = {}
    for split in SPLITS:
        value = kernels[split][spec.name]
        values = value.as_dict() if len(spec.outputs) > 1 else {"kernel": value}
        tensors.update({f"{split}_{output}": kernel for output, kernel in values.items()})
    return tensors


class KernelMethod(Method):
    """Shared flow: prepare the logit model, compute (or load) kernels, select a solver on dev."""

    family = "kernel"
    distributed = True  # the kernel engine splits its rows across the ranks
    formula: ClassVar[str]
    lora: ClassVar[bool] = False
    Options = KernelOptions

    binary_default = True  # one logit-difference output on 2-class tasks, as the reference does

    def __init__(self, options: MethodOptions) -> None:
        super().__init__(options)
        # Unknown formulas, solvers, strategies, parameter presets and budgets fail before any kernel is computed.
        spec = self.formula_spec
        solver = get_solver(self.solver_name)
        missing = [name for name in solver.needs if name not in spec.output_names]
        if missing:
            raise BenchError(missing_outputs_message(solver.name, missing, spec.name))
        params_predicate(options.params)  # type: ignore[attr-defined]
        if options.memory_budget is not None:  # type: ignore[attr-defined]
            parse_bytes(options.memory_budget)  # type: ignore[attr-defined]
        get_strategy(options.strategy).check(  # type: ignore[attr-defined]
            KernelArgs(memory_budget=options.memory_budget))  # type: ignore[attr-defined]
        for point in options.solver_grid or ():  # type: ignore[attr-defined]
            get_solver(self.solver_name, **point)  # a setting the solver does not take fails here

    @classmethod
    def from_config(cls, config: RunConfig) -> Method:
        """Build the method from ``config.options``; the old option name ``grid`` is refused naming ``solver_grid``."""
        refuse_old_grid(cls.name, config.options, "solver_grid")
        return super().from_config(config)

    def reference_files(self, run: ResolvedRun) -> dict[str, Path]:
        """The ``--load-kernels`` file of each split (`BenchError` when one is missing)."""
        options: KernelOptions = self.options  # type: ignore[assignment]
        assert options.load_kernels is not None
        directory = Path(options.load_kernels)
        if not directory.is_dir():
            raise BenchError(f"--load-kernels directory '{directory}' does not exist")
        names = dict.fromkeys([run.task.local.dir if run.task.local else run.task.name, run.task.name])
        files = {}
        for split in SPLITS:
            path = next((reference_kernel_path(directory, split, t) for t in names
                         if reference_kernel_path(directory, split, t).is_file()), None)
            if path is None:
                raise BenchError(f"no reference kernel file for split '{split}' of task '{run.task.name}' in "
                                 f"{directory} (expected {split}_kernels_<task>.pt)")
            files[split] = path
        return files

    def check(self, run: ResolvedRun) -> None:
        """``--load-kernels``: every file is there, readable, of the right layout and finite."""
        options: KernelOptions = self.options  # type: ignore[assignment]
        if options.load_kernels is not None:
            for path in self.reference_files(run).values():
                load_reference_kernels(path, formula=self.formula_spec.name)

    def read_reference(self, run: ResolvedRun, splits: Splits) -> dict[str, ReferenceKernels]:
        """The ``--load-kernels`` files of each split, checked against this run's split sizes and labels."""
        n_train = len(splits.train)
        outputs = 1 if run.binary else run.task.num_labels
        kernels = {}
        for split, path in self.reference_files(run).items():
            examples = getattr(splits, split)
            ref = load_reference_kernels(path, formula=self.formula_spec.name, n_train=n_train,
                                         n_examples=len(examples), num_outputs=outputs)
            if ref.labels.tolist() != [example.label for example in examples]:
                raise BenchError(f"the labels in {path} do not match this run's {split} split: the kernel was "
                                 "computed for another task, k or seed")
            kernels[split] = ref
        return kernels

    def check_inputs(self, run: ResolvedRun, splits: Splits) -> None:
        """``--load-kernels``: each file's sizes and labels fit this run's splits (before the run exists)."""
        options: KernelOptions = self.options  # type: ignore[assignment]
        if options.load_kernels is not None:
            self.read_reference(run, splits)

    def identity_extra(self, run: ResolvedRun) -> dict[str, Any]:
        """Loaded kernels count by their files' contents."""
        options: KernelOptions = self.options  # type: ignore[assignment]
        if options.load_kernels is None:
            return {}
        return {"loaded_kernels": {split: file_digest(path) for split, path in self.reference_files(run).items()}}

    @property
    def formula_spec(self) -> Formula:
        """The kernel formula: the ``formula`` option, else the method's own (`registry.formulas`)."""
        options: KernelOptions = self.options  # type: ignore[assignment]
        return get_formula(options.formula or self.formula)

    @property
    def solver_name(self) -> str:
        """The solver: the option, else the formula's default (``asym`` for A-SignGD, else lstsq, as the reference)."""
        options: KernelOptions = self.options  # type: ignore[assignment]
        return options.solver or self.formula_spec.default_solver

    def prepare_model(self, ctx: RunContext) -> Prepared:
        """The logit model at the pre-trained weights (LoRA adapters added if this is a LoRA kernel)."""
        options: KernelOptions = self.options  # type: ignore[assignment]
        adapt = lora_adapter(options, seed=ctx.config.seed) if self.lora else None  # type: ignore[arg-type]
        prepared = prepare(ctx, binary=use_binary(ctx), adapt_mlm=adapt)
        if not prepared.encoder.prompt_based and options.init_head == "linear-probe":
            init_head_from_probe(prepared.model, prepared, ctx, c=1.0)
        return prepared

    def cache_config(self, ctx: RunContext, prepared: Prepared, formula: str) -> dict[str, Any]:
        """Everything the kernels of ``formula`` depend on: the run's identity without what only the
        solver or the measurements use (so sibling kernel methods share it), the encoded inputs, the
        label-word ids the logit model reads, the model's dtype."""
        options: KernelOptions = self.options  # type: ignore[assignment]
        identity = ctx.run.identity()
        for name in ("method", "method_extra", "batch_size"):
            identity.pop(name)
        identity["options"] = options.identity(exclude_roles=(MEASUREMENT, SOLVER))
        identity["options"].pop("formula", None)  # the key names the formula below: siblings share one pass
        return {
            "run": identity,
            "formula": get_formula(formula).name,
            "params": params_tag(options.params),
            "inputs": _inputs_digest(prepared),
            "label_word_ids": list(prepared.encoder.label_word_ids),
            "num_outputs": prepared.num_outputs,
            "dtype": str(next(prepared.model.parameters()).dtype),
        }

    def compute_kernels(self, ctx: RunContext, prepared: Prepared) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Kernels (train x train, train x dev, train x test; every output of the formula) and initial logits.

        Cached: on a miss the kernels of every registered formula are computed from one set of
        per-example gradients (the built-ins alone need all four sign combinations, so a plugin's
        formula adds none) and each is cached, so the sibling kernel methods of the same cell reuse
        them. Returns this method's tensors (``{split}_{output}``, ``{split}_logits``) and facts to log
        (parameter count, seconds, peak memory, cache hit).
        """
        options: KernelOptions = self.options  # type: ignore[assignment]
        model, device = prepared.model, ctx.device
        selected = select_parameters(model, options.params)
        facts: dict[str, Any] = {"kernel_params": sum(t.tensor.numel() for t in selected), "kernel_cache_hit": 1.0}
        n = {name: len(prepared.encoded[name]) for name in SPLITS}
        c = prepared.num_outputs
        mine = self.formula_spec
        shapes = {f"{split}_{output}": (n["train"], c, n[split], c) for split in SPLITS for output in mine.output_names}
        shapes.update({f"{split}_logits": (n[split], c) for split in SPLITS})
        cache = KernelCache(ctx.config.resolved_cache_dir() / "kernels")
        config = self.cache_config(ctx, prepared, mine.name)

        def compute() -> dict[str, torch.Tensor]:
            facts["kernel_cache_hit"] = 0.0
            formulas = dict.fromkeys([mine.name, *(name for name, _ in FORMULAS.items())])
            specs = [get_formula(name) for name in formulas]
            batches = {name: _batches(prepared, name, options.kernel_batch_size, device) for name in SPLITS}
            start = time.perf_counter()
            with PeakMemory(device) as peak:
                kernels = empirical_ntks(
                    model, batches["train"], {"train": None, "dev": batches["dev"], "test": batches["test"]},
                    formulas=list(formulas), params=options.params, strategy=options.strategy,
                    memory_budget=options.memory_budget,
                )
            facts["kernel_seconds"] = time.perf_counter() - start
            facts["kernel_peak_memory_mb"] = peak.peak_bytes / 2**20
            logits = {f"{name}_logits": initial_logits(model, batches[name]) for name in SPLITS}
            for spec in specs:
                tensors = {**logits, **_output_tensors(spec, kernels)}
                if spec.name == mine.name:
                    own = tensors  # saved by get_or_compute
                else:
                    cache.save_or_warn(self.cache_config(ctx, prepared, spec.name), tensors)
            return own

        path = cache.path(config)
        before = path.stat().st_mtime_ns if path.is_file() else None
        tensors = cache.get_or_compute(config, compute, shapes)
        written = path.is_file() and (facts["kernel_cache_hit"] or path.stat().st_mtime_ns != before)
        if written:  # a cache that could not be written leaves no file (or a stale one) to log
            facts["kernel_cache_file"] = str(path)
        return tensors, facts

    def load_reference(self, ctx: RunContext) -> dict[str, torch.Tensor]:
        """The reference's pre-computed kernels of this run, as the tensors the solver takes."""
        tensors: dict[str, torch.Tensor] = {}
        for split, ref in self.read_reference(ctx.run, ctx.splits).items():
            tensors.update({f"{split}_{output}": kernel for output, kernel in ref.outputs.items()})
        return tensors

    def run(self, ctx: RunContext) -> RunResult:
        """Compute or load the kernels, choose solver hyper-parameters on dev, report dev and test."""
        options: KernelOptions = self.options  # type: ignore[assignment]
        prepared = self.prepare_model(ctx)
        if options.load_kernels is not None:
            tensors, facts = self.load_reference(ctx), {"kernel_source": "reference"}
        else:
            tensors, facts = self.compute_kernels(ctx, prepared)
        use_f0 = options.f0 and "train_logits" in tensors
        outputs = self.formula_spec.output_names

        def split_of(name: str) -> KernelSplit:
            return KernelSplit.of_outputs({output: tensors[f"{name}_{output}"] for output in outputs},
                                          tensors[f"{name}_logits"] if use_f0 else None)

        labels = {name: prepared.encoded[name].labels for name in SPLITS}
        selection = select_hyperparameters(
            self.solver_name, split_of("train"), labels["train"], split_of("dev"), labels["dev"],
            grid=options.solver_grid, rule=options.selection,
        )
        for i, (_, score) in enumerate(selection.scores):
            ctx.tracker.log_metrics({"solver_grid_dev_acc": score if score > float("-inf") else -1.0}, step=i)
        metrics: dict[str, float] = {}
        predictions: dict[str, list[int]] = {}
        for name in ("dev", "test"):
            predicted = selection.solver.predict(split_of(name))
            metrics.update(split_metrics(name, predicted, labels[name], report_f1=ctx.task.report_f1))
            predictions[name] = predicted.tolist()
        for key in ("kernel_seconds", "kernel_peak_memory_mb", "kernel_cache_hit"):
            if key in facts:
                metrics[key] = float(facts[key])
        params = {
            "solver": self.solver_name,
            "solver_selection": options.selection,
            "formula": self.formula_spec.name,
            "kernel_params": facts.get("kernel_params", "reference"),
            **{f"solver.{k}": v for k, v in selection.hyperparameters.items()},
        }
        artifacts = []
        if options.save_kernels and "kernel_cache_file" in facts:
            artifacts.append(Path(facts["kernel_cache_file"]))
        return RunResult(metrics=metrics, predictions=predictions, params=params, artifacts=artifacts)


def export_kernels(method: KernelMethod, ctx: RunContext, out_dir: Path) -> list[Path]:
    """Compute (or reuse) the kernels of ``ctx`` and write them in the reference's file layout.

    ``<out_dir>/{train,dev,test}_kernels_<task>.pt`` each hold ``(kernel, labels)`` with the kernel
    ``[N_train, C, N_x, C]`` (for a formula with several outputs their stack in its order: for
    A-SignGD ``[2, ...]``, the kernel and its flip), so that ``bench run --load-kernels out_dir``
    (and the reference's own loaders) read them back.
    """
    prepared = method.prepare_model(ctx)
    tensors, _ = method.compute_kernels(ctx, prepared)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = method.formula_spec.output_names
    paths = []
    for split in SPLITS:
        kernel = tensors[f"{split}_kernel"]
        if len(outputs) > 1:
            kernel = torch.stack([tensors[f"{split}_{output}"] for output in outputs])
        path = reference_kernel_path(out_dir, split, ctx.task.name)
        torch.save((kernel, prepared.encoded[split].labels.clone()), path)
        paths.append(path)
    return paths


@register_method("ntk-sgd")
class NtkSgd(KernelMethod):
    """The SGD kernel K(x, x') = <g(x), g(x')>."""

    name = "ntk-sgd"
    summary = "eNTK of SGD, <grad f(x), grad f(x')>, + kernel solver (lstsq)"
    formula = "sgd"
    analog_of = "ft-sgd"
    display_order = 30


@register_method("ntk-signgd")
class NtkSignGd(KernelMethod):
    """The SignGD kernel <sign g(x), sign g(x')>."""

    name = "ntk-signgd"
    summary = "SignGD kernel, <sign grad f(x), sign grad f(x')>, + kernel solver (lstsq)"
    formula = "signgd"
    display_order = 70


@register_method("ntk-adam")
class NtkAdam(KernelMethod):
    """The A-SignGD kernel <sign g(x_train), g(x)>, the kernel analog of Adam, with the asymmetric LS-SVM."""

    name = "ntk-adam"
    summary = "A-SignGD kernel (Adam analog), <sign grad f(x_i), grad f(x)>, + asymmetric LS-SVM"
    formula = "asym"
    analog_of = "ft-adam"
    display_order = 50


@register_method("lora-ntk-sgd")
class LoraNtkSgd(KernelMethod):
    """The SGD kernel over the LoRA adapters only, at their initialisation."""

    name = "lora-ntk-sgd"
    summary = "SGD kernel over LoRA adapter parameters (peft), + lstsq"
    formula = "sgd"
    lora = True
    Options = LoraKernelOptions
    analog_of = "lora-sgd"
    display_order = 90


@register_method("lora-ntk-adam")
class LoraNtkAdam(KernelMethod):
    """The A-SignGD kernel over the LoRA adapters only, at their initialisation."""

    name = "lora-ntk-adam"
    summary = "A-SignGD kernel over LoRA adapter parameters (peft), + asymmetric LS-SVM"
    formula = "asym"
    lora = True
    Options = LoraKernelOptions
    analog_of = "lora-adam"
    display_order = 110
