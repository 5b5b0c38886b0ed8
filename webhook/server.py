"""Assembling and running the webhook process (``pullsecret-injector serve``).

One event loop (uvloop) runs uvicorn's HTTPS server, the policy file watcher, the TLS
certificate reloader and, when a cluster is there, the Kubernetes side (watches, the
Secret ensurer, the leader-elected reconciler). On SIGTERM readiness goes false first,
then the listener closes, in-flight reviews finish, and the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn

from webhook import waits
from webhook.admission.handler import Handler, NamespaceLabels, SecretEnsurer
from webhook.admission.mirroring import SecretLookup, build_mirror_checker
from webhook.app import Readiness, create_app
from webhook.config import CertSettings, KubeSettings, RecoverySettings, ServerSettings, Settings
from webhook.errors import EXIT_BAD_INPUT, EXIT_OK, UserError
from webhook.examples import POLICY, bundled_example
from webhook.observability import logs
from webhook.observability.metrics import Metrics
from webhook.policy.holder import PolicyHolder
from webhook.tls.certs import write_local_certs
from webhook.tls.context import ReloadingSSLContext, install_into_uvicorn
from webhook.tls.guard import guarded_protocol
from webhook.tokens.metrics import TokenMetrics

if TYPE_CHECKING:
    from webhook.kube.surface import ControlSurface
    from webhook.runtime import KubeRuntime

log = logging.getLogger(__name__)


@dataclass
class Components:
    """Everything ``serve`` runs, built before the loop starts so errors surface early."""

    holder: PolicyHolder
    handler: Handler
    readiness: Readiness
    tls: ReloadingSSLContext
    metrics: Metrics
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    on_start: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)


class GracefulServer(uvicorn.Server):
    """uvicorn, but SIGTERM first flips readiness and waits ``delay`` before closing.

    Kubernetes removes a terminating Pod from the Service endpoints asynchronously; the
    delay lets the API server stop sending reviews here before the listener goes away.
    """

    def __init__(self, config: uvicorn.Config, *, readiness: Readiness, delay: float) -> None:
        super().__init__(config)
        self._readiness = readiness
        self._delay = delay
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """As uvicorn's, minus re-raising the signal afterwards: a graceful stop exits 0."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._readiness.stopping or self._delay <= 0 or self._loop is None:
            self._readiness.stopping = True
            super().handle_exit(sig, frame)
            return
        self._readiness.stopping = True
        log.info("shutdown requested: not ready, closing in %.1fs", self._delay)
        self._loop.call_soon_threadsafe(self._loop.call_later, self._delay, super().handle_exit, sig, frame)


class _SignalBlindServer(uvicorn.Server):
    """A second server in the same process: signals belong to the main one, which stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _cluster_configured(kube: KubeSettings) -> bool:
    """A kubeconfig was given, or we run in a Pod (the in-cluster config); never with ``--no-kube``."""
    return not kube.offline and (kube.kubeconfig is not None or bool(os.environ.get("KUBERNETES_SERVICE_HOST")))


def build_components(settings: Settings) -> Components:
    """Load the policy and certificates and wire the handler (no network yet)."""
    with_kube = _cluster_configured(settings.kube)
    # Issue 11: with a cluster, the ownership ledger; with --policy-configmap, the policy from the API.
    surface = _control_surface(settings) if with_kube else None
    live_holder = _live_policy_holder(settings, surface) if surface is not None else None
    if live_holder is not None:
        holder = live_holder
    else:
        policy_path = settings.policy.file
        if policy_path is None:
            if not settings.dev:
                raise UserError("--policy is required (or use --dev to try the bundled example)")
            policy_path = bundled_example(POLICY)
            log.info("dev mode: using the bundled example policy %s", policy_path)
        try:
            holder = PolicyHolder.from_file(policy_path)
        except OSError as exc:
            raise UserError(f"cannot read policy {policy_path}: {exc.strerror}") from None

    readiness = Readiness()
    metrics = Metrics()
    holder.listeners.append(metrics.observe_policy_reload)
    metrics.policy_rules.set_function(lambda: len(holder.current().policy.rules))
    metrics.ready.set_function(lambda: 1.0 if readiness.ready else 0.0)
    namespaces: NamespaceLabels | None = None
    ensurer: SecretEnsurer | None = None
    background: list[Callable[[], Coroutine[Any, Any, None]]] = [_every(holder.watch, settings.policy.poll_interval)]
    on_start: list[Callable[[], Coroutine[Any, Any, None]]] = []
    secret_lookup: SecretLookup | None = None

    if with_kube:
        runtime = _kube_runtime(
            settings.kube, holder=holder, metrics=metrics, surface=surface, recovery=settings.recovery
        )
        secret_lookup = _cached_secret(runtime)  # mirrors: the check's credentials
        runtime.tokens.metrics = TokenMetrics(metrics.registry)  # issue 13: token mint metrics
        namespaces, ensurer = runtime.namespaces, runtime.ensurer
        holder.listeners.append(runtime.policy_changed)  # re-target the by-name watches
        if surface is not None and surface.live is not None:
            from webhook.kube.surface import attach

            attach(surface, runtime, registry=metrics.registry, on_start=on_start, background=background)
        elif settings.policy.configmap:
            holder.listeners.append(
                policy_rejected_event(runtime, namespace=settings.kube.namespace, configmap=settings.policy.configmap)
            )
        on_start.append(runtime.start)  # first lists of the watches, bounded
        background.append(runtime.run)  # leader election, reconciler, Events

    if settings.certs.mode == "self":
        tls, keep_certs = _self_managed_tls(settings.certs, settings.kube)
        background.append(keep_certs)
    else:
        tls = _tls_context(settings.certs, namespace=settings.kube.namespace)
    handler = Handler(
        policy=holder.current,
        namespaces=namespaces,
        ensurer=ensurer,
        observe=metrics.observe_admission,
        mirror_checker=build_mirror_checker(settings.mirrors, secret_lookup),
    )
    # Logs and keeps polling when a new file is broken.
    background.append(_every(tls.watch, settings.certs.file_poll_interval))
    return Components(
        holder=holder,
        handler=handler,
        readiness=readiness,
        tls=tls,
        metrics=metrics,
        background=background,
        on_start=on_start,
    )


def _cached_secret(runtime: KubeRuntime) -> SecretLookup:
    """A Secret from the watched cache (sources are watched), ``None`` when absent or not known."""
    return lambda namespace, name: runtime.secrets.lookup(namespace, name)[1]


def policy_rejected_event(runtime: KubeRuntime, *, namespace: str, configmap: str) -> Callable[[bool, list[str]], None]:
    """A reload listener: a rejected policy becomes a Warning Event on its ConfigMap."""

    def listener(accepted: bool, errors: list[str]) -> None:
        if not accepted:
            runtime.events.warn_configmap(
                namespace=namespace,
                name=configmap,
                reason="PolicyRejected",
                message="new policy rejected, the last good one keeps serving: " + "; ".join(errors),
            )

    return listener


def _every(
    watch: Callable[[float], Coroutine[Any, Any, Any]], interval: float
) -> Callable[[], Coroutine[Any, Any, None]]:
    """``watch(interval)`` as a background job; it keeps the watcher's name (the logs and tests see it)."""

    @functools.wraps(watch)
    async def job() -> None:
        await watch(interval)

    return job


