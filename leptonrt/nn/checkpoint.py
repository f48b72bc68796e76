"""Crash-safe training checkpoints, written without pickle.

A checkpoint is a directory ``DIR/step-00000123`` (123 = global steps completed, so the
next step to train is 123) holding three files:

* ``weights.safetensors``: the model's ``state_dict``, contiguous CPU tensors;
* ``optimizer.pt``: the optimizer's ``state_dict`` written with ``torch.save``, holding only
  tensors, numbers, bools, strings, None, lists, tuples and dicts, so it loads with
  ``torch.load(..., weights_only=True)`` and nothing in it can run code;
* ``manifest.json``: format version, step, epoch, job fingerprint, free-form meta, creation
  time, and the sha256 and size of the two other files.

Writing never touches a published checkpoint until the new one is whole. Everything is
written into a fresh ``DIR/.tmp-step-00000123-<pid>-<random>`` directory: the weights, then
the optimizer state, then the manifest last, each fsynced; then the temp directory itself
is fsynced and renamed to its final name in one atomic step, and DIR is fsynced so the
rename survives a power cut. Re-saving a step that already exists moves the old directory
aside first and deletes it only once the new one is in place. A crash at any point
therefore leaves either the previous checkpoints untouched plus a ``.tmp-*`` directory,
which readers ignore and the next save deletes once its writer's pid is dead, or the new
checkpoint complete. After a save, only the newest ``keep`` complete checkpoints remain.

Reading trusts nothing: ``latest`` takes the highest ``step-*`` directory that has a
manifest (one without is not ours to judge and is skipped), and refuses it with a
``DataError`` if the manifest is unreadable or any file's size or sha256 disagrees with it;
``load`` checks the hashes again before restoring, since files can change in between.

Only writing and restoring need PyTorch, and import it when called: the broker finds and
checks checkpoints (``latest``) without it, in a process that never loads it.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from leptonrt.pids import pid_alive
from leptonrt.errors import ConfigError, DataError, InternalError

if TYPE_CHECKING:
    import torch

FORMAT = 1
WEIGHTS, OPTIMIZER, MANIFEST = "weights.safetensors", "optimizer.pt", "manifest.json"
_STEP_DIR = re.compile(r"step-(\d+)")
_CHUNK = 1 << 20
_HINT = "remove it to resume from an earlier checkpoint"


@dataclass(frozen=True)
class Checkpoint:
    path: Path          # the checkpoint directory
    step: int           # global steps completed (the next step to train is `step`)
    epoch: int
    fingerprint: str    # identifies the job's mathematics
    meta: dict          # free-form JSON-able extras (rng, loss scale, split, ...)


def job_fingerprint(fields: dict) -> str:
    """sha256 hex of the canonical JSON of ``fields`` (key order does not matter)."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def check_fingerprint(checkpoint: Checkpoint, fingerprint: str) -> None:
    """ConfigError unless ``checkpoint`` was written by a job with this fingerprint."""
    if checkpoint.fingerprint != fingerprint:
        raise ConfigError(f"checkpoint {checkpoint.path} was written by a different job "
                          f"(fingerprint {checkpoint.fingerprint[:12]}, this job {fingerprint[:12]}); "
                          "use the same settings or a fresh --checkpoint-dir")


# ---------------------------------------------------------------------------- writing

def save(directory: str | Path, *, step: int, epoch: int, fingerprint: str, model: torch.nn.Module,
         optimizer: torch.optim.Optimizer, meta: dict | None = None, keep: int = 3,
         fault: Callable[[str], None] | None = None) -> Checkpoint:
    """Write checkpoint ``step`` into ``directory`` by the protocol above, then prune.

    ``fault`` is a test hook, called with "weights", "optimizer", "manifest" and "rename"
    just before each of those actions, to simulate a crash in the middle of a write.
    """
    if keep < 1:
        raise ConfigError(f"keep must be at least 1 checkpoint, got {keep}")
    if step < 0 or epoch < 0:
        raise InternalError(f"checkpoint step and epoch must be non-negative, got {step}, {epoch}")
    import torch
    from safetensors.torch import save_file
    meta = dict(meta or {})
    json.dumps(meta)  # fail on a non-JSON-able meta before anything is written
    hook = fault or (lambda stage: None)
    root = Path(directory)
    name = f"step-{step:08d}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp-{name}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
    except OSError as e:
        raise ConfigError(f"cannot write checkpoints to {root}: {e.strerror or e}") from None

    final, aside = root / name, None
    try:
        hook("weights")
        tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS), metadata={"step": str(step)})
        _fsync(tmp / WEIGHTS)
        hook("optimizer")
        with open(tmp / OPTIMIZER, "wb") as f:
            torch.save(_plain(optimizer.state_dict(), "optimizer"), f)
            f.flush()
            os.fsync(f.fileno())
        hook("manifest")
        manifest = {"format": FORMAT, "step": step, "epoch": epoch, "fingerprint": fingerprint,
                    "meta": meta, "created": time.time(),
                    "files": {n: _digest(tmp / n) for n in (WEIGHTS, OPTIMIZER)}}
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        _fsync(tmp)
        hook("rename")
        if final.exists():
            aside = root / f".tmp-old-{name}-{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(final, aside)
        os.rename(tmp, final)
        _fsync(root)
    except BaseException:
        if aside is not None and not final.exists():
            os.rename(aside, final)  # put the old checkpoint back
            aside = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    _prune(root, keep)
    return Checkpoint(final, step, epoch, fingerprint, meta)


