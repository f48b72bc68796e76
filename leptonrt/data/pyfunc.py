"""``py:package.module:function``: a dataset the user's own code builds.

``function()`` is called with no arguments and returns a mapping holding either
``x_train, y_train, x_test, y_test`` or ``x, y`` (numpy arrays, or anything
``np.asarray`` takes); the arrays are checked, split and normalised exactly as an npz's.

Naming a module asks the process that loads the data to run it. A local run is the
user's own process (``allowed=ANY``); a broker is a service, so it runs code only from
the modules its owner listed (``leptonrt up --allow-import MODULE``) and refuses any
other with a ConfigError before anything is imported (``load_callable``'s check; the
broker makes the same check when a job is submitted, for every piece of code the job
names, ``TrainJob.named_code``, so a refused job never queues).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from leptonrt.imports import load_callable

from . import arrays
from .arrays import Dataset
from .files import data_error

SCHEME = "py"
WHAT = "--dataset py:"   # how errors name the option
_MESSAGE_CHARS = 300     # of the user's exception, in our one-line error


def load_from_code(spec: str, seed: int, test_fraction: float, allowed: Iterable[str] | None) -> Dataset:
    """Import and call the function ``spec`` names, and make a Dataset of what it returns."""
    ref = spec.partition(":")[2]
    function = load_callable(ref, WHAT, allowed)
    where = f"bad dataset {spec}"
    try:
        returned = function()
    except (Exception, SystemExit) as exc:   # the user's code failing is their data failing, not us
        raise data_error(where, f"raised {type(exc).__name__}: {_line(exc)}") from None
    return arrays.from_arrays(where, _named_arrays(where, returned), seed, test_fraction)


def _named_arrays(where: str, returned: Any) -> dict[str, np.ndarray]:
    if not isinstance(returned, Mapping):
        raise data_error(where, f"returned a {type(returned).__name__}; "
                                f"expected a mapping holding {arrays.EXPECTED_NAMES}")
    names = [name for name in returned if isinstance(name, str)]
    wanted = arrays.layout(names)
    if wanted is None:
        present = ", ".join(sorted(names)[:16]) or "no named arrays"
        raise data_error(where, f"returned {present}; expected {arrays.EXPECTED_NAMES}")
    return {name: _as_array(where, returned, name) for name in wanted}


def _as_array(where: str, returned: Mapping, name: str) -> np.ndarray:
    try:
        return np.asarray(returned[name])
    except Exception as exc:   # ragged lists, objects whose __array__ (or a lazy mapping) fails
        raise data_error(where, f"{name} is not an array ({type(exc).__name__}: {_line(exc)})") from None


def _line(exc: BaseException) -> str:
    return str(exc)[:_MESSAGE_CHARS] or "no message"
