"""Running jobs and commands on the local host: output, exit codes, live
logs, cancellation that kills, time limits, Ctrl-C, the GIL, workers=0."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import processes_with, wait_until
from opsconductor import (
    Conductor,
    ExecutionError,
    Local,
    LogLine,
    Run,
    StepResult,
    copy,
    exec_,
    script,
)


def marker() -> str:
    """A unique sleep length: it shows in the sleeping process's own argv."""
    return f"{random.randint(300, 399)}.{random.randint(100000, 999999)}"


def test_define_and_run_a_local_job(oc: Conductor, tmp_path: Path) -> None:
    job = oc.define_job(
        {
            "name": "hello",
            "params": {
                "type": "object",
                "properties": {"who": {"type": "string", "default": "world"}},
            },
            "steps": [
                exec_("echo hello, {{ params.who }}", name="greet"),
                script("import sys\nprint('py', sys.version_info[0])", interpreter="python3"),
                copy(str(tmp_path / "out.txt"), content="for {{ params.who }}\n", mode=0o600),
                exec_("echo oops >&2; exit 0"),
            ],
        }
    )
    assert job.name == "hello" and job.version == 1
    assert [s["name"] for s in job.steps] == ["greet", "step-2", "step-3", "step-4"]

    run = oc.run("hello", {"who": "it's me"}, wait=True)
    assert isinstance(run, Run)
    assert run.status == "succeeded" and run.done and run.error is None
    assert run.job == "hello" and run.job_version == 1 and run.targets == ["local"]
    assert run.params == {"who": "it's me"}
    assert run.requested_by == "pytest"
    assert run.started_at is not None and run.finished_at is not None
    assert run.created_at <= run.started_at <= run.finished_at

    lines = list(run.logs())
    assert all(isinstance(line, LogLine) for line in lines)
    out = [(line.target, line.stream, line.text, line.step) for line in lines]
    assert ("local", "stdout", "hello, it's me", 0) in out
    assert ("local", "stdout", "py 3", 1) in out
    assert ("local", "stderr", "oops", 3) in out
    seqs = [line.seq for line in lines]
    assert seqs == sorted(seqs)

    results = run.results
    assert all(isinstance(r, StepResult) for r in results)
    assert [(r.step, r.step_name, r.target, r.status, r.exit_code) for r in results] == [
        (0, "greet", "local", "succeeded", 0),
        (1, "step-2", "local", "succeeded", 0),
        (2, "step-3", "local", "succeeded", 0),
        (3, "step-4", "local", "succeeded", 0),
    ]
    assert all(r.ok and r.duration is not None for r in results)

    written = tmp_path / "out.txt"
    assert written.read_text() == "for it's me\n"
    assert written.stat().st_mode & 0o777 == 0o600


def test_exit_codes_and_failed_runs(oc: Conductor) -> None:
    oc.define_job(
        {
            "name": "fails",
            "steps": [
                exec_("echo before; exit 3"),
                exec_("echo never"),
            ],
        }
    )
    run = oc.run("fails")
    assert run.wait(timeout=30) == "failed"
    assert run.error
    results = run.results
    assert [(r.status, r.exit_code) for r in results] == [("failed", 3), ("skipped", None)]
    assert [line.text for line in run.logs() if line.stream == "stdout"] == ["before"]

    with pytest.raises(ExecutionError) as e:
        run.wait(check=True)
    assert e.value.run_id == run.id and e.value.status == "failed"

    with pytest.raises(ExecutionError) as e2:
        oc.exec("exit 7", check=True)
    assert e2.value.status == "failed"
    failed = oc.runs(job="exec", status="failed")
    assert failed[0].results[0].exit_code == 7

    ok = oc.exec("true", wait=True, check=True)
    assert ok.status == "succeeded"


def test_logs_stream_while_the_run_is_going(oc: Conductor) -> None:
    run = oc.exec("echo first; sleep 3; echo second")
    started = time.monotonic()
    lines = run.logs()
    first = next(lines)
    at_first = time.monotonic() - started
    status_at_first = run.status
    assert first.text == "first" and first.stream == "stdout" and first.target == "local"
    assert status_at_first == "running", "the first line must arrive while the command runs"
    assert at_first < 2.5, f"the first line took {at_first:.2f}s (the command sleeps 3s after it)"
    rest = [line.text for line in lines]
    assert rest == ["second"]
    assert time.monotonic() - started >= 2.9
    assert run.status == "succeeded"


def test_lines_are_split_per_target_and_stream(oc: Conductor) -> None:
    for name in ("n1", "n2", "n3"):
        oc.add_target(Local(name, tags=["many"], vars={"role": name}))
    cmd = (
        "i=0; while [ $i -lt 20 ]; do printf '%s-' $OPSC_TARGET; printf 'line%s\\n' $i; "
        "i=$((i+1)); done; printf 'err-%s' $OPSC_TARGET >&2; printf 'no-newline'"
    )
    run = oc.exec(cmd, targets="tag:many", wait=True)
    assert run.status == "succeeded"
    by_target: dict = {}
    for line in run.logs():
        by_target.setdefault((line.target, line.stream), []).append(line.text)
    for name in ("n1", "n2", "n3"):
        assert by_target[(name, "stdout")] == [f"{name}-line{i}" for i in range(20)] + ["no-newline"]
        assert by_target[(name, "stderr")] == [f"err-{name}"]
    # Resuming after a seq skips what was read.
    all_lines = list(run.logs())
    later = list(run.logs(after=all_lines[-1].seq - 1))
    assert later and later[-1] == all_lines[-1]


