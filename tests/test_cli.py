"""The ntkal command: argument handling and error reporting (the heavy paths are tested elsewhere)."""

import pytest

from ntkal.cli import main


def test_run_reports_config_errors_with_file_and_line(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\n[model]\ncheckpoint = "oc20_like"\n[loop]\nmethod = "nope"\n')
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "line 5" in err and "method" in err


def test_unknown_benchmark_is_an_error(capsys):
    assert main(["bench", "no_such_benchmark"]) == 2
    assert "no_such_benchmark" in capsys.readouterr().err


def test_subcommands_are_mounted():
    for command in ("run", "select", "plot", "bench"):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
