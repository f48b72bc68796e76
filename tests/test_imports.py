"""References to code a job names: well-formed, allowed, importable, callable, one line each."""

import pytest

from leptonrt.errors import ConfigError
from leptonrt.imports import ANY, check_allowed, load_callable


def test_a_reference_names_a_callable_and_comes_back_as_it():
    assert load_callable("os.path:join", "--model") is __import__("os").path.join


@pytest.mark.parametrize("ref, says", [
    ("os.path", "takes package.module:callable"),
    ("../evil.py:f", "takes package.module:callable"),
    ("no_such_module_xyz:f", "cannot import no_such_module_xyz (ModuleNotFoundError"),
    ("os:no_such_attribute", "os has no attribute no_such_attribute"),
    ("os:sep", "is a str, not a callable"),
])
def test_each_bad_reference_is_one_line_naming_the_option(ref, says):
    with pytest.raises(ConfigError) as err:
        load_callable(ref, "--model")
    assert says in str(err.value) and "\n" not in str(err.value) and str(err.value).startswith("--model")


def test_a_broker_runs_only_the_modules_it_was_started_with():
    check_allowed("mypkg.models:build", "--model", ("mypkg",))
    check_allowed("mypkg:build", "--model", ("mypkg",))
    check_allowed("anything:f", "--model", ANY)
    for allowed in ((), ("mypkg",)):
        with pytest.raises(ConfigError, match="--allow-import mypkgx"):
            check_allowed("mypkgx.models:build", "--model", allowed)


def test_a_refused_module_is_never_imported(tmp_path, monkeypatch):
    (tmp_path / "sideeffect_mod_q.py").write_text("raise SystemExit('imported!')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="runs code only from"):
        load_callable("sideeffect_mod_q:f", "--model", ())
