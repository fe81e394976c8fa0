"""Built-in backbones and loading of a masked LM + tokenizer by name, Hub id or local path."""

from __future__ import annotations

from pathlib import Path

from benchmark import bundled
from registry import BACKBONES, BackboneSpec, BenchError, register_backbone

for _spec in (
    BackboneSpec(name="roberta-base", path="FacebookAI/roberta-base", family="roberta",
                 description="RoBERTa base (125M), the paper's backbone"),
    BackboneSpec(name="roberta-large", path="FacebookAI/roberta-large", family="roberta",
                 description="RoBERTa large (355M), LM-BFF's backbone"),
    BackboneSpec(name="bert-base-uncased", path="google-bert/bert-base-uncased", family="bert",
                 description="BERT base, uncased (110M)"),
    BackboneSpec(name="bert-large-uncased", path="google-bert/bert-large-uncased", family="bert",
                 description="BERT large, uncased (336M)"),
    BackboneSpec(name="distilroberta-base", path="distilbert/distilroberta-base", family="roberta",
                 description="DistilRoBERTa (82M), for quick checks"),
    BackboneSpec(name="bert-tiny", path=str(bundled.model_dir()), family="bert",
                 description="bundled: pre-trained BERT, 2 layers, 128 wide (4.4M), for CPU runs offline"),
):
    register_backbone(_spec)


def resolve_backbone(name_or_path: str) -> BackboneSpec:
    """A registered backbone, a local model directory, or a Hub id of the form ``org/name``."""
    if name_or_path in BACKBONES:
        return BACKBONES.get(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise BenchError(f"backbone directory '{path}' has no config.json; pass a saved Hugging Face model")
        return BackboneSpec(name=path.name, path=str(path.resolve()), family="other", description="local model")
    if "/" in name_or_path and not name_or_path.startswith((".", "/", "~")):
        return BackboneSpec(name=name_or_path, path=name_or_path, family="other", description="Hub model")
    try:
        BACKBONES.resolve_name(name_or_path)
    except BenchError as exc:
        raise BenchError(f"{exc}. Or pass a Hub id 'org/name' or a local model directory") from None
    raise AssertionError("unreachable")


def load_masked_lm(spec: BackboneSpec, *, dtype: object = None):
    """Load ``(AutoModelForMaskedLM, AutoTokenizer)`` for ``spec`` with eager attention, in eval mode.

    Eager attention keeps forward-mode AD (`torch.func.jvp`) and `vmap` usable on the model.
    A Hub model that cannot be fetched raises `BenchError` saying how to pass a local path.
    """
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from benchmark.hub import hub_reachable

    local = Path(spec.path).exists()
    # Offline, a Hub id can still load from the local cache; never wait on the network for it.
    cache_only = not local and not hub_reachable()
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.path, local_files_only=cache_only)
        model = AutoModelForMaskedLM.from_pretrained(
            spec.path, attn_implementation="eager", dtype=dtype or torch.float32, local_files_only=cache_only
        )
    except (OSError, ValueError) as exc:
        if local:
            raise BenchError(f"cannot load the model in '{spec.path}': {str(exc).splitlines()[0]}") from exc
        raise BenchError(
            f"cannot load backbone '{spec.name}' ({spec.path}) from the Hugging Face Hub: it is unreachable "
            "or the model is not cached. Download it where the Hub is reachable "
            "(`huggingface-cli download <id> --local-dir DIR`) and pass --backbone DIR"
        ) from exc
    return model.eval(), tokenizer
