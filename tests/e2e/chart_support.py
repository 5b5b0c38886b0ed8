"""Helpers for test_chart_e2e.py: the Helm chart installed by real Helm into the e2e control
plane, and the webhook run exactly as the chart's Deployment runs it, with its ServiceAccount.

How the API server reaches a process on this machine
----------------------------------------------------
The chart's MutatingWebhookConfiguration names the webhook by ``clientConfig.service``
(``<svc>.<ns>``, port 443). kube-apiserver (without ``--enable-aggregator-routing``)
resolves that reference to the Service's **ClusterIP** and dials ``<clusterIP>:<port>``,
checking the certificate against the caBundle for the name ``<svc>.<ns>.svc``. There is
no kube-proxy here, so the control plane for these tests allocates ClusterIPs from a
*loopback* range (``ControlPlane(service_cluster_ip_range=loopback_service_range())``):
every 127.0.0.0/8 address is local on Linux, the webhook process listens on
``<clusterIP>:443`` itself, and the traffic never leaves the machine. (Endpoints cannot
help: the API server rejects loopback Endpoints addresses.)

What is *not* the chart as shipped
----------------------------------
- ``Chart.yaml`` says ``kubeVersion: >=1.25.0-0``; the harness runs kube-apiserver 1.20,
  so Helm would refuse it. :func:`chart_copy` installs a copy whose only change is that
  constraint (the templates, values and schema are the real ones).
- Features the chart relies on that 1.20 lacks are kept out of the way by values or
  emulated: ``replicaCount: 1`` + ``podDisruptionBudget.enabled: false`` (no policy/v1
  PodDisruptionBudget before 1.21), and namespaces are labelled
  ``kubernetes.io/metadata.name=<name>`` by hand, as 1.21+ does by itself (the webhook's
  namespaceSelector excludes the release namespace through that label).
- :class:`DeploymentProcess` runs the container args of the *installed* Deployment with a
  handful of overrides, each for a reason listed there.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.builders import wait_for
from tests.processes import Spawned

from .controlplane import KEEP, ControlPlane, KubeAssets, write_kubeconfig
from .process import REPO, ServeProcess, serve_env

CHART = REPO / "charts" / "pullsecret-injector"
#: Set by Kubernetes >= 1.21 on every namespace; emulated here (the chart's namespaceSelector uses it).
METADATA_NAME_LABEL = "kubernetes.io/metadata.name"
#: The ``kubeVersion`` the chart copy declares so Helm accepts the 1.20 apiserver of the harness.
HARNESS_KUBE_VERSION = ">=1.20.0-0"


class ChartE2EError(RuntimeError):
    """Something in the chart set-up failed (the message carries the relevant log tail)."""


# --------------------------------------------------------------------------- network


def loopback_service_range() -> str:
    """A random ``127.X.Y.0/24`` (X in 64..254): ClusterIPs that are local addresses.

    Random so that concurrent test sessions on this machine (each with its own control
    plane) practically never hand out the same ClusterIP, which the webhook binds with port 443.
    """
    rng = secrets.SystemRandom()
    return f"127.{rng.randint(64, 254)}.{rng.randint(0, 255)}.0/24"


def is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


def can_bind(host: str, port: int) -> str | None:
    """None if ``host:port`` can be bound right now, else why not."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return f"cannot bind {host}:{port}: {exc.strerror}"
    return None


@contextlib.contextmanager
def loopback_control_plane(assets: KubeAssets) -> Iterator[ControlPlane]:
    """A control plane of a module's own whose Service ClusterIPs are loopback addresses (see above).

    The webhook then listens on ``<ClusterIP>:443`` itself, the Service port the API server dials:
    without root (or CAP_NET_BIND_SERVICE) the module is skipped.
    """
    problem = can_bind("127.0.0.1", 443) if os.geteuid() != 0 else None
    if problem is not None:
        pytest.skip(f"needs to listen on port 443 (root or CAP_NET_BIND_SERVICE): {problem}")
    with ControlPlane(assets, service_cluster_ip_range=loopback_service_range(), keep_workdir=KEEP) as cp:
        yield cp


