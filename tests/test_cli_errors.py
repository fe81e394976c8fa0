"""CLI usage errors and unreadable files: one ``error:`` line (plus the usage), exit 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cli_e2e import invoke


@pytest.mark.parametrize(
    ("args", "message", "usage"),
    [
        (["runn"], "No such command 'runn'. Did you mean 'run'?", "Usage: bench [OPTIONS] COMMAND"),
        (["run"], "Missing option '--method'", "Usage: bench run [OPTIONS]"),
        (["run", "--method", "zero-shot", "--k", "abc"], "Invalid value for '--k'", "Usage: bench run [OPTIONS]"),
        (["data", "--cache-dir", "X"], "No such option: --cache-dir", "Usage: bench data [OPTIONS]"),
        (["list"], "Missing argument", "Usage: bench list [OPTIONS] {tasks|templates|backbones|methods}"),
    ],
)
def test_usage_error_is_one_line_plus_usage_exit_2(monkeypatch, capsys, args, message, usage) -> None:
    code, out, err = invoke(args, monkeypatch, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0].startswith("error: ") and message in lines[0]
    assert lines[1].startswith(usage)
    assert lines[2].startswith("Try 'bench") and "--help" in lines[2]
    assert len(lines) == 3 and "Traceback" not in err + out


def _bad_bytes(path: Path) -> Path:
    path.write_bytes(b"name: caf\xe9\n")
    return path


@pytest.mark.parametrize(
    ("make_args", "what"),
    [
        (lambda p: ["run", "--method", "zero-shot", "--task-file", str(_bad_bytes(p / "task.yaml"))], "task file"),
        (lambda p: ["data", "--task-file", str(_bad_bytes(p / "task.toml"))], "task file"),
        (lambda p: ["sweep", str(_bad_bytes(p / "sweep.yaml")), "--dry-run"], "sweep file"),
    ],
)
def test_non_utf8_file_is_one_line_exit_2(tmp_path, monkeypatch, capsys, make_args, what) -> None:
    code, _out, err = invoke(make_args(tmp_path), monkeypatch, capsys)
    assert code == 2
    assert err.startswith(f"error: {what} ") and "is not UTF-8 text" in err and "0xe9" in err.replace("\\x", "0x")
    assert len(err.strip().splitlines()) == 1


def test_unreadable_file_is_one_line_exit_2(tmp_path, monkeypatch, capsys) -> None:
    folder = tmp_path / "task.yaml"
    folder.mkdir()  # a directory where a file is expected
    (tmp_path / "sweep.yaml").write_text("tasks: [mr]\n")
    (tmp_path / "sweep.yaml").chmod(0)
    code, _out, err = invoke(["run", "--method", "zero-shot", "--task-file", str(folder)], monkeypatch, capsys)
    assert code == 2 and err.startswith("error: task file") and len(err.strip().splitlines()) == 1
    import os

    if os.geteuid() != 0:  # root reads any file
        code, _out, err = invoke(["sweep", str(tmp_path / "sweep.yaml"), "--dry-run"], monkeypatch, capsys)
        assert code == 2 and err.startswith("error: cannot read sweep file") and len(err.strip().splitlines()) == 1
