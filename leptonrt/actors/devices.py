"""Which devices to run actors on: docker's ``--gpus`` grammar, CUDA_VISIBLE_DEVICES, cores."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from ..errors import ConfigError, NoDeviceError, UsageError

MAX_CPU_ACTORS = 256   # more CPU actors than this is a typo, not a plan (each is a process with its own heap)


@dataclass(frozen=True)
class ActorPlan:
    """One actor to start: its device, what CUDA_VISIBLE_DEVICES it gets, its threads."""

    device: str                 # "cpu" or "cuda:0" (as the actor sees it)
    visible: str | None         # CUDA_VISIBLE_DEVICES for the process ("" hides every GPU)
    threads: int                # torch intra-op threads


@dataclass(frozen=True)
class Selection:
    """The actors to start, and a note for the user when we chose differently than asked."""

    actors: tuple[ActorPlan, ...]
    note: str | None = None

    @property
    def any_gpu(self) -> bool:
        return any(plan.device != "cpu" for plan in self.actors)


def visible_gpus(env: dict[str, str], cuda_count: int) -> list[str]:
    """Physical ids this process may use, honouring an existing CUDA_VISIBLE_DEVICES."""
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return [str(i) for i in range(cuda_count)]
    ids = [p.strip() for p in raw.split(",") if p.strip()]
    return ids[:cuda_count]


def _pick(gpus: str, visible: list[str]) -> list[str]:
    spec = gpus.strip().lower()
    if spec == "all":
        return list(visible)
    if spec == "none":
        return []
    if spec.isdigit():
        n = int(spec)
        if n > len(visible):
            raise NoDeviceError(f"--gpus {n}: only {len(visible)} GPU(s) visible")
        return visible[:n]
    if spec.startswith("device="):
        return [_index(part, visible) for part in spec[len("device="):].split(",")]
    raise UsageError(f"--gpus must be all, N, device=I[,J...] or none; got {gpus!r}")


def _index(part: str, visible: list[str]) -> str:
    if not part.strip().isdigit():
        raise UsageError(f"--gpus device= takes GPU indices like device=0,2; got {part!r}")
    i = int(part)
    if i >= len(visible):
        raise NoDeviceError(f"--gpus device={i}: only {len(visible)} GPU(s) visible")
    return visible[i]


def allowed_cores() -> list[int]:
    """The cores this process may run on, in order."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:   # no affinity on this platform: nothing gets pinned
        return []


def core_sets(selection: Selection, allowed: list[int]) -> list[tuple[int, ...] | None]:
    """The cores each actor is pinned to: every single-threaded CPU actor a core of its own,
    taken from the end of ``allowed`` so the first ones stay with the broker and the GPU
    actors' host threads (which are not pinned: None).

    Without pinning the scheduler moves actors between cores and sometimes puts two on one;
    a step then takes twice as long for reasons the planner would chase. Nobody is pinned
    when the actors do not fit side by side, or when they run several threads each: that
    case has not been measured here (on a 16-core machine, a pinned group of two 8-thread
    actors once saw a collective time out after a replacement rejoined; the cause is not
    established).
    """
    cpu = [i for i, plan in enumerate(selection.actors) if plan.device == "cpu"]
    out: list[tuple[int, ...] | None] = [None] * len(selection.actors)
    if not cpu or len(cpu) > len(allowed) or any(selection.actors[i].threads != 1 for i in cpu):
        return out
    for i, core in zip(cpu, allowed[len(allowed) - len(cpu):]):
        out[i] = (core,)
    return out


def cpu_cores() -> int:
    """How many cores this process may run on."""
    return len(allowed_cores()) or os.cpu_count() or 1


def select(gpus: str = "all", cpu_actors: int | None = None, *, env: dict[str, str] | None = None,
           cuda_count: int | None = None, cores: int | None = None) -> Selection:
    """Resolve the user's device request into actor plans (raises on impossible requests)."""
    env = dict(os.environ) if env is None else env
    if cuda_count is None:
        cuda_count = _cuda_count() if _may_pick_gpus(gpus, env) else 0
    cores = cores or cpu_cores()
    picked = _pick(gpus, visible_gpus(env, cuda_count))
    note = None
    if cpu_actors is not None and not 0 <= cpu_actors <= MAX_CPU_ACTORS:
        raise ConfigError(f"--cpu-actors must be between 0 and {MAX_CPU_ACTORS}, got {cpu_actors}")
    if cpu_actors is None:
        cpu_actors = 0 if picked else 1
        if not picked and gpus.strip().lower() == "all":
            note = "no GPU found; training on 1 CPU actor (use --cpu-actors N for more)"
    if not picked and cpu_actors == 0:
        raise NoDeviceError("no devices selected: pass --gpus or --cpu-actors N")
    spare = max(cores - len(picked), cpu_actors, 1)
    cpu_threads = max(1, spare // cpu_actors) if cpu_actors else 1
    plans = [ActorPlan("cuda:0", gid, 2) for gid in picked]
    plans += [ActorPlan("cpu", "", cpu_threads) for _ in range(cpu_actors)]
    return Selection(tuple(plans), note)


# what a GPU driver leaves on Linux (NVIDIA's, or ROCm's, which PyTorch also reaches as torch.cuda)
GPU_DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd")


def _may_pick_gpus(gpus: str, env: dict[str, str]) -> bool:
    """Whether ``gpus`` could pick a GPU at all: only then is PyTorch asked how many there
    are (its import takes seconds, and a CPU-only run never needs it in the broker)."""
    if gpus.strip().lower() == "none" or env.get("CUDA_VISIBLE_DEVICES") == "":
        return False
    return not sys.platform.startswith("linux") or any(os.path.exists(p) for p in GPU_DRIVER_PATHS)


def _cuda_count() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def describe(selection: Selection) -> str:
    """``2 CPU actors``, ``1 GPU actor and 1 CPU actor``."""
    gpus = sum(plan.device != "cpu" for plan in selection.actors)
    parts = [f"{n} {kind} actor{'s' if n != 1 else ''}"
             for n, kind in ((gpus, "GPU"), (len(selection.actors) - gpus, "CPU")) if n]
    return " and ".join(parts)
