"""A minimal rtnetlink client (struct + a raw socket, no dependency) for network partitions.

Why policy-routing rules: this box has no `tc netem` and no nftables/iptables, but every kernel
has FIB rules. Roles run in their own network namespaces and all traffic between them is
*forwarded* by one router namespace; a rule there with action FR_ACT_BLACKHOLE drops the
matching forwarded packets silently, so TCP connects and established streams stall exactly as
in a real partition (FR_ACT_PROHIBIT answers with ICMP instead: fast errors). Injecting or
lifting a partition is one netlink message on a socket opened at setup, not a fork/exec of
`ip`, so it lands within microseconds even on a busy box.

A netlink socket belongs to the network namespace it was created in, whatever namespace the
process moves to afterwards. `open_socket(netns)` briefly switches the calling *thread* into
the namespace (setns via ctypes: Python 3.11 has no os.setns), creates the socket and switches
back, without yielding to other greenlets in between.

Rules are plain dicts (JSON-able, so a guardian process can undo them from a file):
    {"priority": 1000, "src": "10.213.4.6", "dst": "10.213.4.10", "action": "blackhole",
     "ip_proto": 6, "dport": 8000}          # ip_proto/sport/dport optional
Rules added here carry FRA_PROTOCOL = RULE_PROTOCOL so `dump_rules` can tell them apart.
Constants are from include/uapi/linux/{netlink,rtnetlink,fib_rules,if_link,if_addr}.h.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import threading
from typing import Callable, TypeVar

T = TypeVar("T")

NETLINK_ROUTE = 0
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP, NLM_F_EXCL, NLM_F_CREATE = 0x300, 0x200, 0x400
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR = 20
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
IFF_UP = 0x1
IFLA_IFNAME = 3
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
RT_TABLE_MAIN, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 0, 1
FRA_DST, FRA_SRC, FRA_PRIORITY, FRA_TABLE = 1, 2, 6, 15
FRA_PROTOCOL, FRA_IP_PROTO, FRA_SPORT_RANGE, FRA_DPORT_RANGE = 21, 22, 23, 24
FR_ACT_BLACKHOLE, FR_ACT_UNREACHABLE, FR_ACT_PROHIBIT = 6, 7, 8
ACTIONS = {"blackhole": FR_ACT_BLACKHOLE, "unreachable": FR_ACT_UNREACHABLE, "prohibit": FR_ACT_PROHIBIT}
RULE_PROTOCOL = 214  # FRA_PROTOCOL / rtm_protocol of everything ftlocust adds ("proto 214")
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_FIB_RULE_HDR = struct.Struct("=BBBBBBBBI")  # family dst_len src_len tos table res1 res2 action flags
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family dst_len src_len tos table protocol scope type flags
_PORT_RANGE = struct.Struct("=HH")  # struct fib_rule_port_range, host order

_libc = ctypes.CDLL(None, use_errno=True)


def _attr(kind: int, data: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def _attrs(data: bytes) -> dict[int, bytes]:
    out, i = {}, 0
    while i + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, i)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[i + 4:i + length]
        i += (length + 3) & ~3
    return out


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


def run_in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Run fn() with the calling thread inside netns, then switch back. fn must not yield."""
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        there = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(there)
            try:
                return fn()
            finally:
                _setns(here)  # if this failed the thread would stay in netns: let it raise
        finally:
            os.close(there)
    finally:
        os.close(here)


def open_socket(netns: str | None = None) -> socket.socket:
    """A NETLINK_ROUTE socket bound to netns (a name under /run/netns; None: the current one)."""
    make = lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)  # noqa: E731
    return make() if netns is None else run_in_netns(netns, make)


