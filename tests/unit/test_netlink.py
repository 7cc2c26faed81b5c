"""ftlocust/netlink.py: message encoding, and every message checked against `ip -n NS ...`."""

import errno
import os
import secrets
import struct
import subprocess
import sys

import pytest

from ftlocust import netlink, netns
from tests.support.netns import needs_netns

RULES = [
    {"priority": 1000, "src": "10.250.0.2", "dst": "10.250.0.6", "action": "blackhole"},
    {"priority": 1001, "src": "10.250.0.6", "dst": "10.250.0.2", "action": "prohibit", "ip_proto": 6, "sport": 8000},
    {"priority": 1002, "src": "10.250.0.2", "dst": "10.250.0.6", "action": "blackhole", "ip_proto": 6, "dport": 8000},
]
IP_RULE_LINES = {
    "1000:\tfrom 10.250.0.2 to 10.250.0.6 blackhole proto 214",
    "1001:\tfrom 10.250.0.6 to 10.250.0.2 ipproto tcp sport 8000 prohibit proto 214",
    "1002:\tfrom 10.250.0.2 to 10.250.0.6 ipproto tcp dport 8000 blackhole proto 214",
}


def ip(*args):
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30).stdout


@pytest.fixture
def ns_name():
    """A fresh, empty network namespace (deleted at the end, whatever happens)."""
    name = f"ftl-u{secrets.token_hex(3)}-net"
    ip("netns", "add", name)
    try:
        yield name
    finally:
        netns.delete_namespaces([name])


def our_rule_lines(name):
    return {line.rstrip() for line in ip("-n", name, "rule", "show").splitlines() if "proto 214" in line}


def test_rule_round_trip_without_kernel():
    for rule in RULES:
        body = netlink.encode_rule(rule)
        decoded = netlink.decode_rule(body)
        assert decoded.pop("protocol") == netlink.RULE_PROTOCOL
        assert decoded == rule
    hdr = struct.unpack_from("=BBBBBBBBI", netlink.encode_rule(RULES[0]))
    assert hdr == (2, 32, 32, 0, 0, 0, 0, netlink.FR_ACT_BLACKHOLE, 0)


def test_attributes_are_aligned():
    raw = netlink._attr(netlink.FRA_PROTOCOL, b"\xd6") + netlink._attr(netlink.FRA_PRIORITY, struct.pack("=I", 7))
    assert len(raw) == 16
    assert netlink._attrs(raw) == {netlink.FRA_PROTOCOL: b"\xd6", netlink.FRA_PRIORITY: struct.pack("=I", 7)}


@needs_netns
def test_rules_added_listed_deleted_as_ip_shows_them(ns_name):
    root_rules_before = ip("rule", "show")
    with netlink.Netlink(ns_name) as nl:
        nl.add_rules(RULES)
        assert our_rule_lines(ns_name) == IP_RULE_LINES
        assert nl.dump_rules() == RULES
        assert ip("rule", "show") == root_rules_before  # the socket is in ns_name, not here
        with pytest.raises(OSError) as e:
            nl.add_rules(RULES[:1])
        assert e.value.errno == errno.EEXIST
        assert nl.delete_rules(RULES) == 3
        assert nl.delete_rules(RULES) == 0  # already gone: fine
        assert our_rule_lines(ns_name) == set()
        assert [r["priority"] for r in nl.dump_rules(protocol=None)] == [0, 32766, 32767]


@needs_netns
def test_a_failed_batch_leaves_nothing_behind(ns_name):
    with netlink.Netlink(ns_name) as nl:
        nl.add_rules([RULES[1]])
        with pytest.raises(OSError) as e:
            nl.add_rules([RULES[0], RULES[1], RULES[2]])  # the middle one exists
        assert e.value.errno == errno.EEXIST
        assert nl.dump_rules() == [RULES[1]]


@needs_netns
def test_run_in_netns_switches_back():
    here = os.stat("/proc/thread-self/ns/net").st_ino
    name = f"ftl-u{secrets.token_hex(3)}-net"
    ip("netns", "add", name)
    try:
        inside = netlink.run_in_netns(name, lambda: os.stat("/proc/thread-self/ns/net").st_ino)
        assert inside == os.stat(f"/run/netns/{name}").st_ino != here
        assert os.stat("/proc/thread-self/ns/net").st_ino == here
        with pytest.raises(ZeroDivisionError):
            netlink.run_in_netns(name, lambda: 1 / 0)
        assert os.stat("/proc/thread-self/ns/net").st_ino == here
    finally:
        netns.delete_namespaces([name])
    with pytest.raises(FileNotFoundError):
        netlink.run_in_netns(name, lambda: None)
    assert os.stat("/proc/thread-self/ns/net").st_ino == here


@needs_netns
def test_links_addresses_routes(ns_name):
    ip("-n", ns_name, "link", "add", "ftlua", "type", "veth", "peer", "name", "ftlub")
    with netlink.Netlink(ns_name) as nl:
        nl.set_link("ftlua", up=True)
        nl.set_link("ftlub", up=True)
        assert "UP" in ip("-n", ns_name, "-br", "link", "show", "ftlua").split()[1]
        nl.add_address("ftlua", "10.250.1.1", 30)
        nl.add_route("10.250.2.0", 24, "10.250.1.2", "ftlua")
        assert "10.250.1.1/30" in ip("-n", ns_name, "-br", "addr", "show", "ftlua")
        assert "10.250.2.0/24 via 10.250.1.2 dev ftlua proto 214" in ip("-n", ns_name, "route")
        assert ("10.250.2.0", 24) in nl.dump_route_prefixes()
        with pytest.raises(OSError) as e:
            nl.add_route("10.250.2.0", 24, "10.250.1.2", "ftlua")
        assert e.value.errno == errno.EEXIST
        nl.set_link("ftlua", up=False)
        assert "state DOWN" in ip("-n", ns_name, "link", "show", "ftlua")
        assert nl.delete_link("ftlua") is True
        assert nl.delete_link("ftlua") is False
        assert "ftlub" not in ip("-n", ns_name, "link")  # the peer went with it
        with pytest.raises(OSError) as e:
            nl.set_link("ftlua", up=True)
        assert e.value.errno == errno.ENODEV


@needs_netns
def test_delete_rules_from_another_process(ns_name):
    import json

    with netlink.Netlink(ns_name) as nl:
        nl.add_rules(RULES)
    code = "import json, sys; from ftlocust import netlink; print(netlink.delete_rules(sys.argv[1], json.loads(sys.argv[2])))"
    out = subprocess.run([sys.executable, "-c", code, ns_name, json.dumps(RULES)],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == "3"
    assert our_rule_lines(ns_name) == set()
    assert netlink.delete_rules("ftl-no-such-namespace", RULES) == 0
