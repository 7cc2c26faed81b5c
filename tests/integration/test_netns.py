"""ftlocust/netns.py on real network namespaces: reachability, partitions, teardown.

Servers run in role namespaces (started with exec_prefix, ended by PID); client sockets of a
role are created inside its namespace by this process (a socket stays in the namespace it was
made in), so no process is needed to connect "from" a role.
"""

import concurrent.futures
import json
import os
import select
import socket
import subprocess
import sys
import time

import pytest

from ftlocust import netlink, netns
from ftlocust.errors import ConfigError
from ftlocust.netns import NetworkLab
from tests.support.netns import needs_netns

pytestmark = pytest.mark.integration

ROLES = ["frontend", "worker-1", "worker-2"]
PORT, OTHER_PORT = 18080, 18081
TIMEOUT_S = 1.0  # a connect across a dropped partition must time out
ECHO_SERVER = r"""
import socket, sys, threading
def serve(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
def accept(listener):
    while True:
        threading.Thread(target=serve, args=(listener.accept()[0],), daemon=True).start()
for port in sys.argv[2:]:
    threading.Thread(target=accept, args=(socket.create_server((sys.argv[1], int(port))),), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


def ip(*args):
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30).stdout


@pytest.fixture
def make_lab():
    labs = []

    def make(roles=ROLES, create=True):
        lab = NetworkLab(roles)
        labs.append(lab)
        if create:
            lab.create()
        return lab

    yield make
    for lab in labs:
        lab.destroy()


@pytest.fixture
def lab(make_lab):
    return make_lab()


@pytest.fixture
def serve():
    """Start an echo server in a role's namespace; every one is killed by PID at the end."""
    procs = []

    def start(lab, role, ports=(PORT,)):
        p = subprocess.Popen(lab.exec_prefix(role) + [sys.executable, "-c", ECHO_SERVER, lab.address(role),
                                                       *map(str, ports)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(p)
        ready, _, _ = select.select([p.stdout], [], [], 30)
        assert ready and p.stdout.readline().strip() == "ready", "echo server did not start in 30 s"
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
        p.stdin.close()
        p.stdout.close()


def connect(lab, src, dst, port=PORT, timeout=TIMEOUT_S):
    """A TCP connection made from role src's namespace to role dst."""
    make = lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # noqa: E731
    ns = lab.netns(src)
    s = make() if ns is None else netlink.run_in_netns(ns, make)
    s.settimeout(timeout)
    try:
        s.connect((lab.address(dst), port))
    except BaseException:
        s.close()
        raise
    return s


def echoes(lab, src, dst, port=PORT):
    with connect(lab, src, dst, port) as s:
        s.sendall(b"ping")
        return s.recv(4) == b"ping"


def times_out(lab, src, dst, port=PORT):
    start = time.monotonic()
    try:
        connect(lab, src, dst, port).close()
    except TimeoutError:
        return time.monotonic() - start >= TIMEOUT_S * 0.9
    return False


def ip_rule_lines(lab):
    return {line.strip() for line in ip("-n", lab.router, "rule", "show").splitlines() if "proto 214" in line}


def expected_lines(partition):
    out = set()
    for r in partition.rules:
        ports = "".join(f" {k} {r[k]}" for k in ("sport", "dport") if k in r)
        proto = " ipproto tcp" if "ip_proto" in r else ""
        out.add(f"{r['priority']}:\tfrom {r['src']} to {r['dst']}{proto}{ports} {r['action']} proto 214")
    return out


# -- without namespaces ------------------------------------------------------------------------


def test_unknown_role_is_one_line():
    lab = NetworkLab(ROLES, lab_id="t0")
    with pytest.raises(ConfigError, match=r"^db: expected one of frontend, worker-1, worker-2, client$"):
        lab.netns("db")
    assert lab.namespace_names == ["ftl-t0-net", "ftl-t0-frontend", "ftl-t0-worker-1", "ftl-t0-worker-2"]
    assert lab.guardian_actions() == [{"kind": "netns-delete", "names": lab.namespace_names}]
    assert lab.exec_prefix("client") == [] and lab.netns("client") is None
    assert lab.exec_prefix("frontend")[1:] == ["netns", "exec", "ftl-t0-frontend"]
    assert "ftl-t0-worker-2" in lab.describe() and lab.rules() == []
    lab.destroy()  # nothing made: nothing to do


def test_preflight_without_capabilities(monkeypatch):
    monkeypatch.setattr(netns, "_effective_capabilities", lambda: 0)
    with pytest.raises(ConfigError) as e:
        NetworkLab.preflight()
    assert "CAP_NET_ADMIN" in str(e.value) and "\n" not in str(e.value)


def test_preflight_without_ip(monkeypatch):
    monkeypatch.setattr(netns, "_effective_capabilities", lambda: (1 << 41) - 1)
    monkeypatch.setattr(netns, "_ip_binary", lambda: None)
    with pytest.raises(ConfigError, match=r"`ip` command"):
        NetworkLab.preflight()


# -- real namespaces ----------------------------------------------------------------------------


@needs_netns
def test_preflight_passes_here():
    NetworkLab.preflight()
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"ftl-probe{os.getpid()}-")]


