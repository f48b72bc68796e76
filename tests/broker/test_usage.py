"""UsageSampler: CPU% and resident memory of real processes; GPU figures from NVML, or None."""

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from leptonrt.broker.usage import Gpus, Target, Usage, UsageSampler


class NVMLError(Exception):
    pass


class FakeNVML:
    """What nvidia-ml-py answers on a host with two unlike GPUs: NVML's index 0 is an 80 GiB
    one whose utilisation is not reported (as on a MIG slice), index 1 a 24 GiB one, which
    ``on_gpu1`` (pids) run on. ``broken`` is a machine without a driver."""

    def __init__(self, broken=False, on_gpu1=()):
        self.broken, self.on_gpu1, self.calls = broken, set(on_gpu1), []

    def nvmlInit(self):
        if self.broken:
            raise NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, index):
        if index not in (0, 1):
            raise NVMLError("Invalid Argument")
        return f"gpu{index}"

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if uuid != "GPU-1234":
            raise NVMLError("Not Found")
        return "gpu0"

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return [SimpleNamespace(pid=pid, usedGpuMemory=1 << 30) for pid in self.on_gpu1] if handle == "gpu1" else []

    def nvmlDeviceGetUtilizationRates(self, handle):
        if handle == "gpu0":
            raise NVMLError("Not Supported")
        return SimpleNamespace(gpu=87, memory=40)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=12 << 30, total=80 << 30) if handle == "gpu0" else SimpleNamespace(used=3 << 30)

    def nvmlDeviceGetPowerUsage(self, handle):
        return 312400 if handle == "gpu0" else 95000   # milliwatts


def test_a_processes_cpu_percent_comes_from_its_second_sample_and_its_memory_from_the_first():
    sampler = UsageSampler(Gpus(FakeNVML()))
    me = os.getpid()
    first = sampler.sample([Target(me)])[me]
    sum(i * i for i in range(200_000))   # some CPU time between the samples
    second = sampler.sample([Target(me)])[me]
    assert first.cpu_percent is None and first.rss_bytes > 1 << 20
    assert second.cpu_percent is not None and second.cpu_percent >= 0 and second.rss_bytes > 1 << 20
    assert (second.gpu_percent, second.gpu_memory_bytes, second.gpu_power_w) == (None, None, None)   # a CPU actor


def test_a_process_that_is_gone_has_no_figures():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert UsageSampler(Gpus(FakeNVML())).sample([Target(proc.pid)]) == {proc.pid: Usage()}


def test_gpu_figures_come_from_nvml_and_what_a_device_does_not_report_is_none():
    nvml = FakeNVML()
    gpus = Gpus(nvml)
    assert gpus.read("0") == (None, 12 << 30, 312.4)
    assert gpus.read("GPU-1234") == (None, 12 << 30, 312.4)
    assert gpus.read("7") == (None, None, None) and gpus.read("MIG-x") == (None, None, None)
    assert gpus.read("1") == (87.0, 3 << 30, 95.0)
    sampler = UsageSampler(gpus)
    usage = sampler.sample([Target(os.getpid(), "0")])[os.getpid()]
    assert usage.gpu_memory_bytes == 12 << 30 and usage.gpu_power_w == 312.4 and usage.gpu_percent is None
    sampler.close()
    assert nvml.calls == ["shutdown"]


def test_a_process_nvml_lists_on_a_gpu_gets_that_gpus_figures_whatever_its_cuda_index():
    # CUDA numbers devices fastest first, NVML in PCI order: "0" to the actor may be NVML's 1
    me = os.getpid()
    sampler = UsageSampler(Gpus(FakeNVML(on_gpu1={me})))
    usage = sampler.sample([Target(me, "0"), Target(1, "0")])
    assert (usage[me].gpu_percent, usage[me].gpu_memory_bytes, usage[me].gpu_power_w) == (87.0, 3 << 30, 95.0)
    assert usage[1].gpu_memory_bytes == 12 << 30   # not listed (yet): the device its id names


def test_without_nvml_every_gpu_figure_is_none_and_nothing_raises():
    gpus = Gpus(FakeNVML(broken=True))
    assert gpus.read("0") == (None, None, None)
    gpus.close()


def _gpus_nvml_sees() -> int:
    try:
        import pynvml
        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return 0


@pytest.mark.gpu
@pytest.mark.skipif(_gpus_nvml_sees() == 0, reason="needs NVML and a GPU")
def test_a_real_gpu_reports_its_memory_in_use_through_nvml():
    gpus = Gpus()
    try:
        percent, used, _watts = gpus.read("0")
        assert used is not None and used > 0
        assert percent is None or 0 <= percent <= 100
    finally:
        gpus.close()