class Netlink:
    """Requests on one NETLINK_ROUTE socket; kernel errors are raised as OSError(errno)."""

    def __init__(self, netns: str | None = None, timeout: float = 5.0):
        self.netns = netns
        self.sock = open_socket(netns)
        self.sock.settimeout(timeout)
        self._seq = 0
        self._lock = threading.Lock()  # one request at a time (greenlets share the socket)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def batch(self, messages: list[tuple[int, int, bytes]]) -> list[OSError | list[tuple[int, bytes]]]:
        """Send (type, flags, payload) messages in ONE datagram; per message: its replies or its error.

        Each message gets NLM_F_REQUEST|NLM_F_ACK (a dump ends with NLMSG_DONE instead)."""
        with self._lock:
            first = self._seq + 1
            wire = b""
            for kind, flags, payload in messages:
                self._seq += 1
                wire += _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), kind,
                                       flags | NLM_F_REQUEST | NLM_F_ACK, self._seq, 0) + payload
            results: dict[int, OSError | list] = {}
            replies: dict[int, list] = {seq: [] for seq in range(first, self._seq + 1)}
            self.sock.send(wire)
            while len(results) < len(messages):
                data = self.sock.recv(1 << 16)
                i = 0
                while i + _NLMSGHDR.size <= len(data):
                    length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, i)
                    body = data[i + _NLMSGHDR.size:i + length]
                    i += (length + 3) & ~3
                    if seq not in replies or seq in results:
                        continue  # a reply to an earlier, abandoned request
                    if kind == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", body)[0]
                        results[seq] = OSError(code, os.strerror(code)) if code else replies[seq]
                    elif kind == NLMSG_DONE:
                        code = -struct.unpack_from("=i", body)[0] if len(body) >= 4 else 0
                        results[seq] = OSError(code, os.strerror(code)) if code > 0 else replies[seq]
                    else:
                        replies[seq].append((kind, body))
            return [results[seq] for seq in range(first, self._seq + 1)]

    def request(self, kind: int, flags: int, payload: bytes) -> list[tuple[int, bytes]]:
        result = self.batch([(kind, flags, payload)])[0]
        if isinstance(result, OSError):
            raise result
        return result

    # -- rules --------------------------------------------------------------------------------

    def add_rules(self, rules: list[dict]) -> None:
        """Add all rules in one datagram; if any fails, remove the ones that went in and raise."""
        results = self.batch([(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, encode_rule(r)) for r in rules])
        errors = [r for r in results if isinstance(r, OSError)]
        if errors:
            self.delete_rules([rule for rule, res in zip(rules, results) if not isinstance(res, OSError)])
            raise errors[0]

    def delete_rules(self, rules: list[dict]) -> int:
        """Delete these rules; gone already is fine. Returns how many were still there."""
        if not rules:
            return 0
        results = self.batch([(RTM_DELRULE, 0, encode_rule(r)) for r in rules])
        for res in results:
            if isinstance(res, OSError) and res.errno not in (errno.ENOENT, errno.ESRCH):
                raise res
        return sum(not isinstance(res, OSError) for res in results)

    def dump_rules(self, protocol: int | None = RULE_PROTOCOL) -> list[dict]:
        """IPv4 rules of this namespace (only those with FRA_PROTOCOL == protocol unless None)."""
        out = []
        for kind, body in self.request(RTM_GETRULE, NLM_F_DUMP, _FIB_RULE_HDR.pack(socket.AF_INET, *[0] * 8)):
            if kind == RTM_NEWRULE:
                rule = decode_rule(body)
                if protocol is None or rule.get("protocol") == protocol:
                    rule.pop("protocol", None)
                    out.append(rule)
        return sorted(out, key=lambda r: r.get("priority", 0))

    # -- links, addresses, routes (setup) -------------------------------------------------------

    def set_link(self, name: str, up: bool) -> None:
        self.request(RTM_NEWLINK, 0, _IFINFOMSG.pack(0, 0, 0, IFF_UP if up else 0, IFF_UP)
                     + _attr(IFLA_IFNAME, name.encode() + b"\0"))

    def delete_link(self, name: str) -> bool:
        """Delete a link by name (a veth takes its peer with it); False when it did not exist."""
        try:
            self.request(RTM_DELLINK, 0, _IFINFOMSG.pack(0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, name.encode() + b"\0"))
        except OSError as e:
            if e.errno == errno.ENODEV:
                return False
            raise
        return True

    def link_index(self, name: str) -> int:
        for kind, body in self.request(RTM_GETLINK, 0, _IFINFOMSG.pack(0, 0, 0, 0, 0)
                                       + _attr(IFLA_IFNAME, name.encode() + b"\0")):
            if kind == RTM_NEWLINK:
                return _IFINFOMSG.unpack_from(body)[2]
        raise OSError(errno.ENODEV, f"no link {name}")

    def add_address(self, link: str, address: str, prefixlen: int) -> None:
        addr = socket.inet_aton(address)
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL,
                     _IFADDRMSG.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, self.link_index(link))
                     + _attr(IFA_LOCAL, addr) + _attr(IFA_ADDRESS, addr))

    def add_route(self, dst: str, dst_len: int, gateway: str, link: str) -> None:
        """A unicast route in the main table, marked with protocol RULE_PROTOCOL; EEXIST if taken."""
        payload = _RTMSG.pack(socket.AF_INET, dst_len, 0, 0, RT_TABLE_MAIN, RULE_PROTOCOL,
                              RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
        if dst_len:
            payload += _attr(RTA_DST, socket.inet_aton(dst))
        payload += _attr(RTA_GATEWAY, socket.inet_aton(gateway))
        payload += _attr(RTA_OIF, struct.pack("=i", self.link_index(link)))
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, payload)

    def dump_route_prefixes(self) -> list[tuple[str, int]]:
        """(destination, prefix length) of every IPv4 route in every table (local table too, so
        every address shows up as a /32); default routes excluded."""
        out = []
        for kind, body in self.request(RTM_GETROUTE, NLM_F_DUMP, _RTMSG.pack(socket.AF_INET, *[0] * 8)):
            dst_len = body[1]
            attrs = _attrs(body[_RTMSG.size:])
            if kind == RTM_NEWROUTE and dst_len and RTA_DST in attrs:
                out.append((socket.inet_ntoa(attrs[RTA_DST]), dst_len))
        return out


