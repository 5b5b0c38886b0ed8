"""Assembling and running the webhook process (``pullsecret-injector serve``).

One event loop (uvloop) runs uvicorn's HTTPS server, the policy file watcher, the TLS
certificate reloader and, when a cluster is there, the Kubernetes side (watches, the
Secret ensurer, the leader-elected reconciler). On SIGTERM readiness goes false first,
then the listener closes, in-flight reviews finish, and the process exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

from webhook.admission.handler import Handler, NamespaceLabels, SecretEnsurer
from webhook.app import (
    DEFAULT_ADMISSION_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_READ_TIMEOUT,
    Readiness,
    create_app,
)
from webhook.observability import logs
from webhook.observability.metrics import Metrics
from webhook.policy.holder import PolicyHolder
from webhook.tls.context import ReloadingSSLContext, install_into_uvicorn
from webhook.tls.guard import guarded_protocol

if TYPE_CHECKING:
    from webhook.runtime import KubeRuntime

log = logging.getLogger(__name__)


class UserError(Exception):
    """A configuration problem reported as one line with exit code 2."""


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


def build_components(args: argparse.Namespace) -> Components:
    """Load the policy and certificates and wire the handler (no network yet)."""
    from webhook.cli import bundled_example

    policy_path: Path | None = args.policy
    if policy_path is None:
        if args.cert_mode != "dev":
            raise UserError("--policy is required (or use --dev to try the bundled example)")
        policy_path = bundled_example("policy.yaml")
        log.info("dev mode: using the bundled example policy %s", policy_path)
    try:
        holder = PolicyHolder.from_file(policy_path)
    except OSError as exc:
        raise UserError(f"cannot read policy {policy_path}: {exc.strerror}") from None

    if args.admission_timeout <= args.ensure_timeout:
        raise UserError("--admission-timeout must be larger than --ensure-timeout (it is the backstop behind it)")
    readiness = Readiness()
    metrics = Metrics()
    holder.listeners.append(metrics.observe_policy_reload)
    metrics.policy_rules.set_function(lambda: len(holder.current().policy.rules))
    metrics.ready.set_function(lambda: 1.0 if readiness.ready else 0.0)
    namespaces: NamespaceLabels | None = None
    ensurer: SecretEnsurer | None = None
    background: list[Callable[[], Coroutine[Any, Any, None]]] = [holder.watch]
    on_start: list[Callable[[], Coroutine[Any, Any, None]]] = []

    if not args.no_kube and (args.kubeconfig is not None or os.environ.get("KUBERNETES_SERVICE_HOST")):
        runtime = _kube_runtime(args, holder=holder, metrics=metrics)
        namespaces, ensurer = runtime.namespaces, runtime.ensurer
        holder.listeners.append(runtime.policy_changed)  # re-target the by-name watches
        if args.policy_configmap:
            holder.listeners.append(
                policy_rejected_event(runtime, namespace=args.namespace, configmap=args.policy_configmap)
            )
        on_start.append(runtime.start)  # first lists of the watches, bounded
        background.append(runtime.run)  # leader election, reconciler, Events

    if args.cert_mode == "self":
        tls, keep_certs = _self_managed_tls(args)
        background.append(keep_certs)
    else:
        tls = _tls_context(args)
    handler = Handler(policy=holder.current, namespaces=namespaces, ensurer=ensurer, observe=metrics.observe_admission)
    background.append(tls.watch)  # logs and keeps polling when a new file is broken
    return Components(
        holder=holder,
        handler=handler,
        readiness=readiness,
        tls=tls,
        metrics=metrics,
        background=background,
        on_start=on_start,
    )


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


def _kube_runtime(args: argparse.Namespace, *, holder: PolicyHolder, metrics: Metrics) -> KubeRuntime:
    """The Kubernetes side, its counters feeding the Prometheus metrics."""
    from kubernetes.config.config_exception import ConfigException

    from webhook.runtime import build_kube_runtime, default_identity

    stats = metrics.kube_stats()
    try:
        return build_kube_runtime(
            kubeconfig=args.kubeconfig,
            policy=holder.current,
            namespace=args.namespace,
            ensure_timeout=args.ensure_timeout,
            cleanup=args.cleanup,
            lease_name=args.leader_election_lease,
            resync_seconds=args.resync_seconds,
            identity=default_identity(),  # POD_NAME
            stats=stats,
        )
    except (ConfigException, OSError) as exc:
        raise UserError(f"cannot configure the Kubernetes client: {logs.redact(str(exc))}") from None


def _self_managed_tls(
    args: argparse.Namespace,
) -> tuple[ReloadingSSLContext, Callable[[], Coroutine[Any, Any, None]]]:
    """``--cert-mode self``: get (or make) the certificate from the cluster before serving.

    Blocking on purpose: nothing can be served without a certificate, and the loop is not
    running yet. Replicas starting together race on the Secret; 409 resolves it.
    """
    from kubernetes.config.config_exception import ConfigException

    from webhook.kube.client import KubeApi, build_api_client, load_configuration
    from webhook.kube.errors import ApiError
    from webhook.tls.certs import CertBundle
    from webhook.tls.selfcert import CertState, SelfCertManager, keep_current

    if args.no_kube or (args.kubeconfig is None and not os.environ.get("KUBERNETES_SERVICE_HOST")):
        raise UserError("--cert-mode self needs a cluster connection (--kubeconfig, or run in a Pod)")
    try:
        configuration = load_configuration(kubeconfig=args.kubeconfig)
    except (ConfigException, OSError) as exc:
        raise UserError(f"cannot configure the Kubernetes client: {logs.redact(str(exc))}") from None
    api = KubeApi(build_api_client(configuration=configuration, pool_size=2))
    manager = SelfCertManager(
        api=api,
        namespace=args.namespace,
        secret_name=args.cert_secret,
        service=args.service,
        webhook_config=args.webhook_config,
    )
    deadline = time.monotonic() + args.cert_startup_timeout
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
        await keep_current(manager, initial=state, apply=apply, interval=args.cert_check_interval)

    return tls, keep


def _tls_context(args: argparse.Namespace) -> ReloadingSSLContext:
    from webhook.tls.certs import write_local_certs

    if args.cert_mode == "dev":
        out = Path(tempfile.mkdtemp(prefix="pullsecret-injector-dev-"))
        written = write_local_certs(service=args.service, namespace=args.namespace, out_dir=out)
        print(f"dev mode: self-signed certificate for localhost/127.0.0.1; CA at {written['ca.crt']}", file=sys.stderr)
        return ReloadingSSLContext(written["tls.crt"], written["tls.key"])
    if args.cert_mode == "files":
        if args.tls_cert is None or args.tls_key is None:
            raise UserError("--tls-cert and --tls-key are required with --cert-mode files (or use --dev)")
        return ReloadingSSLContext(args.tls_cert, args.tls_key)
    raise UserError(f"unknown --cert-mode {args.cert_mode}")


def _uvicorn_config(app: Any, *, host: str, port: int, read_timeout: float, **extra: Any) -> uvicorn.Config:
    """Our loop (uvloop, started by ``run``), guarded httptools, our logging, no lifespan."""
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
        **extra,
    )


async def serve(
    components: Components,
    *,
    host: str,
    port: int,
    metrics_port: int = 0,
    shutdown_delay: float = 0.0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    admission_timeout: float = DEFAULT_ADMISSION_TIMEOUT,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
) -> None:
    """Run until SIGTERM/SIGINT: the HTTPS webhook, the plain-HTTP metrics port, background jobs."""
    app = create_app(
        handler=components.handler,
        readiness=components.readiness,
        max_body_bytes=max_body_bytes,
        admission_timeout=admission_timeout,
        read_timeout=read_timeout,
        on_transport_error=components.metrics.observe_http_error,
        on_internal_error=lambda _reason: components.metrics.admission_requests.labels("error").inc(),
    )
    config = _uvicorn_config(app, host=host, port=port, read_timeout=read_timeout, timeout_keep_alive=30)
    install_into_uvicorn(config, components.tls)
    server = GracefulServer(config, readiness=components.readiness, delay=shutdown_delay)
    jobs = list(components.background)
    metrics_server: uvicorn.Server | None = None
    if metrics_port:
        metrics_config = _uvicorn_config(
            components.metrics.asgi_app(), host=host, port=metrics_port, read_timeout=read_timeout
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
                await asyncio.wait_for(task, timeout=5)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``serve``: configure logging, build, run on uvloop."""
    logs.configure(level=args.log_level, fmt=args.log_format)
    try:
        components = build_components(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop

        runner: Callable[[Awaitable[None]], None] = uvloop.run  # type: ignore[assignment]
    except ImportError:  # pragma: no cover - uvloop is a dependency, but stay usable without it
        runner = asyncio.run  # type: ignore[assignment]
    log.info("serving on https://%s:%d (pid %d)", args.host, args.port, os.getpid())
    runner(
        serve(
            components,
            host=args.host,
            port=args.port,
            metrics_port=args.metrics_port,
            shutdown_delay=args.shutdown_delay,
            max_body_bytes=args.max_body_bytes,
            admission_timeout=args.admission_timeout,
            read_timeout=args.read_timeout,
        )
    )
    return 0


__all__ = ["Components", "GracefulServer", "build_components", "run", "serve"]
