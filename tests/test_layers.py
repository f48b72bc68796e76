"""The layers the architecture draws: pure cores import no I/O and no torch, the wire is
shared, and no two modules import each other."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "leptonrt"
PURE = ["leptonrt.broker.job", "leptonrt.broker.lifecycle", "leptonrt.broker.ledger", "leptonrt.broker.liveness",
        "leptonrt.broker.splits", "leptonrt.broker.gate", "leptonrt.broker.store", "leptonrt.broker.events",
        "leptonrt.broker.rebalance", "leptonrt.broker.rebalance.simulate", "leptonrt.actors.schedule",
        "leptonrt.broker.roster", "leptonrt.broker.grants", "leptonrt.broker.restarts", "leptonrt.broker.regroup",
        "leptonrt.broker.granting", "leptonrt.broker.cores", "leptonrt.broker.figures",
        "leptonrt.broker.tally", "leptonrt.broker.hosts", "leptonrt.broker.rebalance.trial", "leptonrt.broker.series",
        "leptonrt.batches", "leptonrt.messages", "leptonrt.wire", "leptonrt.data.transfer",
        "leptonrt.data.stream", "leptonrt.broker.streams", "leptonrt.actors.agentcore", "leptonrt.tables"]


@pytest.mark.parametrize("module", PURE)
def test_a_pure_core_imports_neither_torch_nor_sockets_nor_asyncio(module):
    code = f"import sys, {module}\nprint(','.join(m for m in ('torch', 'zmq', 'asyncio') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()}"


def _imports(path: Path) -> set[str]:
    """The leptonrt modules ``path`` imports at module level (not inside functions)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            if base.startswith("leptonrt"):
                out.add(base)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("leptonrt"))
    return out


def test_no_two_modules_import_each_other():
    graph = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): _imports(p)
             for p in PACKAGE.rglob("*.py")}
    cycles = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps
                     if a != b and a in graph.get(b, set())})
    assert cycles == []


def test_actors_do_not_import_the_broker():
    offenders = [str(p.relative_to(PACKAGE)) for p in (PACKAGE / "actors").rglob("*.py")
                 if any(m.startswith("leptonrt.broker") for m in _imports(p))]
    assert offenders == []


@pytest.mark.parametrize("module", ["leptonrt.client", "leptonrt.cli", "leptonrt.commands.train", "leptonrt.commands.serve",
                                    "leptonrt.control", "leptonrt.daemon", "leptonrt.broker.probe"])
def test_a_client_imports_no_torch(module):
    """`status`, `top` and `train --connect` answer without loading torch (seconds of imports)."""
    code = f"import sys, {module}\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("module", ["leptonrt.broker.runner", "leptonrt.broker.service"])
def test_a_broker_imports_no_torch(module):
    """A local `train` runs its broker in the CLI's process: PyTorch is the actors' alone,
    so the broker never pays its seconds of import while the actors' fork server does."""
    code = f"import sys, {module}\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
