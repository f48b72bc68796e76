"""py:package.module:function datasets: the user's function returns arrays, checked like an
npz's; a process that serves others runs only the modules its owner allowed, and never
imports any other."""

import itertools
import sys

import numpy as np
import pytest

from leptonrt.data.cache import DatasetCache
from leptonrt.data.loaders import load_dataset
from leptonrt.config import TrainJob
from leptonrt.imports import check_allowed
from leptonrt.data.shm import list_segments, new_run_id
from leptonrt.errors import ConfigError, DataError

_names = itertools.count()


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """``write(source) -> module name``: a fresh module on sys.path, forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written = []

    def write(source):
        name = f"leptonrt_test_userdata_{next(_names)}"
        (tmp_path / f"{name}.py").write_text(source)
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


SPLIT = """
import numpy as np
def make():
    rng = np.random.default_rng(0)
    return {"x_train": rng.normal(size=(30, 4)), "y_train": np.arange(30) % 3,
            "x_test": rng.normal(size=(10, 4)), "y_test": np.arange(10) % 3}
"""
WHOLE = """
def make():
    return {"x": [[i, i * i] for i in range(20)], "y": [i % 2 for i in range(20)]}
"""
# importing this module is what a refused reference must never do
EXPLODES = "raise RuntimeError('this module was imported')\ndef make(): pass\n"


def refusal(spec, error=DataError, **kwargs):
    with pytest.raises(error) as info:
        load_dataset(spec, **kwargs)
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == error.exit_code
    return message


def test_a_function_returning_its_own_split_keeps_it(user_module):
    ds = load_dataset(f"py:{user_module(SPLIT)}:make")
    assert ds.x_train.shape == (30, 4) and ds.x_test.shape == (10, 4) and ds.n_classes == 3
    assert ds.x_train.dtype == np.float32 and ds.y_test.dtype == np.int64
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0, atol=1e-5)   # standardised like an npz


def test_a_function_returning_x_and_y_as_lists_is_split_by_the_seed(user_module):
    spec = f"py:{user_module(WHOLE)}:make"
    a, b = load_dataset(spec, seed=4, test_fraction=0.25), load_dataset(spec, seed=4, test_fraction=0.25)
    assert a.x_train.shape == (15, 2) and a.x_test.shape == (5, 2) and a.n_classes == 2
    np.testing.assert_array_equal(a.x_test, b.x_test)


@pytest.mark.parametrize("body, says", [
    ("return [1, 2]", "returned a list; expected a mapping holding x_train, y_train, x_test, y_test or x, y"),
    ("return {'inputs': [[1]], 'y': [0]}", "returned inputs, y; expected x_train"),
    ("return {'x': [[1, 2], [3]], 'y': [0, 1]}", "x is not an array (ValueError"),
    ("return {'x': [['a'], ['b']], 'y': [0, 1]}", "x has dtype <U1; expected a numeric array"),
    ("return {'x': [[1.0], [2.0], [3.0]], 'y': [0, 1]}", "x has 3 rows but y has 2"),
    ("return {'x': [[1.0], [2.0]], 'y': [0.5, 1]}", "y holds non-integral float labels"),
    ("raise RuntimeError('no\\nsuch file')", "raised RuntimeError: no such file"),
    ("raise SystemExit(3)", "raised SystemExit: 3"),
])
def test_each_bad_return_is_one_data_error_naming_the_spec(user_module, body, says):
    source = "def make():\n    " + body + "\n"
    spec = f"py:{user_module(source)}:make"
    message = refusal(spec)
    assert message.startswith(f"bad dataset {spec}: ") and says in message


def test_a_reference_that_cannot_be_imported_is_a_config_error_naming_the_option(user_module):
    assert "--dataset py: no_such_module_q:make: cannot import" in refusal("py:no_such_module_q:make", ConfigError)
    assert "has no attribute nothing" in refusal(f"py:{user_module(WHOLE)}:nothing", ConfigError)
    assert "takes package.module:callable" in refusal("py:../x.py:make", ConfigError)


def test_a_module_not_allowed_is_refused_and_never_imported(user_module):
    name = user_module(EXPLODES)
    for allowed in ((), ("someone_else",)):
        message = refusal(f"py:{name}:make", ConfigError, allowed=allowed)
        assert "runs code only from the modules it was started with" in message
        assert f"--allow-import {name}" in message
        with pytest.raises(ConfigError):   # as the broker checks a job when it is submitted
            for ref, option in TrainJob(dataset=f"py:{name}:make").named_code():
                check_allowed(ref, option, allowed)
    assert name not in sys.modules
    assert TrainJob(dataset="digits").named_code() == ()   # no code, nothing to allow


def test_a_cache_runs_no_code_unless_its_owner_allowed_the_module(user_module):
    """The broker's cache: no module by default; the listed ones (and their submodules) only."""
    refused, allowed = user_module(EXPLODES), user_module(WHOLE)
    run_id = new_run_id()
    closed_by_default, listing = DatasetCache(run_id, budget_bytes=1 << 20), \
        DatasetCache(run_id, budget_bytes=1 << 20, allowed_imports=[allowed])
    try:
        for cache in (closed_by_default, listing):
            with pytest.raises(ConfigError, match="runs code only from"):
                cache.get(f"py:{refused}:make")
        with pytest.raises(ConfigError, match="runs code only from"):
            closed_by_default.get(f"py:{allowed}:make")
        assert listing.get(f"py:{allowed}:make").n_classes == 2
        assert refused not in sys.modules
    finally:
        closed_by_default.close()
        listing.close()
    assert list_segments(run_id) == []