def test_cancel_stops_the_process(oc: Conductor) -> None:
    m = marker()
    run = oc.exec(f"echo started; sleep {m}; echo not-reached")
    assert wait_until(lambda: processes_with(m), timeout=15), "the sleep never started"
    assert run.status == "running"
    run.cancel()
    assert run.wait(timeout=20) == "cancelled"
    assert wait_until(lambda: not processes_with(m), timeout=5), processes_with(m)
    texts = [line.text for line in run.logs()]
    assert "started" in texts and "not-reached" not in texts
    assert run.results[0].status == "cancelled"


def test_cancel_a_queued_run(oc0: Conductor) -> None:
    run = oc0.exec("echo never")
    assert run.status == "queued"
    run.cancel()
    assert run.status == "cancelled"
    assert run.wait(timeout=5) == "cancelled"


def test_time_limits_kill(oc: Conductor) -> None:
    m = marker()
    run = oc.exec(f"sleep {m}", timeout=0.5, wait=True)
    assert run.status == "timed_out"
    assert run.results[0].status == "timed_out"
    assert wait_until(lambda: not processes_with(m), timeout=5)
    # A job step's time limit, written as in job files.
    oc.define_job({"name": "slow", "steps": [exec_(f"sleep {marker()}", timeout="300ms")]})
    assert oc.run("slow", wait=True).status == "timed_out"


def test_wait_timeout_raises_and_the_run_goes_on(oc: Conductor) -> None:
    run = oc.exec("sleep 1.5")
    with pytest.raises(TimeoutError):
        run.wait(timeout=0.2)
    assert run.status == "running"
    assert run.wait(timeout=30) == "succeeded"


def test_workers_zero_executes_in_the_caller(oc0: Conductor) -> None:
    oc0.define_job({"name": "j", "steps": [exec_("echo in-process $OPSC_JOB")]})
    queued = oc0.run("j")
    time.sleep(0.5)
    assert queued.status == "queued", "with workers=0 nothing runs in the background"
    assert queued.wait(timeout=30) == "succeeded"
    assert [line.text for line in queued.logs()] == ["in-process j"]
    run = oc0.run("j", wait=True)
    assert run.status == "succeeded"
    assert oc0.exec("exit 4", wait=True).results[0].exit_code == 4


def test_blocking_calls_release_the_gil(oc: Conductor) -> None:
    run = oc.exec("sleep 1")
    counter = 0
    stop = threading.Event()

    def spin() -> None:
        nonlocal counter
        while not stop.is_set():
            counter += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        assert run.wait(timeout=30) == "succeeded"
    finally:
        stop.set()
        t.join()
    assert counter > 100_000, f"the other thread barely ran ({counter} loops): the GIL was held"


def test_ctrl_c_interrupts_wait_and_leaves_the_run(oc: Conductor) -> None:
    m = marker()
    run = oc.exec(f"sleep {m}")
    assert wait_until(lambda: processes_with(m), timeout=15)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run.wait()
    assert time.monotonic() - started < 5
    assert run.status == "running", "interrupting a wait does not stop the run"
    run.cancel()
    assert run.wait(timeout=20) == "cancelled"
    assert wait_until(lambda: not processes_with(m), timeout=5)


def test_ctrl_c_during_run_wait_cancels_it(oc0: Conductor) -> None:
    m = marker()
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        oc0.exec(f"sleep {m}", wait=True)
    assert time.monotonic() - started < 12
    run = oc0.runs(job="exec")[0]
    assert run.status == "cancelled"
    assert wait_until(lambda: not processes_with(m), timeout=5), processes_with(m)


def test_ctrl_c_interrupts_a_log_iterator(oc: Conductor) -> None:
    run = oc.exec(f"echo one; sleep {marker()}")
    lines = run.logs()
    assert next(lines).text == "one"
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        next(lines)
    lines.close()
    assert list(lines) == []
    run.cancel()
    assert run.wait(timeout=20) == "cancelled"


def test_one_conductor_many_threads(oc: Conductor) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> tuple:
        run = oc.exec(f"echo thread-{i}", wait=True)
        return run.status, [line.text for line in run.logs()]

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, range(16)))
    assert got == [("succeeded", [f"thread-{i}"]) for i in range(16)]


def test_runs_are_listed_and_found_by_prefix(oc: Conductor) -> None:
    a = oc.exec("echo a", wait=True)
    b = oc.exec("exit 1", wait=True)
    listed = oc.runs()
    assert [r.id for r in listed[:2]] == [b.id, a.id]
    assert [r.id for r in oc.runs(status=["failed"])] == [b.id]
    assert oc.get_run(a.id[:13]) == a
    assert hash(oc.get_run(a.id)) == hash(a)
    assert "job='exec'" in repr(a) or 'job="exec"' in repr(a)
