"""The metrics a snapshot gives, in the Prometheus text format, read back with its own parser."""

from prometheus_client import generate_latest
from prometheus_client.core import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from leptonrt.broker.metrics import SnapshotCollector, is_loopback
from leptonrt.broker.stats import ActorStats, HistogramStats, JobStats, QueuedJob, Snapshot, Totals

TOTALS = Totals(steps=30, samples=1900, regroups=2, replayed_steps=5,
                step_seconds=HistogramStats(bounds=(0.01, 0.1), counts=(10, 15, 5), total=1.5),
                allreduce_seconds=HistogramStats(bounds=(0.01, 0.1), counts=(30, 0, 0), total=0.03),
                compute_seconds=(1.25, 0.5))
ACTORS = (ActorStats(rank=0, device="cuda:0", device_name="H100", pid=11, state="training", share=0.75,
                     compute_ms=2.0, samples_per_s=None, memory_bytes=80 << 30, restarts=1),
          ActorStats(rank=1, device="cpu", device_name=None, pid=12, state="training", share=0.25,
                     compute_ms=8.0, samples_per_s=None, memory_bytes=None, restarts=0))
JOB = JobStats(id=4, dataset="digits", model="64-128-10", epoch=1, epochs=3, step=30, total_steps=90,
               samples_per_s=None, train_loss=None, test_accuracy=None, eta_s=None, started_at=0.0)
SNAPSHOT = Snapshot(address="ipc:///x", started_at=100.0, now=200.0, state="serving", job=JOB,
                    queued=(QueuedJob(id=5, dataset="digits", submitted_at=150.0),), actors=ACTORS,
                    jobs_done=2, jobs_failed=1, jobs_cancelled=0, totals=TOTALS,
                    counters={"accepted": 9, "decode_errors": 2, "actor_bad_messages": 1})


def scrape(snapshot):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: snapshot))
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_totals_become_counters_and_cumulative_histograms():
    got = scrape(SNAPSHOT)
    assert got[("leptonrt_steps_total", ())] == 30 and got[("leptonrt_samples_total", ())] == 1900
    assert got[("leptonrt_regroups_total", ())] == 2 and got[("leptonrt_replayed_steps_total", ())] == 5
    buckets = [got[("leptonrt_step_seconds_bucket", (("le", le),))] for le in ("0.01", "0.1", "+Inf")]
    assert buckets == [10, 25, 30]
    assert got[("leptonrt_step_seconds_count", ())] == 30 and got[("leptonrt_step_seconds_sum", ())] == 1.5
    assert got[("leptonrt_allreduce_seconds_bucket", (("le", "+Inf"),))] == 30


def test_each_actor_has_its_share_compute_and_restarts_and_only_a_gpu_its_memory():
    got = scrape(SNAPSHOT)
    gpu, cpu = (("actor", "0"), ("device", "cuda:0")), (("actor", "1"), ("device", "cpu"))
    assert got[("leptonrt_actor_share", gpu)] == 0.75 and got[("leptonrt_actor_share", cpu)] == 0.25
    assert got[("leptonrt_actor_compute_seconds_total", gpu)] == 1.25
    assert got[("leptonrt_actor_restarts_total", gpu)] == 1
    assert got[("leptonrt_actor_memory_bytes", gpu)] == 80 << 30 and ("leptonrt_actor_memory_bytes", cpu) not in got


def test_jobs_by_state_and_the_service_counters():
    got = scrape(SNAPSHOT)
    jobs = {state: got[("leptonrt_jobs", (("state", state),))]
            for state in ("queued", "running", "done", "failed", "cancelled")}
    assert jobs == {"queued": 1, "running": 1, "done": 2, "failed": 1, "cancelled": 0}
    assert got[("leptonrt_service_accepted_total", ())] == 9
    assert got[("leptonrt_service_decode_errors_total", ())] == 2
    assert got[("leptonrt_actor_bad_messages_total", ())] == 1


def test_the_totals_survive_the_wire_form_of_a_snapshot():
    again = Snapshot.from_dict(SNAPSHOT.to_dict())
    assert again.totals == TOTALS and scrape(again) == scrape(SNAPSHOT)


def test_only_loopback_addresses_count_as_private():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")
