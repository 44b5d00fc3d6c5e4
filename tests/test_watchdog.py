"""The suite's watchdog (tests/conftest.py) on a real stuck Spark job of the shared session:
it writes the driver JVM's thread stacks and the Python workers' stacks, and cancels the job."""

from __future__ import annotations

import threading
import time

import conftest


def test_the_watchdog_writes_the_stacks_and_cancels_a_stuck_job(spark, tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "DIAGNOSTICS", tmp_path / "diagnostics")
    started = tmp_path / "started"
    started.mkdir()

    def stuck(x):
        import os
        import time

        open(os.path.join(str(started), str(x)), "w").close()
        time.sleep(120)
        return x

    errors = []

    def job():
        try:
            spark.sparkContext.parallelize(range(2), 2).map(stuck).collect()
        except Exception as e:  # the cancellation
            errors.append(e)

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while len(list(started.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(list(started.iterdir())) == 2, "the job's two tasks never started"
    lines: list[str] = []
    conftest._on_stuck("probe::test", into=lines)
    thread.join(60)
    assert not thread.is_alive(), "the job was not cancelled"
    assert errors and "cancel" in str(errors[0]).lower()
    assert "  cancelled the session's jobs" in lines
    (dump,) = (tmp_path / "diagnostics").glob("*probe*.txt")
    text = dump.read_text()
    assert "===== threads" in text and "Executor task launch worker" in text
    assert "PythonRunner" in text  # the tasks wait on their Python workers
    assert "stuck" in text  # py-spy found the workers in the function above
    assert any("Executor task launch worker" in line for line in lines)
