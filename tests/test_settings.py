"""Settings from a TOML file and LEPTONRT_* variables: the order they win in, the errors a
bad file or variable gets, `leptonrt config show`, and one real `train --config` run.

Unit tests resolve in-process against the real parser with an environment passed in (the
developer's own LEPTONRT_* variables never leak in); exit codes are checked on
`python -m leptonrt` as a subprocess."""

import argparse
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from leptonrt import settings
from leptonrt.cli import _parser, main

ROOT = Path(__file__).resolve().parent.parent

# key: (default, command-line words, env text, file value, top-level decoy the [train] table overrides,
#       and the value each of command line, env and file gives)
LAYERED = {
    "batch-size": (64, ["--batch-size", "11"], "22", "33", "44", (11, 22, 33)),
    "hidden": ((128,), ["--hidden", "1,2"], "3", "[4, 5]", '"9"', ((1, 2), (3,), (4, 5))),
    "precision": ("auto", ["--precision", "fp32"], "bf16", '"fp16"', '"fp32"', ("fp32", "bf16", "fp16")),
    "quiet": (False, ["--quiet"], "yes", "true", "false", (True, True, True)),
    "simulate-slowdown": ([], ["--simulate-slowdown", "0=2", "--simulate-slowdown", "1=3"], "1=4 0=1.5",
                          '["0=5"]', '["0=9"]', (["0=2", "1=3"], ["1=4", "0=1.5"], ["0=5"])),
    "cpu-actors": (None, ["--cpu-actors", "1"], "2", "3", "4", (1, 2, 3)),
    "dataset": ("digits", ["--dataset", "synthetic:100,4,2"], "npz:a.npz", '"mnist:d"', '"digits"',
                ("synthetic:100,4,2", "npz:a.npz", "mnist:d")),
}
LAYERS = ("command line", "env", "file")


def env_name(key: str) -> str:
    return "LEPTONRT_" + key.upper().replace("-", "_")


def resolve(argv: list[str], environ: dict | None = None) -> argparse.Namespace:
    return settings.parse(_parser(), argv, environ or {})


def effective(args: argparse.Namespace) -> dict:
    return {s.key: (s.value, s.source) for s in args._resolved.settings}


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("settings")


def leptonrt(*args, env: dict | None = None, cwd=None, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m leptonrt ARGS`` with this checkout first on the path and none of the
    caller's LEPTONRT_* settings (the suite's private runtime directory stays)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LEPTONRT_") or k == "LEPTONRT_RUNTIME_DIR"}
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([os.environ["PYTHONPATH"]] if "PYTHONPATH" in os.environ
                                                         else []))
    return subprocess.run([sys.executable, "-m", "leptonrt", *map(str, args)], capture_output=True, text=True,
                          env={**base, **(env or {})}, cwd=cwd, timeout=timeout)


# -- precedence ------------------------------------------------------------------------------

@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layers=st.fixed_dictionaries({key: st.sets(st.sampled_from(LAYERS)) for key in LAYERED}),
       places=st.fixed_dictionaries({key: st.sampled_from(["top", "train", "both"]) for key in LAYERED}),
       named_by=st.sampled_from(["--config", "LEPTONRT_CONFIG"]))
def test_the_command_line_beats_the_environment_beats_the_file_beats_the_default(scratch, layers, places,
                                                                               named_by):
    argv, environ, top, table = ["train"], {}, [], []
    for key, (_, words, env_text, file_value, decoy, _) in LAYERED.items():
        if "command line" in layers[key]:
            argv += words
        if "env" in layers[key]:
            environ[env_name(key)] = env_text
        if "file" in layers[key]:
            (top if places[key] == "top" else table).append(f"{key} = {file_value}")
            if places[key] == "both":   # the command's own table overrides the shared top level
                top.append(f"{key} = {decoy}")
    path = write(scratch / "precedence.toml", "\n".join(top + ["[train]"] + table) + "\n")
    if named_by == "--config":
        argv += ["--config", path]
    else:
        environ["LEPTONRT_CONFIG"] = path
    got = effective(resolve(argv, environ))
    for key, (default, *_, values) in LAYERED.items():
        winner = next((layer for layer in LAYERS if layer in layers[key]), None)
        if winner is None:
            assert got[key] == (default, settings.Source("default")), key
        else:
            where = {"command line": None, "env": env_name(key), "file": path}[winner]
            assert got[key] == (values[LAYERS.index(winner)], settings.Source(winner, where)), key