def namespace_body(name: str, **labels: str) -> dict[str, Any]:
    """A namespace carrying ``kubernetes.io/metadata.name`` as Kubernetes >= 1.21 would set it."""
    return {"metadata": {"name": name, "labels": {METADATA_NAME_LABEL: name, **labels}}}


def webhook_ca_bundle(control_plane: ControlPlane, configuration: str) -> bytes:
    """The PEM caBundle of the configuration's first webhook (b'' while there is none, or it is gone)."""
    status, body = control_plane.get(
        f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{configuration}"
    )
    if status != 200:
        return b""
    webhooks = json.loads(body).get("webhooks") or []
    encoded = (webhooks[0].get("clientConfig") or {}).get("caBundle", "") if webhooks else ""
    return base64.b64decode(encoded) if encoded else b""


@dataclass(frozen=True)
class TLSAnswer:
    status: int
    body: bytes
    peer_cert_der: bytes


def https_get(
    host: str, port: int, path: str, *, ca_pem: bytes, server_hostname: str, timeout: float = 3.0
) -> TLSAnswer:
    """GET over TLS to ``host:port`` verifying the certificate for ``server_hostname`` against ``ca_pem``.

    That is what the API server does for a ``clientConfig.service`` webhook: it dials the
    ClusterIP and verifies the name ``<svc>.<ns>.svc``. Raises ``ssl.SSLError`` when the
    certificate does not verify.
    """
    context = ssl.create_default_context(cadata=ca_pem.decode())
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as conn,
    ):
        peer = conn.getpeercert(binary_form=True) or b""
        request = f"GET {path} HTTP/1.1\r\nHost: {server_hostname}\r\nConnection: close\r\n\r\n"
        conn.sendall(request.encode())
        chunks: list[bytes] = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return TLSAnswer(status=status, body=body, peer_cert_der=peer)


# --------------------------------------------------------------------------- Helm


def chart_copy(dest: Path, *, kube_version: str = HARNESS_KUBE_VERSION) -> Path:
    """Copy the chart to ``dest`` with ``kubeVersion`` set to ``kube_version``; nothing else changes."""
    shutil.copytree(CHART, dest)
    chart_yaml = dest / "Chart.yaml"
    text = chart_yaml.read_text()
    line = f'kubeVersion: "{kube_version}"'
    text, count = re.subn(r"(?m)^kubeVersion:.*$", line, text)
    if count == 0:
        text += f"\n{line}\n"
    chart_yaml.write_text(text)
    return dest


@dataclass(eq=False)
class HelmRelease:
    """One release of the chart, installed and uninstalled through the real Helm SDK."""

    control_plane: ControlPlane
    name: str
    namespace: str
    chart_dir: Path
    values: Mapping[str, Any]
    installed: bool = field(default=False, init=False)
    info: dict[str, Any] = field(default_factory=dict, init=False)

    def _config(self) -> Any:
        import helm_sdkpy

        kubeconfig = self.control_plane.kubeconfig_path.read_text()
        return helm_sdkpy.Configuration(namespace=self.namespace, kubeconfig=kubeconfig)

    def install(self, timeout: int = 60) -> dict[str, Any]:
        import helm_sdkpy

        release: dict[str, Any] = asyncio.run(
            helm_sdkpy.Install(self._config()).run(
                self.name, str(self.chart_dir), values=dict(self.values), wait=False, timeout=timeout
            )
        )
        self.installed = True
        self.info = release
        return release

    def upgrade(self, *, server_side_apply: bool | str = "auto", timeout: int = 60) -> dict[str, Any]:
        """``helm upgrade`` with the same values (``server_side_apply``: "auto" keeps the install's method)."""
        import helm_sdkpy

        release: dict[str, Any] = asyncio.run(
            helm_sdkpy.Upgrade(self._config()).run(
                self.name,
                str(self.chart_dir),
                values=dict(self.values),
                wait=False,
                timeout=timeout,
                server_side_apply=server_side_apply,
                force_conflicts=server_side_apply is True,
            )
        )
        self.info = release
        return release

    def uninstall_at_teardown(self) -> None:
        """``helm uninstall`` if still installed; a failure is printed, not raised (the test's own error wins)."""
        if self.installed:
            try:
                self.uninstall()
            except Exception as exc:
                print(f"helm uninstall at teardown failed: {exc}")

    def uninstall(self, timeout: int = 60) -> dict[str, Any]:
        import helm_sdkpy

        result: dict[str, Any] = asyncio.run(
            helm_sdkpy.Uninstall(self._config()).run(self.name, wait=False, timeout=timeout)
        )
        self.installed = False
        return result

    @property
    def manifests(self) -> list[dict[str, Any]]:
        """The objects Helm rendered and applied (from the release's manifest)."""
        return [doc for doc in yaml.safe_load_all(str(self.info.get("manifest", ""))) if isinstance(doc, dict)]

    def rendered(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.manifests if doc.get("kind") == kind]