def _control_surface(settings: Settings) -> ControlSurface:
    """Issue 11: the ledger and (with ``--policy-configmap``) the live policy (webhook/kube/surface.py)."""
    from webhook.kube.surface import SurfaceError, control_surface

    try:
        return control_surface(settings)
    except SurfaceError as exc:
        raise UserError(str(exc)) from None


def _live_policy_holder(settings: Settings, surface: ControlSurface) -> PolicyHolder | None:
    from webhook.kube.surface import SurfaceError, first_policy

    try:
        return first_policy(surface, policy_file=settings.policy.file)
    except SurfaceError as exc:
        raise UserError(str(exc)) from None


def _kube_runtime(
    kube: KubeSettings,
    *,
    holder: PolicyHolder,
    metrics: Metrics,
    surface: ControlSurface | None = None,
    recovery: RecoverySettings | None = None,
) -> KubeRuntime:
    """The Kubernetes side, its counters feeding the Prometheus metrics.

    The Kubernetes client is imported here, not at the top: ``--no-kube``, ``--dev`` and the
    offline commands never load it.
    """
    from kubernetes.config.config_exception import ConfigException

    from webhook.runtime import build_kube_runtime

    stats = metrics.kube_stats()
    try:
        return build_kube_runtime(
            settings=kube,
            policy=holder.current,
            stats=stats,
            ledger=surface.ledger if surface is not None else None,
            recovery=recovery,
        )
    except (ConfigException, OSError) as exc:
        raise UserError(f"cannot configure the Kubernetes client: {logs.redact(str(exc))}") from None


def _self_managed_tls(
    certs: CertSettings, kube: KubeSettings
) -> tuple[ReloadingSSLContext, Callable[[], Coroutine[Any, Any, None]]]:
    """``--cert-mode self``: get (or make) the certificate from the cluster before serving.

    Blocking on purpose: nothing can be served without a certificate, and the loop is not
    running yet. Replicas starting together race on the Secret; 409 resolves it. (The
    Kubernetes client is imported here for the same reason as in :func:`_kube_runtime`.)
    """
    from kubernetes.config.config_exception import ConfigException

    from webhook.kube.client import KubeApi, build_api_client, load_configuration
    from webhook.kube.errors import ApiError
    from webhook.tls.pki import CertBundle
    from webhook.tls.selfcert import CertState, SelfCertManager, keep_current

    if not _cluster_configured(kube):
        raise UserError("--cert-mode self needs a cluster connection (--kubeconfig, or run in a Pod)")
    try:
        configuration = load_configuration(kubeconfig=kube.kubeconfig)
    except (ConfigException, OSError) as exc:
        raise UserError(f"cannot configure the Kubernetes client: {logs.redact(str(exc))}") from None
    api = KubeApi(build_api_client(configuration=configuration, pool_size=2))
    manager = SelfCertManager(
        api=api,
        namespace=kube.namespace,
        secret_name=certs.secret_name,
        service=certs.service,
        webhook_config=certs.webhook_config,
    )
    deadline = time.monotonic() + certs.startup_timeout
    while True:
        try:
            state = manager.ensure()
            break
        except ApiError as exc:
            if not exc.transient or time.monotonic() > deadline:
                raise UserError(f"cannot set up the self-managed certificate: {exc}") from None
            log.warning("certificate set-up failed, retrying: %s", exc)
            time.sleep(2)
    staging = Path(tempfile.mkdtemp(prefix="pullsecret-injector-tls-"))
    tls = ReloadingSSLContext.from_bundle(CertBundle(state.ca_bundle, state.ca_key, state.cert, state.key), staging)

    def apply(new: CertState) -> None:
        tls.update(cert_pem=new.cert, key_pem=new.key)

    async def keep() -> None:
        await keep_current(manager, initial=state, apply=apply, interval=certs.check_interval)

    return tls, keep


