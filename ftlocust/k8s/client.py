"""The API client: `load` it once (kubeconfig or in-cluster), `warm_up` before load starts,
and turn the client's exceptions into one line with `api_error`.

`Kube` holds two API clients: `core`/`networking` for plain calls and `exec_core` for exec.
`kubernetes.stream.stream` swaps the `call_api` of the client it is given for the duration of
the exec; under gevent another greenlet calling the same client meanwhile would go over the
WebSocket, so exec gets a client of its own.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

import kubernetes.client  # noqa: F401  (imported with a kind that needs it: a missing library is one line)

from ftlocust.errors import ConfigError

DEFAULT_KUBECONFIG = os.path.join("~", ".kube", "config")


class KubeError(RuntimeError):
    """An API call failed (at inject or recovery): one line naming the verb, resource and namespace."""


@dataclass
class Kube:
    core: Any  # kubernetes.client.CoreV1Api
    networking: Any  # kubernetes.client.NetworkingV1Api
    exec_core: Any  # a CoreV1Api on its own ApiClient, for exec (see the module docstring)
    kubeconfig: str | None  # the file loaded (None: in-cluster config)
    context: str | None
    host: str

    def stream_api(self) -> Any:
        """A CoreV1Api on a fresh ApiClient (same Configuration as `exec_core`), for one streaming
        call (exec or port-forward): `kubernetes.stream` swaps that client's `call_api` meanwhile,
        so concurrent streams must not share one."""
        from kubernetes import client

        return client.CoreV1Api(client.ApiClient(self.exec_core.api_client.configuration))

    def describe(self) -> str:
        source = f"kubeconfig {self.kubeconfig}" + (f" (context {self.context})" if self.context else "") \
            if self.kubeconfig else "in-cluster config"
        return f"{self.host} via {source}"


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def load(kubeconfig: str | None = None, context: str | None = None, where: str = "kubeconfig") -> Kube:
    """The client from `kubeconfig` (else $KUBECONFIG, else ~/.kube/config), else the in-cluster
    service account. ConfigError (one line) when there is none or it does not load."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    path = kubeconfig or os.environ.get("KUBECONFIG") or None
    if path is None and os.path.exists(os.path.expanduser(DEFAULT_KUBECONFIG)):
        path = os.path.expanduser(DEFAULT_KUBECONFIG)
    cfg = client.Configuration()
    try:
        if path is not None:
            first = path.split(os.pathsep)[0]
            if not os.path.exists(os.path.expanduser(first)):
                raise ConfigError(f"{where}: expected a kubeconfig file, got {path!r} (no such file)")
            config.load_kube_config(config_file=os.path.expanduser(first), context=context, client_configuration=cfg)
            path = os.path.abspath(os.path.expanduser(first))
        else:
            if context is not None:
                raise ConfigError(f"{where}: context {context!r} given, but no kubeconfig (KUBECONFIG unset, "
                                  f"no {DEFAULT_KUBECONFIG})")
            if not os.environ.get("KUBERNETES_SERVICE_HOST"):
                raise ConfigError(f"{where}: no kubeconfig (KUBECONFIG unset, no {DEFAULT_KUBECONFIG}) and not "
                                  f"running in a cluster (KUBERNETES_SERVICE_HOST unset)")
            config.load_incluster_config(client_configuration=cfg)
    except ConfigException as e:
        raise ConfigError(f"{where}: {_one_line(e)}") from None
    api = client.ApiClient(cfg)
    exec_api = client.ApiClient(cfg)
    return Kube(core=client.CoreV1Api(api), networking=client.NetworkingV1Api(api),
                exec_core=client.CoreV1Api(exec_api), kubeconfig=path, context=context, host=cfg.host)


def warm_up(kube: Kube, namespace: str, where: str) -> None:
    """One cheap namespaced call (list pods, limit 1): the client's first call imports, reads
    certificates and connects — seconds a gevent hub must not spend at injection. ConfigError."""
    try:
        kube.core.list_namespaced_pod(namespace, limit=1, _request_timeout=30)
        kube.exec_core.api_client.configuration  # noqa: B018 (built; its pool connects on first exec)
    except Exception as e:
        raise ConfigError(str(api_error(e, "list", "pods", namespace, where))) from None


_HANDSHAKE = re.compile(r"Handshake status (\d+)\s*([A-Za-z ]*)")


def _status_message(body: Any) -> str:
    try:
        data = json.loads(body)
        return _one_line(data.get("message") or "")
    except (TypeError, ValueError, AttributeError):
        return _one_line(body or "")[:200]


def api_error(e: BaseException, verb: str, resource: str, namespace: str, where: str) -> KubeError:
    """`e` (raised by a client call) as one line, a KubeError to raise (`raise api_error(...)`):

        403  <where>: forbidden: cannot <verb> <resource> in namespace <ns> (RBAC: the service account needs '<verb>' on '<resource>')
        404  <where>: not found: <verb> <resource> in namespace <ns> (<server message>)
        else <where>: <verb> <resource> in namespace <ns> failed: <status> <reason>: <message>

    An exec answers over a WebSocket; its HTTP status comes back as the client's status 0 with
    "Handshake status N" in the reason, and is read from there."""
    from kubernetes.client.exceptions import ApiException

    status, reason, message = None, "", ""
    if isinstance(e, ApiException):
        status, reason, message = e.status, _one_line(e.reason or ""), _status_message(e.body)
        if status == 0:
            m = _HANDSHAKE.search(e.reason or "")
            if m:
                status, reason = int(m.group(1)), m.group(2).strip()
                message = _status_message((e.reason or "").split("-+-+-")[-1]) if "-+-+-" in (e.reason or "") else ""
            else:
                status = None
                message = reason
    else:
        message = f"{type(e).__name__}: {_one_line(e)}"[:300]
    what = f"{verb} {resource} in namespace {namespace}"
    if status == 403:
        return KubeError(f"{where}: forbidden: cannot {what} (RBAC: the service account needs '{verb}' on "
                         f"'{resource}')")
    if status == 404:
        return KubeError(f"{where}: not found: {what}" + (f" ({message})" if message else ""))
    if status is None:
        return KubeError(f"{where}: {what} failed: {message}")
    return KubeError(f"{where}: {what} failed: {status} {reason}" + (f": {message}" if message else ""))