# --------------------------------------------------------------------------- ServiceAccount credentials


def service_account_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def service_account_groups(namespace: str) -> list[str]:
    """The groups a ServiceAccount token authenticates with."""
    return ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"]


def service_account_token(core: Any, namespace: str, name: str, timeout: float = 60.0) -> str:
    """The token of the ``kubernetes.io/service-account-token`` Secret the 1.20 token controller made."""

    def find() -> str | None:
        sa = core.read_namespaced_service_account(name, namespace)
        for ref in sa.secrets or []:
            secret = core.read_namespaced_secret(ref.name, namespace)
            token = (secret.data or {}).get("token")
            if secret.type == "kubernetes.io/service-account-token" and token:
                return base64.b64decode(token).decode()
        return None

    return wait_for(find, f"the token Secret of ServiceAccount {namespace}/{name}", timeout=timeout, interval=0.2)


def write_token_kubeconfig(path: Path, control_plane: ControlPlane, *, user: str, token: str) -> Path:
    """A kubeconfig authenticating with ``token`` (what the in-cluster config would use in the Pod)."""
    return write_kubeconfig(path, server=control_plane.server, ca_path=control_plane.ca_path, user=user, token=token)


# --------------------------------------------------------------------------- RBAC probes


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def message(self) -> str:
        with contextlib.suppress(ValueError, AttributeError):
            return str(self.json().get("message", ""))
        return self.body[:200].decode(errors="replace")


def request_as(
    control_plane: ControlPlane,
    method: str,
    path: str,
    *,
    user: str,
    groups: Sequence[str] = (),
    query: Mapping[str, str] | None = None,
    body: Any = None,
    content_type: str = "application/json",
    timeout: float = 10.0,
) -> Answer:
    """One real API request by the admin, impersonating ``user`` (and ``groups``).

    The admin is in ``system:masters``, so it may impersonate; the API server then
    authorizes the request as ``user`` alone. A watch (``query`` with ``watch=1``) should
    carry ``timeoutSeconds``: only its status and the first bytes are read.
    """
    url = urllib.parse.urlsplit(control_plane.server)
    target = path + ("?" + urllib.parse.urlencode(dict(query)) if query else "")
    conn = http.client.HTTPSConnection(
        url.hostname or "127.0.0.1", url.port, context=control_plane.ssl_context(), timeout=timeout
    )
    try:
        payload = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        conn.putrequest(method, target)
        conn.putheader("Authorization", f"Bearer {control_plane.token}")
        conn.putheader("Impersonate-User", user)
        for group in groups:
            conn.putheader("Impersonate-Group", group)  # repeated header: one per group
        conn.putheader("Accept", "application/json")
        if payload is not None:
            conn.putheader("Content-Type", content_type)
            conn.putheader("Content-Length", str(len(payload)))
        conn.endheaders(payload)
        resp = conn.getresponse()
        is_watch = bool(query and query.get("watch") in ("1", "true"))
        data = resp.read(4096) if is_watch and resp.status == 200 else resp.read()
        return Answer(status=int(resp.status), body=bytes(data))
    finally:
        conn.close()


