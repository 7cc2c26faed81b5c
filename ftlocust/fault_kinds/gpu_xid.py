"""`gpu-xid`: an XID error line in a kernel log, as the NVIDIA driver writes one for a GPU fault.

    - {kind: gpu-xid, target: serving-worker, xid: 79, kernel_log: deployment, trigger: {mid_stream_chunks: 40}}
    - {kind: gpu-xid, target: gpu0, gpu: 0, xid: 48, trigger: {after_seconds: 30}}      # /dev/kmsg, this machine

What watches the log reacts: NVSentinel's syslog monitor cordons the node, Dynamo's engine
monitor shuts the worker down with exit 1, the reference worker (`kernel_log: true` on the
reference target) does what Dynamo's does. Nothing here is reversible: a line, once written,
stays written.

Fields:
- `xid`: the code, 1..1000 (the driver's range; the seed's API offers 43, 48, 74, 79, 94, 95,
  119, 120, each with its driver message; another code gets a generic one). Default 79.
- `message`: the text after the code (default: the code's message).
- The GPU, one of:
  - `target` a role of the deployment (or `serving-worker`): the GPU the deployment says that
    role runs on (`gpu_pci(role)`, the reference target's per-worker GPUs);
  - `gpu`: an index, UUID or PCI bus id, resolved through NVML on this machine (`target` is
    then the name on the timeline);
  - `pci`: a PCI bus id as given (no NVML needed: a GPU on another machine).
- `kernel_log`: where the line goes. `/dev/kmsg` (the default; root only) writes it as the
  seed's agent does (`<3>NVRM: NVRM: Xid (PCI:…): …`: kmsg takes the text before the first
  colon as the source, so the agent doubles it); `deployment` is the deployment's stand-in
  kernel log (`kernel_log_path()`); any other path is a file the line is appended to as the
  kernel log shows it (`NVRM: Xid (PCI:0000:19:00): 79, pid=<unknown>, name=<unknown>, …`).
- `agent`: write it from a privileged agent pod instead, over the API's exec (as the seed's
  `gpu-fault-injector-kernel` DaemonSet does): `{namespace, selector, node, container,
  kubeconfig, context}`; the agent pod on `node` (or the only one the selector matches) runs
  one `sh -c` that appends the line to `kernel_log` in its container.

Preflight resolves the GPU (for a role now; for `serving-worker` when the fault fires, from the
deployment: no I/O) and opens the kernel log for writing, so the fault is one write(2): no
process is started. A dry run opens nothing and prints the exact line and path.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from typing import Any, Protocol, runtime_checkable

from ftlocust.errors import ConfigError
from ftlocust.faults import SERVING_WORKER, Fault, FaultContext, register
from ftlocust.gpu import Nvml, pci_key, xid_pci
from ftlocust.phases import FaultEvent
from ftlocust.processes import is_process_target
from ftlocust.validation import at, error, mapping, number, string

log = logging.getLogger("ftlocust.faults")

KMSG = "/dev/kmsg"
DEPLOYMENT_LOG = "deployment"
FIELDS = ("xid", "message", "gpu", "pci", "kernel_log", "agent")
AGENT_FIELDS = ("namespace", "selector", "node", "container", "kubeconfig", "context")

# The driver's messages for the XIDs the seed's fault-injection API offers (its xid-types list).
XID_MESSAGES = {
    43: "Ch 00000008, intr 00000000. MMU Fault: ENGINE GRAPHICS GPCCLIENT_T1_0 faulted @ 0x0_00000000. "
        "Fault is of type FAULT_PDE ACCESS_TYPE_READ (Kernel Assert)",
    48: "An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition 0, "
        "subpartition 0.",
    74: "NVLink: fatal error detected on link 0(0x0, 0x0, 0x10000, 0x0, 0x0, 0x0, 0x0)",
    79: "GPU has fallen off the bus.",
    94: "Contained: SM (0x1). RST: No, D-RST: No (Contained ECC error)",
    95: "Uncontained: LTC TAG (0x2,0x0). RST: Yes, D-RST: No (Uncontained ECC error)",
    119: "Timeout after 6s of waiting for RPC response from GPU0 GSP! Expected function 76 (GSP_RM_CONTROL).",
    120: "GSP task exception: (task 3) (GSP RM Error)",
}


@runtime_checkable
class GpuDeployment(Protocol):
    """A deployment that knows which GPU each role runs on (the reference target)."""

    def gpu_pci(self, role: str) -> str | None: ...


@runtime_checkable
class KernelLogDeployment(Protocol):
    """A deployment with a stand-in kernel log its workers watch (the reference target's
    `kernel_log: true`)."""

    def kernel_log_path(self) -> str | None: ...


def xid_line(pci: str, xid: int, message: str, kmsg: bool) -> str:
    """The line, as the driver writes it to the kernel log (or as the seed's agent writes it to
    /dev/kmsg, with the level prefix and the doubled source)."""
    text = f"NVRM: Xid (PCI:{xid_pci(pci)}): {xid}, pid=<unknown>, name=<unknown>, {message}"
    return f"<3>NVRM: {text}\n" if kmsg else text + "\n"


@register
class GpuXidFault(Fault):
    kind = "gpu-xid"

    def validate(self) -> None:
        params = mapping(self.spec.params, self.where, FIELDS)
        self.xid = int(number(params.get("xid", 79), self.field("xid"), integer=True, minimum=1, maximum=1000))
        self.message = (string(params["message"], self.field("message")) if params.get("message") is not None
                        else XID_MESSAGES.get(self.xid, "GPU error (XID injected by ftlocust)"))
        self.gpu = params.get("gpu")
        self.pci: str | None = None
        if params.get("pci") is not None:
            self.pci = string(params["pci"], self.field("pci"))
            if pci_key(self.pci) is None:
                raise error(self.field("pci"), "a PCI bus id like 0000:3b:00.0", self.pci)
        if self.gpu is not None and self.pci is not None:
            raise ConfigError(f"{self.field('gpu')}: give gpu (resolved through NVML) or pci, not both")
        self.kernel_log = string(params.get("kernel_log", KMSG), self.field("kernel_log"))
        self.agent: dict | None = None
        if params.get("agent") is not None:
            self.agent = mapping(params["agent"], self.field("agent"), AGENT_FIELDS, required=("namespace", "selector"))
            if self.kernel_log == DEPLOYMENT_LOG:
                raise ConfigError(f"{self.field('kernel_log')}: 'deployment' is a local file; an agent writes "
                                  f"a path inside its container (default {KMSG})")
        self._fd: int | None = None
        self._path: str | None = None
        self._role: str | None = None
        self._agent_pod: Any = None
        self._kube: Any = None

    # -- which GPU -------------------------------------------------------------------------------

    def _by_role(self) -> bool:
        return self.gpu is None and self.pci is None

    def _role_pci(self, ctx: FaultContext, role: str, raises: type[Exception]) -> str:
        d = ctx.deployment
        pci = d.gpu_pci(role) if isinstance(d, GpuDeployment) else None
        if pci is None:
            raise raises(f"{self.field('target')}: the deployment does not say which GPU {role!r} runs on "
                         f"(give gpu: through NVML, or pci:)")
        return pci

    def preflight(self, ctx: FaultContext) -> None:
        target = self.spec.target
        if self._by_role():
            if is_process_target(target):
                raise ConfigError(f"{self.field('target')}: a process has no GPU to name; give gpu: or pci:")
            if ctx.deployment is None:
                raise ConfigError(f"{self.field('target')}: {target!r} names a role, but there is no deployment "
                                  f"(give gpu: or pci:)")
            if target == SERVING_WORKER:
                if self.spec.trigger.mid_stream_chunks is None:
                    raise ConfigError(f"{self.field('target')}: serving-worker needs trigger.mid_stream_chunks")
                if not isinstance(ctx.deployment, GpuDeployment):
                    self._role_pci(ctx, SERVING_WORKER, ConfigError)
            else:
                roles = ctx.deployment.roles()
                if target not in roles:
                    raise ConfigError(f"{self.field('target')}: expected one of {', '.join([*roles, SERVING_WORKER])}, "
                                      f"got {target!r}")
                self._role = target
                self.pci = self._role_pci(ctx, target, ConfigError)
        elif self.gpu is not None:
            with Nvml() as nvml:  # GpuUnavailable: one line naming what is missing
                self.pci = nvml.pci_bus_id(nvml.resolve(self.gpu, self.field("gpu")))
        if self.agent is not None:
            self._connect_agent(ctx)
        else:
            self._open_log(ctx)

    def _open_log(self, ctx: FaultContext) -> None:
        path = self.kernel_log
        if path == DEPLOYMENT_LOG:
            d = ctx.deployment
            path = d.kernel_log_path() if isinstance(d, KernelLogDeployment) else None
            if path is None:
                raise ConfigError(f"{self.field('kernel_log')}: the deployment has no stand-in kernel log "
                                  f"(the reference target's kernel_log: true)")
        self._path = path
        if ctx.dry_run:
            return
        kmsg = path == KMSG
        try:
            if kmsg:
                self._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            else:
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ConfigError(f"{self.field('kernel_log')}: {path} does not exist") from None
        except PermissionError:
            raise ConfigError(f"{self.field('kernel_log')}: no permission to write {path}"
                              f"{' (root only)' if kmsg else ''}") from None
        except OSError as e:
            raise ConfigError(f"{self.field('kernel_log')}: cannot open {path} for writing: {e.strerror}") from None

    def _is_kmsg(self) -> bool:
        if self.agent is not None:
            return self.kernel_log == KMSG
        if self._fd is not None:
            return stat.S_ISCHR(os.fstat(self._fd).st_mode)
        return self._path == KMSG

    def _connect_agent(self, ctx: FaultContext) -> None:
        from ftlocust.k8s.client import load, warm_up
        from ftlocust.k8s.selection import is_ready, select_pods

        a, here = self.agent, self.field("agent")
        self._kube = load(a.get("kubeconfig"), a.get("context"), where=at(here, "kubeconfig"))
        warm_up(self._kube, a["namespace"], at(here, "namespace"))
        pods = select_pods(self._kube, namespace=a["namespace"], selector=a["selector"], where=at(here, "selector"))
        on_node = [p for p in pods if a.get("node") is None or (p.spec is not None and p.spec.node_name == a["node"])]
        ready = [p for p in on_node if is_ready(p)]
        if len(ready) != 1:
            on = f" on node {a['node']!r}" if a.get("node") else ""
            names = ", ".join(p.metadata.name for p in on_node) or "none"
            raise ConfigError(f"{at(here, 'selector')}: expected exactly 1 Ready agent pod{on} for "
                              f"'{a['selector']}' in namespace {a['namespace']}, found {len(ready)} (pods: {names})")
        self._agent_pod = ready[0]

    # -- the verbs ---------------------------------------------------------------------------------

    def describe(self) -> str:
        if self.pci is not None:
            line = xid_line(self.pci, self.xid, self.message, self._is_kmsg()).rstrip("\n")
            gpu = f"GPU {xid_pci(self.pci)}" + (f" ({self._role})" if self._role else "")
        else:
            line = f"NVRM: Xid (PCI:<the GPU of the worker serving the probe>): {self.xid}, …, {self.message}"
            gpu = "the GPU of the worker serving the probe request (found when the fault fires)"
        if self.agent is not None:
            pod = self._agent_pod.metadata.name if self._agent_pod is not None else "the agent pod"
            where = f"{self.kernel_log} in {self.agent['namespace']}/{pod} (exec)"
        else:
            where = self._path or self.kernel_log
        return f"XID {self.xid} on {gpu} → {where}: {line!r}, {self.spec.trigger.describe()}"

    def inject(self, ctx: FaultContext) -> FaultEvent:
        role = self._role
        pci = self.pci
        if pci is None:  # serving-worker: the role is known now
            role = ctx.resolve_serving() if ctx.resolve_serving else None
            if role is None:
                raise RuntimeError("could not find the worker serving the probe request in the worker logs")
            pci = self._role_pci(ctx, role, RuntimeError)
        line = xid_line(pci, self.xid, self.message, self._is_kmsg())
        if self.agent is not None:
            self._write_from_agent(line)
        else:
            data = line.encode()
            if os.write(self._fd, data) != len(data):
                raise OSError(f"short write to {self._path}")
        injected_at = time.time()
        where = role or self.spec.target
        log.info("injected XID %d on %s (PCI:%s) into %s", self.xid, where, xid_pci(pci), self._path or self.kernel_log)
        self._role = role
        detail = {"xid": self.xid, "pci": xid_pci(pci), "line": line.rstrip("\n"),
                  "kernel_log": self._path or self.kernel_log}
        if self.agent is not None:
            detail["agent_pod"] = self._agent_pod.metadata.name
        self.event = FaultEvent(name=self.name, kind=self.kind, target=where, injected_at=injected_at, detail=detail)
        return self.event

    def _write_from_agent(self, line: str) -> None:
        from ftlocust.k8s.exec import append_line_command, run_in_pod

        pod = self._agent_pod.metadata
        code, _out, err = run_in_pod(self._kube, namespace=pod.namespace, pod=pod.name,
                                     container=self.agent.get("container"),
                                     argv=append_line_command(line.rstrip("\n"), self.kernel_log),
                                     where=self.field("agent"))
        if code != 0:
            raise RuntimeError(f"agent pod {pod.name}: writing to {self.kernel_log} failed (exit {code}): "
                               f"{err.strip()[:200]}")

    def affected_role(self) -> str | None:
        return self._role

    def recover(self, ctx: FaultContext) -> str | None:
        return None  # nothing to undo: a kernel log line stays written

    def close(self, ctx: FaultContext) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