def _plain(value: Any, where: str) -> Any:
    """``value`` with only types ``torch.load(weights_only=True)`` accepts; tensors on CPU."""
    import torch
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, numbers.Integral):  # numpy and other foreign scalars
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, dict):
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    raise InternalError(f"cannot checkpoint {where}: {type(value).__name__} is not a plain value")


def _prune(root: Path, keep: int) -> None:
    """Keep the newest ``keep`` complete checkpoints; drop temp dirs whose writer is dead."""
    complete = sorted((step, path) for step, path in _step_dirs(root) if (path / MANIFEST).exists())
    for _, path in complete[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    for path in root.glob(".tmp-*"):
        try:
            pid = int(path.name.split("-")[-2])
        except (IndexError, ValueError):
            continue
        if not pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _digest(path: Path) -> dict:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return {"sha256": h.hexdigest(), "size": size}


# ---------------------------------------------------------------------------- reading

def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    out = []
    for path in root.iterdir():
        match = _STEP_DIR.fullmatch(path.name)
        if match and path.is_dir():
            out.append((int(match.group(1)), path))
    return out


def latest(directory: str | Path) -> Checkpoint | None:
    """The newest complete checkpoint in ``directory``, verified; None if there is none.

    Directories without a manifest are skipped; a newest one that fails verification is
    refused with a DataError rather than silently passed over.
    """
    root = Path(directory)
    if not root.is_dir():
        return None
    for _, path in sorted(_step_dirs(root), reverse=True):
        if (path / MANIFEST).exists():
            return _verify(path)
    return None


def _verify(path: Path) -> Checkpoint:
    """Read the manifest of ``path`` and check every file it lists; DataError if anything is off."""
    def refuse(problem: str) -> DataError:
        return DataError(f"checkpoint {path}: {problem}; {_HINT}")

    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise refuse(f"unreadable {MANIFEST} ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise refuse(f"{MANIFEST} has format {got!r}, expected {FORMAT}")
    try:
        step, epoch, fingerprint = int(manifest["step"]), int(manifest["epoch"]), str(manifest["fingerprint"])
        meta, files = manifest["meta"], manifest["files"]
        expected = {name: (str(files[name]["sha256"]), int(files[name]["size"])) for name in (WEIGHTS, OPTIMIZER)}
    except (KeyError, TypeError, ValueError) as e:
        raise refuse(f"{MANIFEST} is missing or has a bad field ({e})") from None
    if not isinstance(meta, dict):
        raise refuse(f"{MANIFEST} meta is not an object")
    match = _STEP_DIR.fullmatch(path.name)
    if match and int(match.group(1)) != step:
        raise refuse(f"{MANIFEST} says step {step}, the directory name says {int(match.group(1))}")
    for name, (sha, size) in expected.items():
        try:
            actual = _digest(path / name)
        except FileNotFoundError:
            raise refuse(f"{name} is missing") from None
        except OSError as e:
            raise refuse(f"cannot read {name} ({e.strerror or e})") from None
        if actual["size"] != size:
            raise refuse(f"{name} is {actual['size']} bytes, the manifest says {size}")
        if actual["sha256"] != sha:
            raise refuse(f"{name} does not match its sha256 in the manifest")
    return Checkpoint(path, step, epoch, fingerprint, meta)


def load(checkpoint: Checkpoint, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Checkpoint:
    """Restore ``model`` weights and ``optimizer`` state in place from ``checkpoint``; return
    the checkpoint as verified now (with its manifest's meta).

    ``checkpoint`` says what is expected at its path: a different step or fingerprint there
    is refused. Parameters are copied into, not replaced, so views onto them (such as the
    gradient buffer of ``FusedStep``) and the optimizer's references stay valid.
    """
    import torch
    from safetensors.torch import load_file
    path = checkpoint.path
    found = _verify(path)
    if (found.step, found.fingerprint) != (checkpoint.step, checkpoint.fingerprint):
        raise DataError(f"checkpoint {path} changed since it was found; {_HINT}")
    try:
        tensors = load_file(str(path / WEIGHTS), device="cpu")
        state = torch.load(path / OPTIMIZER, weights_only=True, map_location="cpu")
    except Exception as e:  # safetensors and torch raise a variety of types on a bad file
        raise DataError(f"checkpoint {path}: cannot read its files ({type(e).__name__}: {e}); {_HINT}") from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        why = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise DataError(f"checkpoint {path} does not fit this model ({why}); "
                        "use the same model settings or a fresh --checkpoint-dir") from None
    try:
        optimizer.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise DataError(f"checkpoint {path}: optimizer state does not fit this optimizer ({e}); "
                        "use the same optimizer settings or a fresh --checkpoint-dir") from None
    return found