#: One permission, flattened from a role's rules: (scope, apiGroup, resource, verb, resourceName or "*").
#: scope: ``"cluster"`` for a ClusterRole, else the namespace of the Role that grants it.
Grant = tuple[str, str, str, str, str]
CLUSTER = "cluster"


def role_grants(role: Mapping[str, Any]) -> set[Grant]:
    """Every (scope, group, resource, verb, name) a ClusterRole or Role object (as JSON) grants."""
    scope = str(role["metadata"].get("namespace") or CLUSTER) if role.get("kind") == "Role" else CLUSTER
    grants: set[Grant] = set()
    for rule in role.get("rules") or []:
        for group in rule.get("apiGroups") or [""]:
            for resource in rule.get("resources") or []:
                for verb in rule.get("verbs") or []:
                    for name in rule.get("resourceNames") or ["*"]:
                        grants.add((scope, str(group), str(resource), str(verb), str(name)))
    return grants


def release_rbac(control_plane: ControlPlane, release: str) -> list[dict[str, Any]]:
    """The live ClusterRoles and Roles (every namespace) labelled as this release's, as JSON.

    Listed by the chart's ``app.kubernetes.io/instance`` label rather than by name, so a
    Role the chart renders in a namespace nobody thought of is reviewed too.
    """
    selector = urllib.parse.urlencode({"labelSelector": f"app.kubernetes.io/instance={release}"})
    found: list[dict[str, Any]] = []
    for kind, path in (
        ("ClusterRole", "/apis/rbac.authorization.k8s.io/v1/clusterroles"),
        ("Role", "/apis/rbac.authorization.k8s.io/v1/roles"),
    ):
        status, body = control_plane.get(f"{path}?{selector}")
        if status != 200:
            raise ChartE2EError(f"GET {path}: {status} {body[:300]!r}")
        for item in json.loads(body).get("items") or []:
            found.append({**item, "kind": kind})  # list items carry no kind
    return found


def subject_access_review(
    api_client: Any,
    *,
    user: str,
    groups: Sequence[str],
    verb: str,
    resource: str,
    group: str = "",
    namespace: str | None = None,
    name: str | None = None,
) -> tuple[bool, str]:
    """(allowed, reason) of a SubjectAccessReview for ``user``: the authorizer's own answer."""
    from kubernetes import client

    attributes: dict[str, str] = {"verb": verb, "group": group, "resource": resource}
    if namespace:
        attributes["namespace"] = namespace
    if name:
        attributes["name"] = name
    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {"user": user, "groups": list(groups), "resourceAttributes": attributes},
    }
    api: Any = client.AuthorizationV1Api(api_client)
    review = api.create_subject_access_review(body)
    return bool(review.status.allowed), str(review.status.reason or review.status.evaluation_error or "")


# --------------------------------------------------------------------------- the Deployment, as a process


def container_args(deployment: Mapping[str, Any], container: str = "webhook") -> list[str]:
    for c in deployment["spec"]["template"]["spec"]["containers"]:
        if c["name"] == container:
            return [str(a) for a in c.get("args") or []]
    raise ChartE2EError(f"no container {container!r} in Deployment {deployment['metadata']['name']}")


def override_args(args: Sequence[str], overrides: Mapping[str, str]) -> list[str]:
    """Replace ``--flag=value`` items by ``overrides[flag]``; flags not present are appended."""
    out: list[str] = []
    seen: set[str] = set()
    for arg in args:
        flag = arg.split("=", 1)[0]
        if flag in overrides:
            out.append(f"{flag}={overrides[flag]}")
            seen.add(flag)
        else:
            out.append(arg)
    out += [f"{flag}={value}" for flag, value in overrides.items() if flag not in seen]
    return out