def encode_rule(rule: dict) -> bytes:
    """fib_rule_hdr + attributes for one rule dict (see the module docstring)."""
    hdr = _FIB_RULE_HDR.pack(socket.AF_INET, 32 if "dst" in rule else 0, 32 if "src" in rule else 0,
                             0, 0, 0, 0, ACTIONS[rule["action"]], 0)
    out = hdr + _attr(FRA_PRIORITY, struct.pack("=I", rule["priority"]))
    out += _attr(FRA_PROTOCOL, bytes([RULE_PROTOCOL]))
    if "src" in rule:
        out += _attr(FRA_SRC, socket.inet_aton(rule["src"]))
    if "dst" in rule:
        out += _attr(FRA_DST, socket.inet_aton(rule["dst"]))
    if "ip_proto" in rule:
        out += _attr(FRA_IP_PROTO, bytes([rule["ip_proto"]]))
    if "sport" in rule:
        out += _attr(FRA_SPORT_RANGE, _PORT_RANGE.pack(rule["sport"], rule["sport"]))
    if "dport" in rule:
        out += _attr(FRA_DPORT_RANGE, _PORT_RANGE.pack(rule["dport"], rule["dport"]))
    return out


def decode_rule(body: bytes) -> dict:
    """The inverse of encode_rule for a dumped rule (plus "protocol"; other actions by number)."""
    _family, dst_len, src_len, _tos, _table, _r1, _r2, action, _flags = _FIB_RULE_HDR.unpack_from(body)
    attrs = _attrs(body[_FIB_RULE_HDR.size:])
    names = {v: k for k, v in ACTIONS.items()}
    rule: dict = {"priority": struct.unpack("=I", attrs[FRA_PRIORITY])[0] if FRA_PRIORITY in attrs else 0}
    if FRA_SRC in attrs:
        rule["src"] = socket.inet_ntoa(attrs[FRA_SRC]) + ("" if src_len == 32 else f"/{src_len}")
    if FRA_DST in attrs:
        rule["dst"] = socket.inet_ntoa(attrs[FRA_DST]) + ("" if dst_len == 32 else f"/{dst_len}")
    rule["action"] = names.get(action, action)
    if FRA_IP_PROTO in attrs:
        rule["ip_proto"] = attrs[FRA_IP_PROTO][0]
    for key, kind in (("sport", FRA_SPORT_RANGE), ("dport", FRA_DPORT_RANGE)):
        if kind in attrs:
            start, end = _PORT_RANGE.unpack(attrs[kind])
            rule[key] = start if start == end else [start, end]
    if FRA_TABLE in attrs and struct.unpack("=I", attrs[FRA_TABLE])[0]:
        rule["table"] = struct.unpack("=I", attrs[FRA_TABLE])[0]
    if FRA_PROTOCOL in attrs:
        rule["protocol"] = attrs[FRA_PROTOCOL][0]
    return rule


def delete_rules(netns: str, rules: list[dict]) -> int:
    """From any process: undo these rules in the namespace named netns.

    Returns how many were still there; a namespace already gone counts as nothing to do."""
    try:
        nl = Netlink(netns)
    except FileNotFoundError:
        return 0
    with nl:
        return nl.delete_rules(rules)
