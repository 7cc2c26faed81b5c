"""Real network partitions between the roles of a local deployment, one network namespace each.

There is no `tc netem` or firewall here, so partitions are policy-routing rules in a *router*
namespace that forwards all traffic between roles (see ftlocust/netlink.py): a blackhole rule
drops forwarded packets silently (connects and established TCP streams stall, as in a real
partition), a prohibit rule answers with ICMP (fast errors). Blocking is one netlink message
on a socket opened in the router namespace at create() time: no process is spawned, so the
fault lands when it is asked for even on a busy box.

Topology of a lab with id ID (/24 chosen per lab, role i gets the /30 at offset 4*i):

    root namespace (client, i=0)        ftl-ID-net (router, ip_forward=1, rp_filter=0)
      ftlIDp0  .2/30  ----------veth----------  ftlIDr0  .1/30
      route 10.213.K.0/24 via .1                ftlIDr1  .5/30  ---veth---  ftlIDp1 .6/30  ftl-ID-frontend
                                                ftlIDr2  .9/30  ---veth---  ftlIDp2 .10/30 ftl-ID-worker-1

The root namespace gets one veth end, its address and one route, nothing else; deleting the
router namespace destroys every veth (and so that route). Creating uses one `ip -batch` run
(`ip netns add` does the /run/netns mount bookkeeping), everything else is netlink.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import ipaddress
import os
import re
import secrets
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from ftlocust import netlink
from ftlocust.errors import ConfigError

CLIENT = "client"
NETNS_DIR = netlink.NETNS_DIR
LOCK_PATH = "/run/ftlocust-netlab.lock"
CANDIDATE_PREFIXES = [f"10.{second}.{third}.0/24" for second in range(213, 221) for third in range(256)]
FIRST_PRIORITY = 1000
MODES = ("drop", "reject")
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21
MNT_DETACH = 2
_ROLE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_LAB_ID = re.compile(r"[a-z0-9]{1,8}")
_libc = ctypes.CDLL(None, use_errno=True)


def _effective_capabilities() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def _ip_binary() -> str | None:
    return shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def delete_namespaces(names: list[str]) -> list[str]:
    """Delete these named network namespaces (only ftl-* names), from any process, without
    spawning: what `ip netns delete` does (lazy-unmount /run/netns/NAME, then unlink it).
    The kernel frees a namespace once no process or socket is left in it. Returns those deleted."""
    deleted = []
    for name in names:
        if not name.startswith("ftl-") or "/" in name or name in (".", ".."):
            raise ConfigError(f"{name!r}: not a namespace name ftlocust makes (ftl-*)")
        path = os.path.join(NETNS_DIR, name)
        if _libc.umount2(path.encode(), MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
            e = ctypes.get_errno()
            raise OSError(e, f"umount {path}: {os.strerror(e)}")
        try:
            os.unlink(path)
            deleted.append(name)
        except FileNotFoundError:
            pass
    return deleted


@contextmanager
def _subnet_lock(timeout: float = 30.0):
    """Serialise choosing a subnet + adding its root route across processes (pytest-xdist)."""
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ConfigError(f"{LOCK_PATH}: still locked by another lab after {timeout:.0f}s") from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)


@dataclass
class Partition:
    """One injected partition; `rules` is plain data (netlink rule dicts) a guardian can undo."""

    a: str
    b: str
    port: int | None
    mode: str
    netns: str
    rules: list[dict] = field(default_factory=list)

    def describe(self) -> str:
        scope = f"tcp port {self.port} of {self.b}" if self.port else "all traffic"
        how = "silently dropped" if self.mode == "drop" else "rejected with ICMP"
        prios = ", ".join(str(r["priority"]) for r in self.rules)
        return f"{self.a} <-> {self.b}: {scope} {how} (rules {prios} in {self.netns})"

    def guardian_action(self) -> dict:
        return {"kind": "rules-delete", "netns": self.netns, "rules": self.rules}


class NetworkLab:
    """Namespaces for the given roles plus `client` (the root namespace, where the driver runs)."""

    def __init__(self, roles: list[str], lab_id: str | None = None):
        self.lab_id = lab_id or secrets.token_hex(3)
        if not _LAB_ID.fullmatch(self.lab_id):
            raise ConfigError(f"lab id {self.lab_id!r}: expected 1-8 characters a-z, 0-9")
        self.roles: list[str] = [CLIENT]
        for role in roles:
            if not _ROLE.fullmatch(role) or role == "net":
                raise ConfigError(f"{role!r}: a role name is a-z, 0-9 and '-' (up to 32), not 'net'")
            if role not in self.roles:
                self.roles.append(role)
        if len(self.roles) > 64:
            raise ConfigError(f"{len(self.roles)} roles: a lab holds at most 64 (one /30 each in a /24)")
        self.router = f"ftl-{self.lab_id}-net"
        self.namespace_names = [self.router] + [self._ns(r) for r in self.roles if r != CLIENT]
        self.subnet: ipaddress.IPv4Network | None = None
        self._nl: netlink.Netlink | None = None
        self._made = False
        self._next_priority = FIRST_PRIORITY

    # -- names ------------------------------------------------------------------------------------

    def _ns(self, role: str) -> str:
        return f"ftl-{self.lab_id}-{role}"

    def _index(self, role: str) -> int:
        try:
            return self.roles.index(role)
        except ValueError:
            others = [r for r in self.roles if r != CLIENT] + [CLIENT]
            raise ConfigError(f"{role}: expected one of {', '.join(others)}") from None

    def _router_link(self, role: str) -> str:
        return f"ftl{self.lab_id}r{self._index(role)}"

    def _peer_link(self, role: str) -> str:
        return f"ftl{self.lab_id}p{self._index(role)}"

    def _addresses(self, role: str) -> tuple[str, str]:
        """(role's address, router's address on the role's link)."""
        if self.subnet is None:
            raise ConfigError(f"network lab {self.lab_id}: not created yet")
        base = int(self.subnet.network_address) + 4 * self._index(role)
        return str(ipaddress.IPv4Address(base + 2)), str(ipaddress.IPv4Address(base + 1))

    def address(self, role: str) -> str:
        return self._addresses(role)[0]

    def netns(self, role: str) -> str | None:
        return None if self._index(role) == 0 else self._ns(role)

    def exec_prefix(self, role: str) -> list[str]:
        ns = self.netns(role)
        return [] if ns is None else [_ip_binary() or "ip", "netns", "exec", ns]

    @property
    def ready(self) -> bool:
        """Created (a subnet chosen): partitions can be planned (`partition` asks this)."""
        return self.subnet is not None

    # -- lifecycle --------------------------------------------------------------------------------

    @classmethod
    def preflight(cls) -> None:
        """Raise ConfigError (one line) when network namespaces cannot be made here."""
        caps = _effective_capabilities()
        missing = [name for bit, name in ((CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"))
                   if not caps >> bit & 1]
        if missing:
            raise ConfigError(f"network namespaces need root with {' and '.join(missing)} "
                              f"(CapEff is {caps:016x}; uid {os.geteuid()})")
        ip = _ip_binary()
        if ip is None:
            raise ConfigError("network namespaces need the `ip` command (iproute2): not found")
        where = NETNS_DIR if os.path.isdir(NETNS_DIR) else os.path.dirname(NETNS_DIR)
        if not os.access(where, os.W_OK):
            raise ConfigError(f"network namespaces: {where} is not writable")
        probe = f"ftl-probe{os.getpid()}-{secrets.token_hex(2)}"
        try:
            for argv in ([ip, "netns", "add", probe], [ip, "netns", "exec", probe, "true"]):
                p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
                if p.returncode != 0:
                    raise ConfigError(f"network namespaces: `ip {' '.join(argv[1:3])}` fails here: "
                                      f"{_last_line(p.stderr)}")
        finally:
            delete_namespaces([probe])

    def create(self) -> None:
        """Build the namespaces, links, addresses and routes; on failure undo it all, ConfigError."""
        if self._made:
            raise ConfigError(f"network lab {self.lab_id}: already created")
        ip = _ip_binary()
        if ip is None:
            raise ConfigError("network namespaces need the `ip` command (iproute2): not found")
        taken = [n for n in self.namespace_names if os.path.exists(os.path.join(NETNS_DIR, n))]
        if taken:
            raise ConfigError(f"network lab {self.lab_id}: namespace {taken[0]} already exists")
        self._made = True
        step = "ip -batch"
        try:
            lines = [f"netns add {name}" for name in self.namespace_names]
            for role in self.roles:
                r, p = self._router_link(role), self._peer_link(role)
                if role == CLIENT:
                    lines.append(f"link add {p} type veth peer name {r} netns {self.router}")
                else:
                    lines.append(f"link add {r} netns {self.router} type veth peer name {p} netns {self._ns(role)}")
            try:
                proc = subprocess.run([ip, "-batch", "-"], input="\n".join(lines) + "\n",
                                      capture_output=True, text=True, timeout=120)
            except subprocess.TimeoutExpired:
                raise ConfigError(f"network lab {self.lab_id}: ip -batch took over 120 s") from None
            if proc.returncode != 0:
                raise ConfigError(f"network lab {self.lab_id}: ip -batch failed: {_last_line(proc.stderr)}")
            step = "router sysctls"
            netlink.run_in_netns(self.router, self._router_sysctls)
            step = "choosing a subnet"
            with _subnet_lock():
                self.subnet = self._free_subnet()
                step = "addresses and routes"
                self._configure()
            self._nl = netlink.Netlink(self.router)
        except BaseException as e:
            self.destroy()
            self.subnet = None
            if isinstance(e, OSError):
                raise ConfigError(f"network lab {self.lab_id}: {step}: {e.strerror or e}") from None
            raise

    def _router_sysctls(self) -> None:
        """Runs inside the router namespace (so /proc/sys/net is its own): forward, no rp_filter.

        A new namespace copies the host's IPv4 conf/all and conf/default (rp_filter included), and
        the veths were made before this runs, so each gets rp_filter=0 too."""
        settings = {"ipv4/ip_forward": "1", "ipv4/conf/all/rp_filter": "0", "ipv4/conf/default/rp_filter": "0",
                    "ipv4/icmp_ratelimit": "0"}  # "reject": one ICMP error per refused packet
        settings.update({f"ipv4/conf/{self._router_link(r)}/rp_filter": "0" for r in self.roles})
        for key, value in settings.items():
            with open(f"/proc/sys/net/{key}", "w", encoding="ascii") as f:
                f.write(value)

    def _free_subnet(self) -> ipaddress.IPv4Network:
        with netlink.Netlink() as nl:
            used = [ipaddress.IPv4Network(f"{dst}/{length}", strict=False) for dst, length in nl.dump_route_prefixes()]
        for prefix in CANDIDATE_PREFIXES:
            net = ipaddress.IPv4Network(prefix)
            if not any(net.overlaps(u) for u in used):
                return net
        raise ConfigError(f"network lab {self.lab_id}: no free /24 in 10.213.0.0-10.220.255.0")

    def _configure(self) -> None:
        with netlink.Netlink(self.router) as nl:
            nl.set_link("lo", up=True)
            for role in self.roles:
                nl.add_address(self._router_link(role), self._addresses(role)[1], 30)
                nl.set_link(self._router_link(role), up=True)
        for role in self.roles[1:]:
            addr, gateway = self._addresses(role)
            with netlink.Netlink(self._ns(role)) as nl:
                nl.set_link("lo", up=True)
                nl.add_address(self._peer_link(role), addr, 30)
                nl.set_link(self._peer_link(role), up=True)
                nl.add_route("0.0.0.0", 0, gateway, self._peer_link(role))
        addr, gateway = self._addresses(CLIENT)
        with netlink.Netlink() as nl:
            nl.add_address(self._peer_link(CLIENT), addr, 30)
            nl.set_link(self._peer_link(CLIENT), up=True)
            nl.add_route(str(self.subnet.network_address), self.subnet.prefixlen, gateway, self._peer_link(CLIENT))

    def destroy(self) -> None:
        """Delete everything this lab made; idempotent, quiet about what is already gone."""
        if self._nl is not None:
            self._nl.close()  # the socket holds the router namespace alive
            self._nl = None
        if not self._made:
            return
        try:
            with netlink.Netlink() as nl:  # removes the root route now, not when the netns is freed
                nl.delete_link(self._peer_link(CLIENT))
        except OSError:
            pass
        delete_namespaces(self.namespace_names)

    def guardian_actions(self) -> list[dict]:
        return [{"kind": "netns-delete", "names": list(self.namespace_names)}]

    # -- partitions -------------------------------------------------------------------------------

    def _router_socket(self) -> netlink.Netlink:
        if self._nl is None:
            raise ConfigError(f"network lab {self.lab_id}: not created (or destroyed)")
        return self._nl

    def plan(self, a: str, b: str, *, port: int | None = None, mode: str = "drop") -> Partition:
        """The partition of a from b (both directions), nothing put in place yet: "drop"
        silently, "reject" with ICMP errors; with port, only TCP to b's port and its replies.
        Its rules are known before `apply`, so a guardian can hold their removal before they exist.

        (Setting a role's link down was tried and dropped: after the link comes back the peer's
        ARP entry waits for its next 1 s probe, so the first SYN is lost about one time in four.)"""
        if mode not in MODES:
            raise ConfigError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
        if b is None or a == b:
            raise ConfigError(f"block({a!r}, {b!r}): expected two different roles")
        if port is not None and not (isinstance(port, int) and 0 < port < 65536):
            raise ConfigError(f"port {port!r}: expected 1-65535")
        addr_a, addr_b = self.address(a), self.address(b)
        action = "blackhole" if mode == "drop" else "prohibit"
        both = [(addr_a, addr_b, {"dport": port}), (addr_b, addr_a, {"sport": port})]
        rules = []
        for src, dst, ports in both:
            rule = {"priority": self._next_priority, "src": src, "dst": dst, "action": action}
            if port is not None:
                rule.update(ip_proto=6, **ports)
            rules.append(rule)
            self._next_priority += 1
        return Partition(a, b, port, mode, self.router, rules)

    def apply(self, partition: Partition) -> None:
        """Put a planned partition in place: one netlink message, no process started."""
        nl = self._router_socket()
        if partition.netns != self.router:
            raise ConfigError(f"partition of {partition.netns}, not of this lab ({self.router})")
        nl.add_rules(partition.rules)

    def block(self, a: str, b: str, *, port: int | None = None, mode: str = "drop") -> Partition:
        """`plan` + `apply`."""
        self._router_socket()
        partition = self.plan(a, b, port=port, mode=mode)
        self.apply(partition)
        return partition

    def unblock(self, partition: Partition) -> None:
        """Remove exactly that partition's rules; fine if already removed or the lab is gone."""
        if partition.netns != self.router:
            raise ConfigError(f"partition of {partition.netns}, not of this lab ({self.router})")
        if self._nl is not None:
            self._nl.delete_rules(partition.rules)

    def rules(self) -> list[dict]:
        """The lab's partition rules now in the router namespace (netlink dump), by priority."""
        return [] if self._nl is None else self._nl.dump_rules()

    def describe(self) -> str:
        subnet = str(self.subnet) if self.subnet else "a free 10.213+.K.0/24 chosen at create"
        lines = [f"network lab {self.lab_id}: router namespace {self.router} forwards {subnet}; "
                 f"partitions are blackhole/prohibit rules there"]
        for role in self.roles:
            i = self._index(role)
            addr = self.address(role) if self.subnet else f"<subnet>.{4 * i + 2}"
            where = "root namespace" if i == 0 else self._ns(role)
            lines.append(f"  {role:<12} {where:<28} {addr:<15} {self._peer_link(role)} <-> "
                         f"{self._router_link(role)} (router)")
        return "\n".join(lines)

