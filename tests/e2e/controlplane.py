"""A real, throwaway Kubernetes control plane on loopback for the e2e tests.

Starts etcd, kube-apiserver and kube-controller-manager (no kubelet, no scheduler:
Pods stay Pending) in a temporary directory, on free 127.0.0.1 ports, with
certificates made here with ``cryptography`` so the client verifies the server.

Usage::

    assets = find_assets()            # None when the binaries are missing
    with ControlPlane(assets) as cp:  # start() ... stop()
        api = cp.api_client()         # kubernetes.client.ApiClient, admin (system:masters)
        print(cp.kubeconfig_path)

Binaries: ``bash hack/build-kube-assets.sh`` (see tests/e2e/README.md). Run this file
directly (``.venv/bin/python tests/e2e/controlplane.py``) to get a control plane to
poke at with kubectl until Ctrl-C.

Its processes are started, awaited and stopped by PID through ``tests/processes.py``.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime
import ipaddress
import os
import secrets
import shutil
import signal
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.processes import LOOPBACK as LOOPBACK
from tests.processes import Spawned, stop_all, wait_until
from tests.processes import free_port as free_port
from tests.processes import tail as tail
from webhook.tls.pki import build_ca, build_serving_cert

DEFAULT_ASSETS_DIR = Path.home() / ".cache" / "pullsecret-injector" / "kube-assets"
ASSETS_ENV = "KUBE_ASSETS"
#: Virtual Service IP range (allocation only: nothing ever routes to it, there is no kube-proxy).
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
#: ``PSI_E2E_KEEP=1``: keep the temp dirs (logs, kubeconfigs, certificates, policies) for a post-mortem.
KEEP = os.environ.get("PSI_E2E_KEEP") == "1"


class ControlPlaneError(RuntimeError):
    """The control plane could not be started (the message carries the log tails)."""


# --------------------------------------------------------------------------- assets


@dataclass(frozen=True)
class KubeAssets:
    """Paths of the three binaries."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_assets(directory: str | os.PathLike[str] | None = None) -> KubeAssets | None:
    """Locate etcd, kube-apiserver and kube-controller-manager.

    Looks in ``directory``, else in ``$KUBE_ASSETS``, else in
    ``~/.cache/pullsecret-injector/kube-assets``. etcd may also come from ``$PATH``
    (Debian's etcd-server installs /usr/bin/etcd). Returns None if any is missing.
    """
    if directory is None:
        env = os.environ.get(ASSETS_ENV, "").strip()
        directory = env or DEFAULT_ASSETS_DIR
    base = Path(directory).expanduser()
    apiserver = base / "kube-apiserver"
    kcm = base / "kube-controller-manager"
    etcd = base / "etcd"
    if not _executable(etcd):
        on_path = shutil.which("etcd")
        if on_path is None:
            return None
        etcd = Path(on_path)
    if not (_executable(apiserver) and _executable(kcm)):
        return None
    return KubeAssets(etcd=etcd, kube_apiserver=apiserver, kube_controller_manager=kcm)


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class TLSBundle:
    """A CA and a serving certificate it signed, all PEM."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path, prefix: str) -> tuple[Path, Path, Path]:
        """Write ``<prefix>-ca.crt``, ``<prefix>.crt``, ``<prefix>.key``; return their paths."""
        ca, crt, key = (
            directory / f"{prefix}-ca.crt",
            directory / f"{prefix}.crt",
            directory / f"{prefix}.key",
        )
        ca.write_bytes(self.ca_pem)
        crt.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        key.chmod(0o600)
        return ca, crt, key


def make_serving_cert(
    common_name: str = "localhost",
    ips: Sequence[str] = (LOOPBACK,),
    dns_names: Sequence[str] = ("localhost",),
    days: int = 2,
) -> TLSBundle:
    """A fresh CA and a server certificate for ``ips``/``dns_names`` (SANs), by the project's own code.

    Use it for webhooks too: the apiserver checks the webhook's certificate against the
    ``caBundle`` (``TLSBundle.ca_pem``) and needs a SAN for the IP in the URL.
    """
    validity = datetime.timedelta(days=days)
    ca_pem, ca_key = build_ca(common_name=f"{common_name}-ca", valid_for=validity)
    cert_pem, key_pem = build_serving_cert(
        ca_cert_pem=ca_pem, ca_key_pem=ca_key, dns_names=list(dns_names), ip_addresses=list(ips), valid_for=validity
    )
    return TLSBundle(ca_pem=ca_pem, cert_pem=cert_pem, key_pem=key_pem)


# --------------------------------------------------------------------------- kubeconfig


def write_kubeconfig(path: Path, *, server: str, ca_path: Path, user: str, token: str) -> Path:
    """A kubeconfig for ``server`` (verified against ``ca_path``) authenticating as ``user`` with ``token``."""
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": server, "certificate-authority": str(ca_path)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user}}],
        "current-context": "e2e",
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    path.chmod(0o600)
    return path


@dataclass(eq=False)
class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on loopback.

    ``start()`` returns once ``/readyz`` is ok and the ``default`` ServiceAccount of the
    ``default`` namespace has its token (the ServiceAccount admission plugin of 1.20
    refuses Pods before that). ``stop()`` ends exactly the processes it started.
    """

    assets: KubeAssets
    workdir: Path | None = None
    """Where certs, data, kubeconfig and logs go; a fresh temp dir when None."""
    keep_workdir: bool = False
    """Keep the (temporary) workdir after stop(), for post-mortems."""
    die_with_parent: bool = True
    """Children get SIGTERM if this process dies (PR_SET_PDEATHSIG, Linux)."""
    extra_apiserver_args: Sequence[str] = ()
    extra_controller_manager_args: Sequence[str] = ()
    verbosity: int = 1
    service_cluster_ip_range: str = SERVICE_CLUSTER_IP_RANGE
    """Where Service ClusterIPs are allocated. A loopback range (e.g. ``127.100.0.0/24``) lets a process
    on this machine listen on a Service's ClusterIP, which is what the apiserver dials for a webhook's
    ``clientConfig.service`` (there is no kube-proxy): see tests/e2e/chart_support.py."""

    token: str = field(default_factory=lambda: secrets.token_hex(16), init=False)
    apiserver_port: int = field(default=0, init=False)
    etcd_port: int = field(default=0, init=False)
    startup_seconds: float = field(default=0.0, init=False)
    _kcm_token: str = field(default_factory=lambda: secrets.token_hex(16), init=False, repr=False)
    _procs: list[Spawned] = field(default_factory=list, init=False, repr=False)
    _tmp: Path | None = field(default=None, init=False, repr=False)  # a temp dir we made
    _dir: Path | None = field(default=None, init=False, repr=False)

    # ----------------------------------------------------------------- public properties

    @property
    def dir(self) -> Path:
        if self._dir is None:
            raise ControlPlaneError("control plane not started")
        return self._dir

    @property
    def server(self) -> str:
        """The apiserver's URL, e.g. ``https://127.0.0.1:43123``."""
        return f"https://{LOOPBACK}:{self.apiserver_port}"

    @property
    def ca_path(self) -> Path:
        """CA certificate that signed the apiserver's serving certificate."""
        return self.dir / "apiserver-ca.crt"

    @property
    def kubeconfig_path(self) -> Path:
        """An admin kubeconfig (user ``admin``, group ``system:masters``)."""
        return self.dir / "admin.kubeconfig"

    @property
    def log_dir(self) -> Path:
        return self.dir / "logs"

    def api_client(self) -> Any:
        """A new ``kubernetes.client.ApiClient`` authenticated as the admin (close it when done)."""
        from kubernetes import config

        new_client: Any = config.new_client_from_config  # untyped in the kubernetes package
        return new_client(config_file=str(self.kubeconfig_path))

    @contextlib.contextmanager
    def admin_client(self) -> Iterator[Any]:
        """:meth:`api_client`, closed when the block ends."""
        api = self.api_client()
        try:
            yield api
        finally:
            api.close()

    def env(self) -> dict[str, str]:
        """``os.environ`` plus ``KUBECONFIG`` pointing at the admin kubeconfig."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig_path)}

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 180.0) -> ControlPlane:
        """Start everything and wait until it is usable; on failure stop what was started."""
        if self._procs:
            raise ControlPlaneError("already started")
        t0 = time.monotonic()
        deadline = t0 + timeout
        atexit.register(self.stop)
        try:
            self._prepare_dir()
            self._write_credentials()
            self._start_etcd()
            self._wait(self._etcd_healthy, "etcd /health", deadline)
            self._start_apiserver()
            self._wait(self._apiserver_ready, "kube-apiserver /readyz", deadline)
            self._start_controller_manager()
            self._wait(
                lambda: self._sa_has_token("default", "default"),
                "ServiceAccount default/default with its token",
                deadline,
            )
        except BaseException as err:
            if self._dir is not None:
                # keep the logs of a failed start for a post-mortem
                self.keep_workdir = True
                err.add_note(f"control plane workdir kept for inspection: {self._dir} (logs in logs/)")
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the started processes (reverse order), kill those that linger."""
        procs, self._procs = self._procs, []
        stop_all(procs, timeout)
        atexit.unregister(self.stop)
        if self._tmp is not None and not self.keep_workdir:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            self._dir = None

    # ----------------------------------------------------------------- steps

    def _prepare_dir(self) -> None:
        if self.workdir is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="psi-kube-"))
            self._dir = self._tmp
        else:
            self._dir = Path(self.workdir)
            self._dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)

    def _write_credentials(self) -> None:
        d = self.dir
        self.etcd_port = free_port()
        self.apiserver_port = free_port()
        tls = make_serving_cert(
            common_name="kube-apiserver",
            ips=(LOOPBACK, str(next(ipaddress.ip_network(self.service_cluster_ip_range).hosts()))),
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
        )
        tls.write(d, "apiserver")
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (d / "sa.key").write_bytes(
            sa_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        (d / "sa.key").chmod(0o600)
        (d / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        # token,user,uid,"group1,group2"
        (d / "tokens.csv").write_text(
            f'{self.token},admin,admin,"system:masters"\n'
            f'{self._kcm_token},system:kube-controller-manager,kcm,"system:masters"\n'
        )
        (d / "tokens.csv").chmod(0o600)
        self._write_kubeconfig(self.kubeconfig_path, "admin", self.token)
        self._write_kubeconfig(d / "kcm.kubeconfig", "kube-controller-manager", self._kcm_token)

    def _write_kubeconfig(self, path: Path, user: str, token: str) -> None:
        write_kubeconfig(path, server=self.server, ca_path=self.ca_path, user=user, token=token)

    def _spawn(self, name: str, argv: list[str]) -> None:
        self._procs.append(
            Spawned.start(
                argv, self.log_dir / f"{name}.log", name=name, cwd=self.dir, die_with_parent=self.die_with_parent
            )
        )

    def _start_etcd(self) -> None:
        client = f"http://{LOOPBACK}:{self.etcd_port}"
        peer = f"http://{LOOPBACK}:{free_port()}"
        self._spawn(
            "etcd",
            [
                str(self.assets.etcd),
                "--name=e2e",
                f"--data-dir={self.dir / 'etcd-data'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=e2e={peer}",
                "--initial-cluster-state=new",
                "--snapshot-count=10000",
                "--log-level=warn",
                "--logger=zap",
            ],
        )

    def _start_apiserver(self) -> None:
        d = self.dir
        self._spawn(
            "kube-apiserver",
            [
                str(self.assets.kube_apiserver),
                f"--etcd-servers=http://{LOOPBACK}:{self.etcd_port}",
                f"--bind-address={LOOPBACK}",
                f"--advertise-address={LOOPBACK}",
                f"--secure-port={self.apiserver_port}",
                "--insecure-port=0",  # 1.20 would otherwise also listen on 127.0.0.1:8080
                f"--cert-dir={d / 'apiserver-certs'}",
                f"--tls-cert-file={d / 'apiserver.crt'}",
                f"--tls-private-key-file={d / 'apiserver.key'}",
                f"--client-ca-file={self.ca_path}",
                f"--token-auth-file={d / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                f"--service-cluster-ip-range={self.service_cluster_ip_range}",
                # 127.0.0.1 is not a valid Endpoints address: do not maintain default/kubernetes endpoints
                "--endpoint-reconciler-type=none",
                "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,"
                "MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
                "--enable-priority-and-fairness=false",
                "--allow-privileged=true",
                "--profiling=false",
                f"--v={self.verbosity}",
                *self.extra_apiserver_args,
            ],
        )

    def _start_controller_manager(self) -> None:
        d = self.dir
        self._spawn(
            "kube-controller-manager",
            [
                str(self.assets.kube_controller_manager),
                f"--kubeconfig={d / 'kcm.kubeconfig'}",
                f"--service-account-private-key-file={d / 'sa.key'}",
                f"--root-ca-file={self.ca_path}",
                "--controllers=*",
                "--use-service-account-credentials=false",
                "--leader-elect=false",
                "--secure-port=0",  # no serving at all: nothing else needs to reach it
                "--port=0",
                f"--service-cluster-ip-range={self.service_cluster_ip_range}",
                "--profiling=false",
                f"--v={self.verbosity}",
                *self.extra_controller_manager_args,
            ],
        )

    # ----------------------------------------------------------------- readiness

    def _wait(self, ready: Callable[[], bool], what: str, deadline: float) -> None:
        """Poll ``ready`` until ``deadline`` (monotonic); ControlPlaneError when one of ours exits or on timeout."""
        wait_until(
            ready,
            what,
            deadline - time.monotonic(),
            watch=self._procs,
            error=ControlPlaneError,
            interval=0.2,
            tail_lines=25,
        )

    def _etcd_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.etcd_port}/health", timeout=2) as resp:
                return b'"true"' in resp.read()
        except (OSError, urllib.error.URLError):
            return False

    def ssl_context(self) -> ssl.SSLContext:
        """An SSL context that trusts the apiserver's CA."""
        return ssl.create_default_context(cafile=str(self.ca_path))

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET ``path`` on the apiserver as admin; returns (status, body), never raises on HTTP errors."""
        req = urllib.request.Request(  # noqa: S310 - fixed https://127.0.0.1 URL
            self.server + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context()) as resp:  # noqa: S310
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as err:
            return int(err.code), bytes(err.read())

    def _apiserver_ready(self) -> bool:
        try:
            status, _ = self.get("/readyz")
        except (OSError, urllib.error.URLError):
            return False
        return status == 200

    def _sa_has_token(self, namespace: str, name: str) -> bool:
        import json

        try:
            status, body = self.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}")
        except (OSError, urllib.error.URLError):
            return False
        return status == 200 and bool(json.loads(body).get("secrets"))

    def wait_for_default_service_account(self, namespace: str, timeout: float = 60.0) -> None:
        """Wait until ``namespace`` has its ``default`` ServiceAccount with a token Secret.

        kube-apiserver 1.20 refuses Pods ("no API token found for service account") before that.
        """
        self._wait(
            lambda: self._sa_has_token(namespace, "default"),
            f"ServiceAccount {namespace}/default with its token",
            time.monotonic() + timeout,
        )


# --------------------------------------------------------------------------- webhooks


def register_webhook(
    api_client: Any,
    name: str,
    url: str,
    ca_bundle_pem: bytes,
    **options: Any,
) -> Any:
    """Create a MutatingWebhookConfiguration ``name`` with one webhook calling ``url``.

    ``url`` is the ``clientConfig.url`` form (e.g. ``https://127.0.0.1:PORT/mutate``);
    ``ca_bundle_pem`` is the PEM CA that signed the webhook's certificate (which needs a
    SAN for the URL's host, e.g. IP 127.0.0.1). Options (snake_case) and defaults:

    - ``rules``: ``[{operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [pods]}]``
    - ``side_effects="NoneOnDryRun"``, ``failure_policy="Ignore"``,
      ``reinvocation_policy="IfNeeded"``, ``admission_review_versions=["v1", "v1beta1"]``,
      ``timeout_seconds=5``, ``match_policy="Equivalent"``
    - ``namespace_selector``, ``object_selector``: label selector dicts (default: match all)
    - ``webhook_name``: the webhook's own name (default ``<name>.e2e.local`` if ``name``
      has no dot; it must be a fully qualified name)
    - ``replace=True``: delete an existing configuration of that name first

    The apiserver picks a new configuration up asynchronously (well under a second usually):
    callers that need the webhook active should poll, e.g. with dry-run creates.
    Returns the created object (``V1MutatingWebhookConfiguration``).
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    known = {
        "rules",
        "side_effects",
        "failure_policy",
        "reinvocation_policy",
        "admission_review_versions",
        "timeout_seconds",
        "match_policy",
        "namespace_selector",
        "object_selector",
        "webhook_name",
        "replace",
    }
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"register_webhook: unknown options {sorted(unknown)}")
    webhook: dict[str, Any] = {
        "name": options.get("webhook_name") or (name if "." in name else f"{name}.e2e.local"),
        "clientConfig": {"url": url, "caBundle": base64.b64encode(ca_bundle_pem).decode()},
        "rules": options.get(
            "rules",
            [
                {
                    "operations": ["CREATE"],
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "resources": ["pods"],
                    "scope": "*",
                }
            ],
        ),
        "sideEffects": options.get("side_effects", "NoneOnDryRun"),
        "failurePolicy": options.get("failure_policy", "Ignore"),
        "reinvocationPolicy": options.get("reinvocation_policy", "IfNeeded"),
        "admissionReviewVersions": list(options.get("admission_review_versions", ["v1", "v1beta1"])),
        "timeoutSeconds": int(options.get("timeout_seconds", 5)),
        "matchPolicy": options.get("match_policy", "Equivalent"),
        "namespaceSelector": options.get("namespace_selector") or {},
        "objectSelector": options.get("object_selector") or {},
    }
    body = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [webhook],
    }
    api: Any = client.AdmissionregistrationV1Api(api_client)
    if options.get("replace", False):
        with contextlib.suppress(ApiException):
            api.delete_mutating_webhook_configuration(name)
    return api.create_mutating_webhook_configuration(body)


def unregister_webhook(api_client: Any, name: str) -> None:
    """Delete the MutatingWebhookConfiguration ``name`` (no error if it is gone)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        api: Any = client.AdmissionregistrationV1Api(api_client)
        api.delete_mutating_webhook_configuration(name)
    except ApiException as err:
        if err.status != 404:
            raise


# --------------------------------------------------------------------------- CLI


def main() -> int:
    """Start a control plane, print how to use it, run until Ctrl-C / SIGTERM."""
    assets = find_assets()
    if assets is None:
        print(
            "no kube-apiserver/etcd found; run `bash hack/build-kube-assets.sh` "
            "or set KUBE_ASSETS=/path/with/etcd+kube-apiserver",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with ControlPlane(assets) as cp:
        print(f"control plane up in {cp.startup_seconds:.1f}s: {cp.server}")
        print(f"export KUBECONFIG={cp.kubeconfig_path}")
        print(f"logs: {cp.log_dir}   (Ctrl-C to stop)")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