def _tls_context(certs: CertSettings, *, namespace: str) -> ReloadingSSLContext:
    """``--cert-mode files`` or ``dev``: a context on certificate files, re-read when they change."""
    if certs.mode == "dev":
        out = Path(tempfile.mkdtemp(prefix="pullsecret-injector-dev-"))
        written = write_local_certs(service=certs.service, namespace=namespace, out_dir=out)
        print(f"dev mode: self-signed certificate for localhost/127.0.0.1; CA at {written['ca.crt']}", file=sys.stderr)
        return ReloadingSSLContext(written["tls.crt"], written["tls.key"])
    if certs.tls_cert is None or certs.tls_key is None:
        raise UserError("--tls-cert and --tls-key are required with --cert-mode files (or use --dev)")
    return ReloadingSSLContext(certs.tls_cert, certs.tls_key)


def _uvicorn_config(app: Any, *, host: str, port: int, read_timeout: float, **extra: Any) -> uvicorn.Config:
    """Our loop (uvloop, started by ``run``), guarded httptools, our logging, no lifespan.

    No proxy-headers middleware either: the API server calls the webhook directly, nothing
    here reads the client address, and the middleware is one more ASGI layer on every
    request (it rewrote the scope for each request from 127.0.0.1, its trusted default).
    """
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",
        http=guarded_protocol(read_timeout),
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        **extra,
    )


async def serve(components: Components, settings: ServerSettings) -> None:
    """Run until SIGTERM/SIGINT: the HTTPS webhook, the plain-HTTP metrics port, background jobs."""
    app = create_app(
        handler=components.handler,
        readiness=components.readiness,
        max_body_bytes=settings.max_body_bytes,
        admission_timeout=settings.admission_timeout,
        read_timeout=settings.read_timeout,
        on_transport_error=components.metrics.observe_http_error,
        on_internal_error=components.metrics.observe_internal_error,
    )
    config = _uvicorn_config(
        app,
        host=settings.host,
        port=settings.port,
        read_timeout=settings.read_timeout,
        timeout_keep_alive=settings.keep_alive_timeout,
    )
    install_into_uvicorn(config, components.tls)
    server = GracefulServer(config, readiness=components.readiness, delay=settings.shutdown_delay)
    jobs = list(components.background)
    metrics_server: uvicorn.Server | None = None
    if settings.metrics_port:
        metrics_config = _uvicorn_config(
            components.metrics.asgi_app(),
            host=settings.host,
            port=settings.metrics_port,
            read_timeout=settings.read_timeout,
        )
        metrics_server = _SignalBlindServer(metrics_config)
        jobs.append(metrics_server.serve)
    tasks: list[asyncio.Task[None]] = [asyncio.create_task(job(), name=getattr(job, "__name__", "job")) for job in jobs]
    try:
        for start in components.on_start:
            await start()
        # Everything loaded so far lives as long as the process: keep the collector from
        # walking it again and again (a full collection was a 26 ms pause every few seconds).
        gc.collect()
        gc.freeze()
        components.readiness.started = True
        await server.serve()
    finally:
        components.readiness.stopping = True
        if metrics_server is not None:
            metrics_server.should_exit = True
        for task in tasks:
            if task.get_name() != "serve":
                task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await waits.wait_for(task, timeout=5)


def run(settings: Settings) -> int:
    """Entry point of ``serve``: configure logging, build, run on uvloop."""
    logs.configure(level=settings.server.log_level, fmt=settings.server.log_format)
    try:
        components = build_components(settings)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        import uvloop

        runner: Callable[[Awaitable[None]], None] = uvloop.run  # type: ignore[assignment]
    except ImportError:  # pragma: no cover - uvloop is a dependency, but stay usable without it
        runner = asyncio.run  # type: ignore[assignment]
    log.info("serving on https://%s:%d (pid %d)", settings.server.host, settings.server.port, os.getpid())
    runner(serve(components, settings.server))
    return EXIT_OK


__all__ = ["Components", "GracefulServer", "build_components", "run", "serve"]
