import os

import pytest

from docrerank.core.isolate import ChildCrashed, ChildTimeout, IsolatedWorker, RemoteError


@pytest.fixture
def worker():
    w = IsolatedWorker(memory_limit_mb=1024)
    yield w
    w.close()


def test_calls_return_values_and_reuse_the_child(worker):
    pid = worker.call("os:getpid")
    assert pid != os.getpid() and worker.call("os:getpid") == pid
    assert worker.call("math:hypot", 3.0, 4.0) == 5.0


def test_crash_is_reported_and_the_next_call_gets_a_fresh_child(worker):
    pid = worker.call("os:getpid")
    with pytest.raises(ChildCrashed, match="signal 9"):
        worker.call("os:kill", pid, 9)
    assert worker.call("os:getpid") != pid and worker.restarts == 1


def test_timeout_kills_the_child(worker):
    with pytest.raises(ChildTimeout):
        worker.call("time:sleep", 30, timeout=0.5)
    assert worker.call("math:sqrt", 4.0) == 2.0


def test_memory_limit_turns_a_bomb_into_an_error(worker):
    with pytest.raises(RemoteError) as e:
        worker.call("builtins:bytearray", 4 * 2**30)
    assert e.value.exc_type == "MemoryError"


def test_exceptions_keep_their_type(worker):
    with pytest.raises(RemoteError) as e:
        worker.call("json:loads", "{")
    assert e.value.exc_type == "JSONDecodeError"


def test_a_new_childs_warm_up_does_not_count_against_the_call_timeout():
    w = IsolatedWorker(memory_limit_mb=1024, warmup=("time:sleep", (1.0,)))
    try:
        pid = w.call("os:getpid", timeout=0.5)  # started and warmed up (1 s) first, then 0.5 s for the call
        with pytest.raises(ChildCrashed):
            w.call("os:kill", pid, 9)
        assert w.call("os:getpid", timeout=0.5) != pid  # the fresh child warmed up again, outside the timeout
    finally:
        w.close()