def test_the_command_line_s_config_file_beats_the_one_leptonrt_config_names(scratch):
    chosen = write(scratch / "chosen.toml", "epochs = 7\n")
    other = write(scratch / "other.toml", "epochs = 8\nseed = 3\n")
    args = resolve(["train", "--config", chosen], {"LEPTONRT_CONFIG": other})
    assert (args.epochs, args.seed) == (7, 0)
    assert (args._resolved.file, args._resolved.named_by) == (chosen, "--config")


def test_up_reads_the_top_level_and_its_own_table_but_not_train_s(scratch):
    path = write(scratch / "both.toml", 'gpus = "none"\nepochs = 3\ncpu-actors = 1\n'
                                        '[train]\ngpus = "1"\n[up]\ncpu-actors = 2\nno_tui = true\n')
    up = resolve(["up", "--config", path])
    assert (up.gpus, up.cpu_actors, up.no_tui) == ("none", 2, True)
    assert "epochs" not in vars(up)   # a train setting at the top level is train's alone
    train = resolve(["train", "--config", path])
    assert (train.gpus, train.cpu_actors, train.epochs) == ("1", 1, 3)


def test_a_key_may_be_spelt_with_dashes_or_underscores(scratch):
    path = write(scratch / "spelling.toml", "batch_size = 32\nweight-decay = 0.5\n[train]\nno_pin = true\n")
    args = resolve(["train", "--config", path])
    assert (args.batch_size, args.weight_decay, args.no_pin) == (32, 0.5, True)


@pytest.mark.parametrize("text, value", [(t, True) for t in settings.TRUE] + [(t, False) for t in settings.FALSE]
                         + [("ON", True), ("No", False)])
def test_a_flag_in_the_environment_takes_the_usual_spellings_of_true_and_false(text, value):
    assert resolve(["train"], {"LEPTONRT_NO_PIN": text}).no_pin is value


def test_an_empty_variable_is_not_set():
    assert effective(resolve(["train"], {"LEPTONRT_EPOCHS": ""}))["epochs"] == (10, settings.Source("default"))


