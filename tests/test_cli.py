"""Command-line conventions: --version, no prefix matching, a suggestion for a typo, defaults
and an example in the help, and a clear refusal of a model with no hidden layer."""

import pytest

from leptonrt import __version__
from leptonrt.cli import main


def run(capsys, *argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def test_version(capsys):
    assert run(capsys, "--version") == (0, f"leptonrt {__version__}\n", "")


def test_an_option_is_never_taken_for_a_longer_one(capsys):
    code, _, err = run(capsys, "train", "--epoch", "3")
    assert code == 2 and "unrecognized arguments: --epoch 3" in err


def test_a_mistyped_command_gets_a_suggestion(capsys):
    code, _, err = run(capsys, "trian")
    assert code == 2 and "did you mean 'train'?" in err


@pytest.mark.parametrize("hidden", ["", ",", "0", "64,-1"])
def test_hidden_widths_must_be_given_and_positive(capsys, hidden):
    code, _, err = run(capsys, "train", "--hidden", hidden)
    assert code == 2 and "expected one or more positive widths" in err


@pytest.mark.parametrize("command", ["train", "up", "top", "status", "jobs", "stop"])
def test_every_help_shows_defaults_and_an_example(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0 and f"leptonrt {command}" in out.split("example")[-1]
    if command in ("train", "up"):
        assert "(default: all)" in out


def test_up_refuses_an_allow_import_that_is_not_a_module_name_before_starting(capsys):
    assert main(["up", "--gpus", "none", "--allow-import", "mypkg", "--allow-import", "../evil.py"]) == 78
    err = capsys.readouterr().err
    assert "--allow-import takes a module name like mypkg or mypkg.data, got '../evil.py'" in err
    assert len(err.strip().splitlines()) == 1


def test_train_help_says_what_the_label_column_applies_to(capsys):
    code, out, _ = run(capsys, "train", "--help")
    text = " ".join(out.split())   # as the terminal's width wraps it
    assert code == 0 and "csv:PATH | parquet:PATH | py:package.module:function" in text
    assert "--label-column NAME the class-id column of a csv: or parquet: table (no effect on other datasets)" in text


@pytest.mark.parametrize("seconds", ["0", "-1", "nan", "inf", "soon"])
def test_status_watch_needs_a_positive_number_of_seconds(capsys, seconds):
    code, _, err = run(capsys, "status", "--watch", seconds)
    assert code == 2 and "expected a number of seconds above 0" in err


@pytest.mark.parametrize("job_id", ["0", "-3", "two"])
def test_a_job_to_cancel_is_named_by_its_id(capsys, job_id):
    code, _, err = run(capsys, "jobs", "cancel", job_id)
    assert code == 2 and "expected a job id" in err


def test_cancel_without_an_id_is_a_usage_error(capsys):
    assert main(["jobs", "cancel"]) == 2
    assert "give the id of the job to cancel" in capsys.readouterr().err
