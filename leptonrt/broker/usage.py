"""What the broker measures of its actors from outside: each process's CPU% and resident
memory (psutil), and its GPU's utilisation, memory in use and power draw (NVML).

The broker supervises the actor processes, so it can see them whoever asks: ``top``
against any broker shows the same figures. ``Broker`` calls ``UsageSampler.sample`` about
once a second in a worker thread, never on the actors' channel. Every call is cheap:
psutil's ``cpu_percent(interval=None)`` compares with the previous call on the same
process (so a process's first sample has no CPU figure yet), and NVML reads counters the
driver keeps. NVML (nvidia-ml-py) is imported on first use; without it, without a GPU, or
for a figure a device does not report, the figure is None, never an error.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import psutil


@dataclass(frozen=True)
class Usage:
    """One process's figures (None: not measured, or not measurable here)."""

    cpu_percent: float | None = None      # CPU time over wall time since the previous sample (100 = one core)
    rss_bytes: int | None = None          # resident memory
    gpu_percent: float | None = None      # its GPU's utilisation over the driver's last sample period
    gpu_memory_bytes: int | None = None   # memory in use on its GPU (every process's)
    gpu_power_w: float | None = None      # its GPU's power draw, watts


@dataclass(frozen=True)
class Target:
    """A process to measure, and the physical GPU it runs on."""

    pid: int
    gpu: str | None = None   # as CUDA_VISIBLE_DEVICES names it: an index ("0") or a UUID ("GPU-..."); None: CPU


class Gpus:
    """NVML, opened on first use. One that cannot open (no library, no driver) stays closed
    and every figure is None. ``nvml`` is the module to use (``pynvml`` by default).

    A process's GPU is the one NVML lists it on, once it has a CUDA context there: NVML
    numbers devices in PCI order, CUDA (by default) fastest first, so on a host with unlike
    GPUs an index may name another device. Until then, the id CUDA_VISIBLE_DEVICES gave it.
    """

    def __init__(self, nvml: Any = None) -> None:
        self._nvml = nvml
        self._opened: bool | None = None      # None: not tried yet
        self._handles: dict[str, Any] = {}
        self._of_pid: dict[int, Any] = {}     # pid -> the device NVML lists it on

    def read(self, gpu: str, pid: int | None = None) -> tuple[float | None, int | None, float | None]:
        """(utilisation %, memory in use in bytes, power in watts) of the GPU process ``pid``
        uses, else of ``gpu``; None where unknown."""
        handle = self._device_of(pid) if pid is not None else None
        handle = handle if handle is not None else self._handle(gpu)
        if handle is None:
            return None, None, None
        nvml = self._nvml
        return (_ask(lambda: float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)),
                _ask(lambda: int(nvml.nvmlDeviceGetMemoryInfo(handle).used)),
                _ask(lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0))   # reported in milliwatts

    def forget(self, keep: set[int]) -> None:
        """Processes other than ``keep`` are gone: their devices need not be remembered."""
        self._of_pid = {pid: h for pid, h in self._of_pid.items() if pid in keep}

    def close(self) -> None:
        if self._opened:
            _ask(self._nvml.nvmlShutdown)
        self._opened, self._handles, self._of_pid = False, {}, {}

    def _device_of(self, pid: int) -> Any:
        if pid not in self._of_pid and self._open():
            nvml = self._nvml
            for i in range(_ask(nvml.nvmlDeviceGetCount) or 0):
                handle = _ask(lambda: nvml.nvmlDeviceGetHandleByIndex(i))
                running = _ask(lambda: nvml.nvmlDeviceGetComputeRunningProcesses(handle)) or []
                if handle is not None and any(p.pid == pid for p in running):
                    self._of_pid[pid] = handle
                    break
        return self._of_pid.get(pid)

    def _handle(self, gpu: str) -> Any:
        if not self._open():
            return None
        if gpu not in self._handles:
            nvml = self._nvml
            by_uuid = gpu.startswith(("GPU-", "MIG-"))
            self._handles[gpu] = _ask(lambda: nvml.nvmlDeviceGetHandleByUUID(gpu) if by_uuid
                                      else nvml.nvmlDeviceGetHandleByIndex(int(gpu)))
        return self._handles[gpu]

    def _open(self) -> bool:
        if self._opened is None:
            try:
                self._nvml = self._nvml or importlib.import_module("pynvml")
                self._nvml.nvmlInit()
                self._opened = True
            except Exception:   # no package, no libnvidia-ml, no driver: no GPU figures
                self._opened = False
        return self._opened


def _ask(call):
    """``call()``, or None when NVML cannot say (not supported on this device, gone, closed)."""
    try:
        return call()
    except Exception:   # NVMLError and its kin, or an index that is not a number: a figure we lack
        return None


class UsageSampler:
    """Measures processes; keeps one ``psutil.Process`` per pid so CPU% compares like with like."""

    def __init__(self, gpus: Gpus | None = None) -> None:
        self.gpus = gpus or Gpus()
        self._procs: dict[int, psutil.Process] = {}

    def sample(self, targets: list[Target]) -> dict[int, Usage]:
        """pid -> its figures now; processes no longer asked about are forgotten."""
        wanted = {t.pid for t in targets}
        self._procs = {pid: p for pid, p in self._procs.items() if pid in wanted}
        self.gpus.forget(wanted)
        return {t.pid: self._one(t) for t in targets}

    def close(self) -> None:
        self.gpus.close()

    def _one(self, target: Target) -> Usage:
        cpu, rss = self._process(target.pid)
        gpu = self.gpus.read(target.gpu, target.pid) if target.gpu else (None, None, None)
        return Usage(cpu, rss, *gpu)

    def _process(self, pid: int) -> tuple[float | None, int | None]:
        first = pid not in self._procs
        try:
            proc = self._procs[pid] if not first else self._procs.setdefault(pid, psutil.Process(pid))
            with proc.oneshot():
                cpu = proc.cpu_percent(interval=None)
                rss = proc.memory_info().rss
        except psutil.Error:   # gone, a zombie, or not ours to read
            self._procs.pop(pid, None)
            return None, None
        return (None if first else cpu), rss


__all__ = ["Gpus", "Target", "Usage", "UsageSampler"]
