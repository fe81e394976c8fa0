"""The generic registry: registration, lazy placeholders, aliases, errors, entry points."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from registry import BenchError, Registry


def test_register_get_and_aliases() -> None:
    reg: Registry[int] = Registry("widget")
    reg.add("one", 1)

    @reg.register("Two", aliases=("deux",))
    def two() -> int:
        return 2

    assert reg.get("one") == 1
    assert reg.get("TWO") is two
    assert reg.get("deux") is two
    assert reg.names() == ["one", "two"]
    assert reg.aliases_of("two") == ["deux"]
    assert "deux" in reg and "three" not in reg


def test_duplicate_names_are_rejected() -> None:
    reg: Registry[int] = Registry("widget")
    reg.add("one", 1, aliases=("uno",))
    with pytest.raises(BenchError, match="widget 'one' is already registered"):
        reg.add("One", 2)
    with pytest.raises(BenchError, match="widget 'uno' is already registered"):
        reg.add("other", 3, aliases=("uno",))


def test_unknown_name_suggests_close_matches_and_lists_all() -> None:
    reg: Registry[int] = Registry("task")
    for name in ("sst2", "sst5", "mnli", "snli"):
        reg.add(name, 0)
    with pytest.raises(BenchError) as info:
        reg.get("sst3")
    message = str(info.value)
    assert "unknown task 'sst3'" in message
    assert "Did you mean: sst5, sst2?" in message
    assert "Available: mnli, snli, sst2, sst5" in message


def test_lazy_placeholder_imports_on_first_get(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = tmp_path / "lazy_target_mod.py"
    module.write_text("LOADED = True\nclass Thing:\n    value = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry[type] = Registry("thing")
    reg.add("thing", "lazy_target_mod:Thing")
    assert "lazy_target_mod" not in sys.modules
    assert reg.get("thing").value == 42
    assert "lazy_target_mod" in sys.modules


def test_placeholder_filled_by_the_module_own_registration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg: Registry[type] = Registry("method")
    monkeypatch.setitem(sys.modules, "fill_registry_holder", type(sys)("fill_registry_holder"))
    sys.modules["fill_registry_holder"].REG = reg  # type: ignore[attr-defined]
    (tmp_path / "self_registering_mod.py").write_text(textwrap.dedent("""
        from fill_registry_holder import REG

        @REG.register("m", aliases=("alias-m",))
        class M:
            pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    reg.add("m", "self_registering_mod:M", aliases=("alias-m",))
    assert reg.get("alias-m").__name__ == "M"


def test_bad_placeholder_raises_bench_error() -> None:
    reg: Registry[object] = Registry("thing")
    reg.add("missing-module", "no_such_module_xyz:Thing")
    reg.add("missing-attr", "json:no_such_attr")
    with pytest.raises(BenchError, match="cannot import 'no_such_module_xyz'"):
        reg.get("missing-module")
    with pytest.raises(BenchError, match="'json' has no attribute 'no_such_attr'"):
        reg.get("missing-attr")


def test_entry_points_are_discovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ep_plugin_mod.py").write_text("VALUE = 'from plugin'\n")
    dist = tmp_path / "ep_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[kernel_bench_test.things]\nplugged = ep_plugin_mod:VALUE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry[str] = Registry("thing", "kernel_bench_test.things")
    reg.add("builtin", "x")
    assert reg.names() == ["builtin", "plugged"]
    assert reg.get("plugged") == "from plugin"


def test_entry_point_cannot_shadow_a_builtin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist = tmp_path / "ep_clash-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-clash\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[kernel_bench_test.clash]\nbuiltin = json:dumps\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry[str] = Registry("thing", "kernel_bench_test.clash")
    reg.add("builtin", "benchmark.methods.baselines:ZeroShot")
    assert reg.names() == ["builtin"]  # the rest of the registry keeps working
    with pytest.raises(BenchError, match=r"thing 'builtin' is registered twice: by plugin ep-clash 0\.1 \(entry "
                                         r"point builtin = json:dumps\) and the built-in one"):
        reg.get("builtin")


def test_two_plugins_with_one_name_and_invalid_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    module = "class A:\n    name = 'a'\n\n\nclass Shared:\n    name = 'shared'\n\n\nB = {}\n"
    (tmp_path / "ep_two_mod.py").write_text(module)
    for dist_name, body in (("ep_one", "shared = ep_two_mod:Shared\n"), ("ep_two", "shared = ep_two_mod:Shared\n"
                                                                     "dicty = ep_two_mod:B\nnamed = ep_two_mod:A\n"
                                                                     "broken = ep_missing_mod:X\n")):
        dist = tmp_path / f"{dist_name}-0.2.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name.replace('_', '-')}\nVersion: 0.2\n")
        (dist / "entry_points.txt").write_text(f"[kernel_bench_test.two]\n{body}")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry[object] = Registry("thing", "kernel_bench_test.two",
                                     check=lambda name, obj: None if isinstance(obj, type) else "not a class")
    assert reg.names() == ["shared"]  # the first plugin's; every other entry is broken in one way
    problems = reg.problems()
    assert "registered twice: by plugin ep-" in problems["shared"] and "the one from ep-" in problems["shared"]
    assert problems["dicty"].endswith("is invalid: not a class")
    assert "its name is 'a', not the entry-point name 'named'" in problems["named"]
    assert "failed to load (ModuleNotFoundError" in problems["broken"] and "ep-two 0.2" in problems["broken"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("warning: ") for line in err)
    with pytest.raises(BenchError, match="failed to load"):
        reg.get("broken")
