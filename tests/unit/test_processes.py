"""descendants_named against real process trees this test starts (read from /proc)."""

import os
import signal
import time

from ftlocust.processes import descendants_named, process_identity
from tests.support.process_tree import tree  # noqa: F401  (fixture)


def test_children_named_by_argv0_are_found_by_identity(tree):
    t = tree("VLLM::EngineCore", "other", "VLLM::EngineCore")
    found = descendants_named(t.pid, "VLLM::EngineCore")
    assert [r.pid for r in found] == sorted([t.children[0], t.children[2]])
    for ref in found:
        assert (ref.cmdline, ref.start_ticks) == process_identity(ref.pid)
        assert ref.cmdline.startswith("VLLM::EngineCore -c ")
    assert [r.pid for r in descendants_named(t.pid, "other")] == [t.children[1]]
    # exact names only: neither a prefix nor the comm cut of this argv[0] (which is python's)
    assert descendants_named(t.pid, "VLLM::Engine") == []
    assert descendants_named(t.pid, "VLLM::EngineCor") == []
    assert descendants_named(t.pid, "VLLM::EngineCoreX") == []


def test_grandchildren_are_found_and_the_pid_itself_is_not(tree):
    t = tree("sglang::scheduler>VLLM::EngineCore")
    (middle,) = t.children
    (leaf,) = t.grandchildren
    assert [r.pid for r in descendants_named(t.pid, "VLLM::EngineCore")] == [leaf]
    assert [r.pid for r in descendants_named(t.pid, "sglang::scheduler")] == [middle]
    assert descendants_named(middle, "sglang::scheduler") == []  # the pid itself is not its descendant
    assert [r.pid for r in descendants_named(middle, "VLLM::EngineCore")] == [leaf]


def test_a_same_named_process_elsewhere_is_not_matched(tree):
    mine, other = tree("VLLM::EngineCore"), tree("VLLM::EngineCore")
    assert [r.pid for r in descendants_named(mine.pid, "VLLM::EngineCore")] == mine.children
    assert [r.pid for r in descendants_named(other.pid, "VLLM::EngineCore")] == other.children
    assert descendants_named(mine.children[0], "VLLM::EngineCore") == []


def test_comm_is_cut_to_15_characters_and_matches_the_full_name(tree):
    """A process renamed with prctl(PR_SET_NAME) only (argv is python's): comm holds 15
    characters, so a longer name matches on its first 15, like vLLM's `VLLM::EngineCor`."""
    t = tree("comm:VLLM::EngineCore", "comm:short-name")
    long_one, short_one = t.children
    with open(f"/proc/{long_one}/comm") as f:
        assert f.read().strip() == "VLLM::EngineCor"
    assert [r.pid for r in descendants_named(t.pid, "VLLM::EngineCore")] == [long_one]
    assert [r.pid for r in descendants_named(t.pid, "VLLM::EngineCor")] == [long_one]  # what comm says
    assert [r.pid for r in descendants_named(t.pid, "short-name")] == [short_one]
    assert descendants_named(t.pid, "short-nam") == []


def test_a_longer_argv0_is_the_name_even_when_comm_is_its_cut(tree):
    """`VLLM::EngineCore_DP0` (vLLM with data parallelism) has comm `VLLM::EngineCor` too: it is
    not `VLLM::EngineCore`."""
    t = tree("both:VLLM::EngineCore_DP0")  # as setproctitle leaves it
    (pid,) = t.children
    with open(f"/proc/{pid}/comm") as f:
        assert f.read().strip() == "VLLM::EngineCor"
    assert descendants_named(t.pid, "VLLM::EngineCore") == []
    assert [r.pid for r in descendants_named(t.pid, "VLLM::EngineCore_DP0")] == [pid]


def test_a_process_named_like_vllms_engine_core_matches_both_ways(tree):
    t = tree("both:VLLM::EngineCore")
    assert [r.pid for r in descendants_named(t.pid, "VLLM::EngineCore")] == t.children


def test_zombies_are_excluded(tree):
    t = tree("VLLM::EngineCore")
    (pid,) = t.children
    os.kill(pid, signal.SIGKILL)  # its parent (the tree) never waits for it: a zombie
    deadline = time.time() + 10
    while process_identity(pid) is not None and time.time() < deadline:
        time.sleep(0.01)
    with open(f"/proc/{pid}/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[0] == "Z"
    assert descendants_named(t.pid, "VLLM::EngineCore") == []


def test_no_such_pid_has_no_descendants():
    assert descendants_named(999999999, "VLLM::EngineCore") == []