@needs_netns
def test_roles_reach_each_other_and_the_client(make_lab, serve):
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        host_forwarding = f.read().strip()
    lab = make_lab()
    server = serve(lab, "frontend")
    # `ip netns exec` execs: the PID is the program's, and it is in the role's namespace
    with open(f"/proc/{server.pid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[0] == sys.executable.encode()
    assert os.stat(f"/proc/{server.pid}/ns/net").st_ino == os.stat(f"/run/netns/{lab.netns('frontend')}").st_ino
    assert echoes(lab, "worker-1", "frontend")
    assert echoes(lab, "client", "frontend")
    with socket.create_server((lab.address("client"), 0)) as listener:  # a role reaches the driver
        listener.settimeout(5)
        with connect(lab, "worker-2", "client", listener.getsockname()[1]):
            conn, (peer, _) = listener.accept()
            conn.close()
        assert peer == lab.address("worker-2")
    router_sysctls = ip("netns", "exec", lab.router, "sysctl", "-n", "net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter",
                        f"net.ipv4.conf.ftl{lab.lab_id}r1.rp_filter", "net.ipv4.icmp_ratelimit")
    assert router_sysctls.split() == ["1", "0", "0", "0"]
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        assert f.read().strip() == host_forwarding  # the host's own: untouched
    assert f"{lab.subnet} via {lab._addresses('client')[1]} dev ftl{lab.lab_id}p0 proto 214" in ip("route")
    assert lab.rules() == []


@needs_netns
def test_drop_partition_times_out_and_heals(lab, serve):
    serve(lab, "frontend")
    start = time.perf_counter()
    part = lab.block("worker-1", "frontend")
    assert time.perf_counter() - start < 0.05  # one netlink datagram, no process
    assert lab.rules() == part.rules
    assert ip_rule_lines(lab) == expected_lines(part)
    assert {r["action"] for r in part.rules} == {"blackhole"}
    assert json.loads(json.dumps(part.guardian_action()))["rules"] == part.rules
    assert "worker-1 <-> frontend" in part.describe()
    assert times_out(lab, "worker-1", "frontend")
    assert echoes(lab, "client", "frontend")
    assert echoes(lab, "worker-2", "frontend")
    lab.unblock(part)
    assert lab.rules() == [] and ip_rule_lines(lab) == set()
    assert echoes(lab, "worker-1", "frontend")
    lab.unblock(part)  # idempotent


@needs_netns
def test_established_stream_stalls_then_resumes(lab, serve):
    serve(lab, "frontend")
    with connect(lab, "worker-1", "frontend") as s:
        s.sendall(b"one")
        assert s.recv(3) == b"one"
        part = lab.block("worker-1", "frontend")
        s.sendall(b"two")  # accepted into the send buffer, never delivered
        s.settimeout(1.5)
        with pytest.raises(TimeoutError):
            s.recv(3)
        lab.unblock(part)
        s.settimeout(15)  # the next retransmission (exponential backoff) gets through
        assert s.recv(3) == b"two"


@needs_netns
def test_reject_partition_fails_fast(lab, serve):
    serve(lab, "frontend")
    part = lab.block("worker-1", "frontend", mode="reject")
    assert ip_rule_lines(lab) == expected_lines(part)
    assert {r["action"] for r in part.rules} == {"prohibit"}
    start = time.monotonic()
    with pytest.raises(OSError) as e:
        connect(lab, "worker-1", "frontend", timeout=5)
    assert not isinstance(e.value, TimeoutError)
    assert time.monotonic() - start < 0.5
    assert echoes(lab, "client", "frontend")
    lab.unblock(part)
    assert echoes(lab, "worker-1", "frontend")


@needs_netns
def test_port_scoped_partition_cuts_only_that_port(lab, serve):
    serve(lab, "frontend", ports=(PORT, OTHER_PORT))
    part = lab.block("worker-1", "frontend", port=PORT)
    assert [(r.get("dport"), r.get("sport"), r["ip_proto"]) for r in part.rules] == [(PORT, None, 6), (None, PORT, 6)]
    assert lab.rules() == part.rules
    assert ip_rule_lines(lab) == expected_lines(part)
    assert times_out(lab, "worker-1", "frontend", PORT)
    assert echoes(lab, "worker-1", "frontend", OTHER_PORT)
    assert echoes(lab, "worker-2", "frontend", PORT)
    lab.unblock(part)
    assert echoes(lab, "worker-1", "frontend", PORT)


@needs_netns
def test_partitions_are_listed_exactly(lab):
    one = lab.block("worker-1", "frontend")
    two = lab.block("worker-2", "frontend", port=PORT, mode="reject")
    priorities = [r["priority"] for r in one.rules + two.rules]
    assert len(set(priorities)) == 4
    assert lab.rules() == one.rules + two.rules
    lab.unblock(one)
    assert lab.rules() == two.rules
    lab.unblock(two)
    lab.unblock(one)
    assert lab.rules() == []
    with pytest.raises(ConfigError):
        lab.block("worker-1", "worker-1")
    with pytest.raises(ConfigError, match="expected one of"):
        lab.block("worker-1", "db")


@needs_netns
def test_a_guardian_process_undoes_a_partition(lab, serve):
    serve(lab, "frontend")
    part = lab.block("worker-1", "frontend")
    code = ("import json, sys; from ftlocust.guardian import run_action;"
            " print([run_action(a) for a in json.loads(sys.argv[1])])")
    subprocess.run([sys.executable, "-c", code, json.dumps([part.guardian_action()])], check=True, timeout=60)
    assert lab.rules() == []
    assert echoes(lab, "worker-1", "frontend")


@needs_netns
def test_destroy_removes_everything(lab):
    names, subnet = lab.namespace_names, str(lab.subnet)
    assert set(names) <= set(n.split()[0] for n in ip("netns", "list").splitlines())
    lab.destroy()
    listed = {n.split()[0] for n in ip("netns", "list").splitlines()}
    assert not listed & set(names)
    assert subnet not in ip("route") and f"ftl{lab.lab_id}" not in ip("link")
    lab.destroy()  # idempotent
    assert lab.rules() == []


@needs_netns
def test_delete_namespaces_from_another_process(lab):
    code = ("import json, sys; from ftlocust.netns import delete_namespaces;"
            " print(json.dumps(delete_namespaces(json.loads(sys.argv[1]))))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(lab.guardian_actions()[0]["names"])],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    assert sorted(json.loads(out)) == sorted(lab.namespace_names)
    assert not {n.split()[0] for n in ip("netns", "list").splitlines()} & set(lab.namespace_names)
    lab.destroy()  # closes the router socket (it kept the router namespace alive) and the root link
    deadline = time.monotonic() + 10
    while str(lab.subnet) in ip("route") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert str(lab.subnet) not in ip("route")


@needs_netns
def test_two_labs_at_once_get_different_subnets(make_lab, serve):
    labs = [make_lab(["frontend"], create=False) for _ in range(2)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(NetworkLab.create, labs))
    assert not labs[0].subnet.overlaps(labs[1].subnet)
    for one in labs:
        serve(one, "frontend")
        assert echoes(one, "client", "frontend")


@needs_netns
def test_failed_create_tears_down(make_lab, monkeypatch):
    monkeypatch.setattr(netns, "CANDIDATE_PREFIXES", [])
    lab = make_lab(create=False)
    with pytest.raises(ConfigError, match="no free /24") as e:
        lab.create()
    assert "\n" not in str(e.value)
    assert not {n.split()[0] for n in ip("netns", "list").splitlines()} & set(lab.namespace_names)
    assert f"ftl{lab.lab_id}" not in ip("link")