@dataclass(eq=False)
class DeploymentProcess(ServeProcess):
    """``python -m webhook <the installed Deployment's container args>``, as that Pod would run.

    Overrides, and why:

    - none for the policy: the chart passes ``--policy-configmap`` and the webhook reads and
      watches the ConfigMap through the API as in a Pod (only an older chart that mounted
      the file gets ``--policy``, the ConfigMap's content written as the kubelet would);
    - ``--host=<clusterIP>`` and ``--port=<service port>``: there is no kube-proxy forwarding
      ``<clusterIP>:443`` to the container port, so the process listens there itself
      (``--metrics-port`` stays as rendered, on the same ClusterIP, like the Service's port);
    - ``--kubeconfig``: the ServiceAccount's token and the cluster CA, what the in-cluster
      config reads from the mounted token in a Pod (the chart's RBAC is all it has);
    - ``--shutdown-delay=0``: there are no Endpoints to drain, so stopping does not wait.

    ``POD_NAME``/``POD_NAMESPACE`` come from the environment as the downward API would set them.
    """

    args: Sequence[str]
    """The Deployment's container args (``serve ...``)."""
    policy_yaml: str
    host: str
    port: int
    kubeconfig: Path
    pod_name: str
    pod_namespace: str
    workdir: Path | None = None
    #: More ``--flag: value`` overrides (a second replica: its own metrics port).
    extra_overrides: Mapping[str, str] = field(default_factory=dict)

    returncode: int | None = field(default=None, init=False)
    _proc: Spawned | None = field(default=None, init=False, repr=False)
    _dir: Path | None = field(default=None, init=False, repr=False)

    @property
    def dir(self) -> Path:
        if self._dir is None:
            raise ChartE2EError("process not started")
        return self._dir

    @property
    def log_path(self) -> Path:
        return self.dir / "webhook.log"

    @property
    def policy_path(self) -> Path:
        return self.dir / "etc" / "policy.yaml"

    def argv(self) -> list[str]:
        args = list(self.args)
        if not args or args[0] != "serve":
            raise ChartE2EError(f"the Deployment's args do not start with 'serve': {args}")
        overrides = {
            "--host": self.host,
            "--port": str(self.port),
            "--kubeconfig": str(self.kubeconfig),
            "--shutdown-delay": "0",
            **self.extra_overrides,
        }
        if any(arg.startswith("--policy=") for arg in args):
            # A chart that mounts the policy file: the ConfigMap's content, as the kubelet would write it.
            # (The chart now watches the ConfigMap through the API and passes no --policy.)
            overrides["--policy"] = str(self.policy_path)
        overridden = override_args(args[1:], overrides)
        return [sys.executable, "-m", "webhook", "serve", *overridden]

    def start(self) -> DeploymentProcess:
        if self._proc is not None:
            raise ChartE2EError("already started")
        self._dir = self.workdir or Path(tempfile.mkdtemp(prefix="psi-chart-webhook-"))
        self.policy_path.parent.mkdir(parents=True, exist_ok=True)
        self.policy_path.write_text(self.policy_yaml)
        self._spawn(self.argv(), serve_env(POD_NAME=self.pod_name, POD_NAMESPACE=self.pod_namespace))
        return self

    def kill(self) -> int | None:
        """SIGKILL: the replica dies mid-work, giving nothing back (not even its Lease)."""
        return self.stop(sig=signal.SIGKILL)

    def check_alive(self) -> None:
        """Raise with the log tail if the process has exited."""
        if self._proc is not None:
            self._proc.check_alive(ChartE2EError)

    def cleanup(self, keep: bool = False) -> None:
        self.stop()
        self._remove_dir(keep)


__all__ = [
    "CHART",
    "CLUSTER",
    "HARNESS_KUBE_VERSION",
    "METADATA_NAME_LABEL",
    "Answer",
    "ChartE2EError",
    "DeploymentProcess",
    "Grant",
    "HelmRelease",
    "TLSAnswer",
    "can_bind",
    "chart_copy",
    "container_args",
    "https_get",
    "is_loopback",
    "loopback_control_plane",
    "loopback_service_range",
    "namespace_body",
    "override_args",
    "release_rbac",
    "request_as",
    "role_grants",
    "service_account_groups",
    "service_account_token",
    "service_account_user",
    "subject_access_review",
    "webhook_ca_bundle",
    "write_token_kubeconfig",
]
