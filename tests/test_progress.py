"""What `leptonrt train` shows while a job runs: epoch lines, notes through logging, and on a
terminal a progress bar fed by the broker's Progress events."""

import logging

from leptonrt.broker.events import ActorLost, EpochEvent, Progress, Recovered
from leptonrt.progress import Follow, setup_logging

EPOCH = EpochEvent(epoch=1, epochs=2, train_loss=1.0, test_loss=1.1, test_accuracy=0.5, seconds=0.1,
                   samples_per_s=1000.0, shares=(1.0,))
PROGRESS = Progress(epoch=1, epochs=2, step=3, total_steps=10, samples=192, total_samples=640)


def test_off_a_terminal_it_is_plain_lines_as_before(capsys):
    setup_logging("info", rich=False)
    with Follow(lambda e: f"epoch {e.epoch}/{e.epochs}", bar=False) as follow:
        for event in (PROGRESS, EPOCH, ActorLost(1, "exit code 9", 4), Recovered(1, 0, 4, (0,), ())):
            follow(event)
    out, err = capsys.readouterr()
    assert out == "epoch 1/2\n"                                    # progress events draw nothing here
    assert err.splitlines() == ["leptonrt: rank 1 lost (exit code 9) after step 4; the rest go on, a "
                                "replacement is starting",
                                "leptonrt: regrouped as ranks 0; replaying from step 0 (4 steps trained again in all)"]


def test_quiet_drops_epoch_lines_and_the_log_level_drops_notes(capsys):
    setup_logging("warning", rich=False)
    with Follow(lambda e: "epoch", quiet=True, bar=False) as follow:
        follow(EPOCH)
        follow(Recovered(1, 0, 0, (0,), ()))
        follow(ActorLost(1, "exit code 9", 4))
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "rank 1 lost" in err
    setup_logging("info", rich=False)
    assert logging.getLogger("leptonrt").level == logging.INFO


def test_a_bar_follows_the_samples_and_goes_when_the_job_does():
    with Follow(lambda e: "epoch", quiet=True, bar=True) as follow:
        follow(PROGRESS)
        task = follow._progress.tasks[0]
        assert (task.description, task.completed, task.total) == ("epoch 1/2", 192, 640)
    assert follow._progress is None
