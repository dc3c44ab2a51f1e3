"""runner.workers: the threads that wait for tasks and read their output are kept and
reused, never waited for by a job, and survive a job's error."""

from __future__ import annotations

import logging
import threading

from runner.workers import Pool


def test_jobs_one_after_another_run_on_one_thread_kept_for_the_next():
    pool = Pool("test")
    threads = []
    for _ in range(50):
        job = pool.submit(lambda: threads.append(threading.get_ident()), "job")
        assert job.join(5)
    assert len(threads) == 50 and len(set(threads)) == 1
    assert pool.size == 1


def test_jobs_at_the_same_time_each_get_a_thread_and_never_wait_for_a_free_one():
    pool = Pool("test")
    count = 4
    arrived = threading.Barrier(count, timeout=5)  # passes only if all run at once
    jobs = [pool.submit(arrived.wait, f"job {i}") for i in range(count)]
    assert all(job.join(5) for job in jobs)
    assert pool.size == count
    # Done, they wait for more: the next four start no thread.
    arrived.reset()
    again = [pool.submit(arrived.wait, f"again {i}") for i in range(count)]
    assert all(job.join(5) for job in again)
    assert pool.size == count


def test_a_failing_job_is_logged_ends_and_leaves_its_thread_for_the_next(caplog):
    pool = Pool("test")
    caplog.set_level(logging.ERROR, logger="runner")

    def fail() -> None:
        raise RuntimeError("boom")

    assert pool.submit(fail, "failing job").join(5)
    assert "internal error in failing job: boom" in caplog.text
    done = threading.Event()
    assert pool.submit(done.set, "next").join(5) and done.is_set()
    assert pool.size == 1


def test_join_with_a_timeout_says_whether_the_job_ended():
    pool = Pool("test")
    go = threading.Event()
    job = pool.submit(lambda: go.wait(5), "waiting job")
    assert not job.join(0.05) and job.is_alive()
    go.set()
    assert job.join(5) and not job.is_alive()
