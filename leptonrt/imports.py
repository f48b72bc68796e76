"""Code a job names by reference: ``package.module:attribute``.

A job can name its model (``--model pkg.mod:factory``) and its data
(``--dataset py:pkg.mod:function``); both are imported where the job runs. Run here, that
is the user's own process and any module may be named. A broker is a service other
clients reach, so it runs such code only from the modules its owner listed with
``up --allow-import MODULE``: naming a module is asking the broker to execute it.
Every failure is one line (a ConfigError), never a traceback.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable

from .errors import ConfigError

# a dotted module path, a colon, a dotted attribute path: no spaces, no file names
_DOTTED = r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*"
_REF = re.compile(f"{_DOTTED}:{_DOTTED}")
_MODULE = re.compile(_DOTTED)
ANY = None  # ``allowed=ANY``: a local run, where the user's own code is theirs to run


def check_ref(ref: str, what: str) -> tuple[str, str]:
    """``(module, attribute)`` of a well-formed reference, else a ConfigError naming ``what``."""
    if not isinstance(ref, str) or _REF.fullmatch(ref) is None:
        raise ConfigError(f"{what} takes package.module:callable (e.g. mypkg.models:build), got {ref!r}")
    module, _, attribute = ref.partition(":")
    return module, attribute


def allowed_modules(modules: Iterable[str] | None) -> tuple[str, ...] | None:
    """An owner's ``--allow-import`` list, each a dotted module name (ConfigError otherwise)."""
    if modules is ANY:
        return ANY
    if isinstance(modules, str):   # one name is not its characters
        modules = (modules,)
    modules = tuple(modules)
    for module in modules:
        if not isinstance(module, str) or _MODULE.fullmatch(module) is None:
            raise ConfigError(f"--allow-import takes a module name like mypkg or mypkg.data, got {module!r}")
    return modules


def is_allowed(module: str, allowed: Iterable[str] | None) -> bool:
    """Whether ``module`` is one of ``allowed`` or inside one of them (``ANY`` allows all)."""
    if allowed is ANY:
        return True
    return any(module == a or module.startswith(a + ".") for a in allowed)


def check_allowed(ref: str, what: str, allowed: Iterable[str] | None) -> None:
    """Refuse, before importing anything, a reference this process may not run."""
    module, _ = check_ref(ref, what)
    allowed = ANY if allowed is ANY else tuple(allowed)
    if not is_allowed(module, allowed):
        listed = ", ".join(allowed) if allowed else "none"
        raise ConfigError(f"{what} {ref}: this broker runs code only from the modules it was started with "
                          f"(`leptonrt up --allow-import {module.split('.')[0]}`; allowed now: {listed})")


def load_callable(ref: str, what: str, allowed: Iterable[str] | None = ANY) -> Callable:
    """Import ``ref`` and return the callable it names; every failure is a one-line ConfigError."""
    check_allowed(ref, what, allowed)
    module_name, attribute = check_ref(ref, what)
    try:
        target = importlib.import_module(module_name)
    except Exception as exc:   # the module's own import-time errors are the user's, not ours
        raise ConfigError(f"{what} {ref}: cannot import {module_name} ({type(exc).__name__}: {_line(exc)})") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"{what} {ref}: {module_name} has no attribute {attribute}") from None
    if not callable(target):
        raise ConfigError(f"{what} {ref}: {attribute} is a {type(target).__name__}, not a callable")
    return target


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or "no message"
