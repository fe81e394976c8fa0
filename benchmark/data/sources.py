"""Where a task's data is read from: the Hub, an LM-BFF k-shot folder, LM-BFF's original files or plain files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.bundled import resolve_data_dir
from registry import BenchError, LocalSource, TaskSpec

KSHOT_MODE_PREFERENCE = ("k-shot-1k-test", "k-shot")
PLAIN_EXTENSIONS = ("csv", "jsonl")


@dataclass(frozen=True)
class _Source:
    """Where a task's data is read from: kind 'hub', 'kshot', 'original' or 'plain', and its files."""

    kind: str
    files: dict[str, Path] = field(default_factory=dict)
    local: LocalSource | None = None

    def fingerprint(self, cache_dir: Path | None = None) -> dict[str, Any]:
        """What identifies this source's content: its kind and the SHA-256 of each file (not their paths)."""
        from benchmark.identity import file_digest

        files = {split: file_digest(path, cache_dir=cache_dir) for split, path in sorted(self.files.items())}
        return {"kind": self.kind, "files": files}


def _layout_hint(task: TaskSpec) -> str:
    original = f"DIR/original/{task.local.dir}/" if task.local else None
    plain = f"DIR/{task.name}/{{train,test}}.{{csv,jsonl}}"
    return f"{original} (LM-BFF's layout) or {plain}" if original else plain


def _kshot_names(local: LocalSource) -> dict[str, str]:
    """File names in an LM-BFF k-shot folder: the original dev file becomes test (MNLI: dev_matched)."""
    ext = Path(local.train_file).suffix
    if local.test_file.startswith("dev"):
        return {"train": local.train_file, "dev": local.test_file, "test": local.test_file.replace("dev", "test", 1)}
    return {"train": local.train_file, "dev": f"dev{ext}", "test": local.test_file}


def _find_kshot_source(task: TaskSpec, data_dir: Path, k: int, seed: int) -> _Source | None:
    """An existing ``<data_dir>/k-shot*/<local.dir>/<K>-<seed>/`` folder, if there is one."""
    if task.local is None:
        return None
    modes = sorted(
        (p for p in data_dir.glob("k-shot*") if p.is_dir()),
        key=lambda p: (KSHOT_MODE_PREFERENCE.index(p.name) if p.name in KSHOT_MODE_PREFERENCE else 99, p.name),
    )
    for mode in modes:
        folder = mode / task.local.dir / f"{k}-{seed}"
        if folder.is_dir():
            files = {split: folder / name for split, name in _kshot_names(task.local).items()}
            for path in files.values():
                if not path.is_file():
                    raise BenchError(
                        f"k-shot folder '{folder}' has no '{path.name}'; regenerate it or remove the folder"
                    )
            return _Source("kshot", files, task.local)
    return None


def _find_pool_source(task: TaskSpec, data_dir: Path) -> _Source:
    """LM-BFF's ``original/<dir>/`` files, else plain ``<task>/{train,test}.{csv,jsonl}`` files."""
    if not data_dir.is_dir():
        raise BenchError(f"data dir '{data_dir}' does not exist; pass a folder with {_layout_hint(task)}")
    if task.local is not None:
        folder = data_dir / "original" / task.local.dir
        if folder.is_dir():
            files = {"train": folder / task.local.train_file, "test": folder / task.local.test_file}
            for path in files.values():
                if not path.is_file():
                    raise BenchError(
                        f"'{folder}' has no '{path.name}' (LM-BFF's layout for task '{task.name}' has "
                        f"{task.local.train_file} and {task.local.test_file})"
                    )
            return _Source("original", files, task.local)
    folder = data_dir / task.name
    if folder.is_dir():
        files = {}
        for split in ("train", "test"):
            found = [folder / f"{split}.{ext}" for ext in PLAIN_EXTENSIONS if (folder / f"{split}.{ext}").is_file()]
            if not found:
                raise BenchError(f"'{folder}' has no {split}.csv or {split}.jsonl for task '{task.name}'")
            files[split] = found[0]
        return _Source("plain", files)
    expected = _layout_hint(task).replace("DIR", str(data_dir))
    raise BenchError(f"no data for task '{task.name}' in '{data_dir}': expected {expected}")


def _hub_source(task: TaskSpec) -> _Source:
    if task.hub is None:
        raise BenchError(f"task '{task.name}' has no Hub source; pass --data-dir DIR with {_layout_hint(task)}")
    return _Source("hub")


def _locate_source(task: TaskSpec, data_dir: Path | None, k: int, seed: int) -> _Source:
    if data_dir is None:
        return _hub_source(task)
    root = resolve_data_dir(data_dir)
    if not root.is_dir():
        raise BenchError(f"data dir '{root}' does not exist; pass a folder with {_layout_hint(task)}")
    return _find_kshot_source(task, root, k, seed) or _find_pool_source(task, root)