def test_an_option_added_to_a_parser_later_is_a_key_and_a_variable_without_any_change_here(scratch):
    root = argparse.ArgumentParser(prog="demo")
    sub = root.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train")
    p.add_argument("--new-knob", type=int, default=1)
    p.add_argument("--tags", nargs="*", default=[])
    p.add_argument("--colour", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("-v", "--verbose", action="count", default=0)
    settings.add_parser(sub, ("train",))
    path = write(scratch / "later.toml", "new_knob = 5\ntags = ['a', 'b']\ncolour = false\nverbose = 2\n")
    assert effective(settings.parse(root, ["train", "--config", path], {})) == {
        "new-knob": (5, settings.Source("file", path)), "tags": (["a", "b"], settings.Source("file", path)),
        "colour": (False, settings.Source("file", path)), "verbose": (2, settings.Source("file", path))}
    args = settings.parse(root, ["train", "--config", path, "-vvv"], {"LEPTONRT_NEW_KNOB": "6", "LEPTONRT_TAGS": "c"})
    assert (args.new_knob, args.tags, args.verbose) == (6, ["c"], 3)


def test_no_setting_takes_a_variable_leptonrt_reads_for_something_else():
    taken = {"LEPTONRT_CONFIG", "LEPTONRT_RUNTIME_DIR", "LEPTONRT_FAULT", "LEPTONRT_INCARNATION", "LEPTONRT_SPARE"}
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    names = {o.env for command in settings.COMMANDS for o in settings.options(sub.choices[command])}
    assert names & taken == set() and "LEPTONRT_BATCH_SIZE" in names and "LEPTONRT_CACHE_BYTES" in names


def test_config_and_version_are_not_keys():
    args = resolve(["config", "show", "train"])
    keys = {s.key for s in args._resolved.settings}
    assert not keys & {"config", "version", "help"} and {"epochs", "connect", "resume"} <= keys


# -- errors: one line, exit 78 ---------------------------------------------------------------

ERRORS = [   # (file text, environment, what stderr says)
    ("batch-sise = 3\n", {}, "{path}: unknown key 'batch-sise'; did you mean 'batch-size'?"),
    ("[trian]\nepochs = 3\n", {}, "{path}: unknown key 'trian'; did you mean 'train'?"),
    ("[up]\nepochs = 3\n", {}, "{path}: [up] unknown key 'epochs' (a setting of `leptonrt train`"),
    ("quiet = \"yes\"\n", {}, "{path}: quiet: expected true or false, got a string"),
    ("[train]\nepochs = 2.5\n", {}, "{path}: [train] epochs: invalid int value: '2.5'"),
    ("optimizer = \"adamm\"\n", {}, "{path}: optimizer: invalid choice: 'adamm'"),
    ("hidden = [256, 0]\n", {}, "{path}: hidden: expected one or more positive widths like 256,128, got '256,0'"),
    ("epochs = [3]\n", {}, "{path}: epochs: expected one value, got an array"),
    ("batch-size = 1\nbatch_size = 2\n", {}, "{path}: 'batch-size' is given twice"),
    ("seed = 1\nepochs = \n", {}, "{path}:2:10: invalid TOML: Invalid value"),
    ("[train\nepochs = 1\n", {}, "{path}:1:7: invalid TOML: Expected ']' at the end of a table declaration"),
    (None, {}, "cannot read settings file {path} (from --config): No such file or directory"),
    ("", {"LEPTONRT_EPOCHS": "ten"}, "LEPTONRT_EPOCHS: invalid int value: 'ten'"),
    ("", {"LEPTONRT_QUIET": "maybe"}, "LEPTONRT_QUIET: expected one of 1/true/yes/on or 0/false/no/off, got 'maybe'"),
    ("", {"LEPTONRT_SIMULATE_SLOWDOWN": '"1=2'}, "LEPTONRT_SIMULATE_SLOWDOWN: cannot split"),
]


@pytest.mark.parametrize("text, env, message", ERRORS, ids=[e[2].split(":", 2)[-1][:40] for e in ERRORS])
def test_a_bad_file_key_value_or_variable_is_one_line_and_exit_78(tmp_path, text, env, message):
    path = tmp_path / "leptonrt.toml"
    if text is not None:
        path.write_text(text)
    proc = leptonrt("train", "--config", path, "--gpus", "none", env=env)
    assert proc.returncode == 78, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("leptonrt: "), proc.stderr
    assert message.format(path=path) in proc.stderr
    assert proc.stdout == ""


def test_the_file_leptonrt_config_names_is_named_as_such_when_it_is_unreadable(tmp_path):
    proc = leptonrt("config", "show", env={"LEPTONRT_CONFIG": str(tmp_path)})
    assert proc.returncode == 78
    assert proc.stderr == f"leptonrt: cannot read settings file {tmp_path} (from LEPTONRT_CONFIG): Is a directory\n"


@pytest.mark.parametrize("command, option, bad", [("train", "hidden", "64,-1"), ("train", "epochs", "ten"),
                                                 ("train", "split", "a,b"), ("up", "cache-bytes", "4X")])
def test_a_value_the_command_line_refuses_is_refused_in_a_file_with_the_same_words(capsys, tmp_path, command,
                                                                                  option, bad):
    with pytest.raises(SystemExit) as exit_:
        main([command, f"--{option}", bad])
    refusal = capsys.readouterr().err.strip().splitlines()[-1].split(f"argument --{option}: ")[1]
    assert exit_.value.code == 2
    path = write(tmp_path / "bad.toml", f'[{command}]\n{option} = "{bad}"\n')
    assert main([command, "--config", path]) == 78
    assert capsys.readouterr().err == f"leptonrt: {path}: [{command}] {option}: {refusal}\n"


# -- config show ----------------------------------------------------------------------------

def test_config_show_names_where_each_setting_came_from(tmp_path):
    path = write(tmp_path / "show.toml", "hidden = [64, 32]\n[train]\nquiet = true\n")
    proc = leptonrt("config", "show", "train", "--config", path, "--epochs", "2",
                    env={"LEPTONRT_BATCH_SIZE": "128"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"settings of `leptonrt train`, file {path} (from --config)"
    rows = {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line) for line in lines[1:])}
    assert rows["setting"] == ["value", "source"]
    assert rows["epochs"] == ["2", "command line"]
    assert rows["batch-size"] == ["128", "env LEPTONRT_BATCH_SIZE"]
    assert rows["hidden"] == ["64, 32", f"file {path}"]
    assert rows["quiet"] == ["true", f"file {path}"]
    assert rows["lr"] == ["0.001", "default"]
    assert len({line.rindex(cells[-1]) for line, cells in zip(lines[1:], rows.values())}) == 1   # aligned


def test_config_show_json_is_for_machines(tmp_path):
    path = write(tmp_path / "show.toml", '[up]\ncache-bytes = "1G"\n')
    proc = leptonrt("config", "show", "up", "--json", "--gpus", "none", env={"LEPTONRT_CONFIG": path,
                                                                            "LEPTONRT_NO_TUI": "1"})
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert (shown["command"], shown["file"], shown["file_from"]) == ("up", path, "LEPTONRT_CONFIG")
    assert shown["settings"]["cache-bytes"] == {"value": 1 << 30, "source": "file", "from": path}
    assert shown["settings"]["gpus"] == {"value": "none", "source": "command line", "from": None}
    assert shown["settings"]["no-tui"] == {"value": True, "source": "env", "from": "LEPTONRT_NO_TUI"}
    assert shown["settings"]["listen"] == {"value": None, "source": "default", "from": None}
    assert "epochs" not in shown["settings"]


def test_config_show_without_a_command_shows_train_s_settings():
    shown = effective(resolve(["config", "show", "--json"]))
    assert shown["epochs"] == (10, settings.Source("default")) and shown["hidden"][0] == (128,)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_config_show_draws_a_table_on_a_terminal():
    out = Terminal()
    assert settings.run(resolve(["config", "show", "train", "--epochs", "3"]), out=out) == 0
    text = out.getvalue()
    assert "━" in text and "command line" in text and "default" in text and "epochs" in text


# -- one real run ---------------------------------------------------------------------------

@pytest.mark.process
def test_train_runs_with_the_file_s_settings_under_the_command_line_s(tmp_path, no_leftovers):
    result = tmp_path / "result.json"
    config = write(tmp_path / "leptonrt.toml", f'epochs = 5\nquiet = true\n[train]\nbatch_size = 100\n'
                                               f'hidden = [32]\njson-out = "{result}"\n')
    proc = leptonrt("train", "--config", config, "--dataset", "digits", "--gpus", "none", "--cpu-actors", "1",
                    "--epochs", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not [line for line in proc.stdout.splitlines() if line.startswith("epoch")]   # quiet, from the file
    done = json.loads(result.read_text())   # json-out, from the file
    assert done["epochs"] == 1   # the command line beat the file's 5
    train_rows = round(1797 * 0.8)
    assert done["steps"] == math.ceil(train_rows / 100) != math.ceil(train_rows / 64)   # batch 100, from the file
