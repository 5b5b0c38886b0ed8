"""The real webhook under test, as a subprocess, wired to the e2e control plane.

``WebhookProcess`` runs ``python -m webhook serve`` on a free 127.0.0.1 port with:

- certificates from the project's own ``webhook.tls.certs.write_local_certs`` (so what the
  apiserver trusts is what the project generates),
- the control plane's admin kubeconfig,
- a policy file in its own directory, rewritten atomically by ``write_policy`` (reload tests),
- its own Lease, so processes never wait for each other's leadership.

``start()`` returns once ``GET /readyz`` answers 200 over TLS (verified against the CA);
``stop()`` sends SIGTERM to the PID it started, then SIGKILL if it lingers. The combined
stdout/stderr goes to ``log_path`` (``logs()``, ``wait_for_log()``).

``register()`` creates the MutatingWebhookConfiguration pointing at the process (selecting
only namespaces labelled ``HOOK_LABEL=<name>``, so concurrent hooks and the rest of the
session do not see each other) and polls dry-run Pod creates until the webhook is seen
to act: the 1.20 apiserver picks new configurations up asynchronously.
``configuration()`` adds another configuration calling the same process, for as long as a
``with`` block runs.

:func:`registered_webhook` is the whole set-up a module's webhook fixture needs: started,
registered, seen to be called (in a throwaway namespace), and stopped by its PID,
unregistered and its directory removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.builders import wait_for
from tests.processes import LOOPBACK, Spawned, free_port
from webhook.tls.certs import write_local_certs

from .cluster import HOOK_LABEL, Namespaces, core_api
from .controlplane import KEEP, ControlPlane, register_webhook, unregister_webhook
from .process import ServeProcess, loopback_get, readyz, serve_argv, serve_env


class WebhookError(RuntimeError):
    """The webhook process could not be started or did not become ready (message has the log tail)."""


def policy_text(policy: Mapping[str, Any] | str) -> str:
    return policy if isinstance(policy, str) else yaml.safe_dump(dict(policy), sort_keys=False)


@dataclass(eq=False)
class WebhookProcess(ServeProcess):
    """One ``pullsecret-injector serve`` subprocess (see the module docstring)."""

    control_plane: ControlPlane
    name: str
    """Names the Lease, the MutatingWebhookConfiguration and the namespace label value."""
    namespace: str
    """The webhook's own namespace (``--namespace``): its Lease and Events live there."""
    policy: Mapping[str, Any] | str
    extra_args: Sequence[str] = ()
    workdir: Path | None = None
    env: Mapping[str, str | None] = field(default_factory=dict)
    """More environment for the process (``None``: not set), as a container's spec would give it."""
    metrics_port: int = 0
    """``--metrics-port`` (0: no metrics listener)."""

    port: int = field(default=0, init=False)
    startup_seconds: float = field(default=0.0, init=False)
    """From spawning the process to the first 200 from ``/readyz``."""
    registration_seconds: float = field(default=0.0, init=False)
    """From creating the MutatingWebhookConfiguration to the first mutated dry-run Pod."""
    stop_seconds: float = field(default=0.0, init=False)
    returncode: int | None = field(default=None, init=False)
    _proc: Spawned | None = field(default=None, init=False, repr=False)
    _dir: Path | None = field(default=None, init=False, repr=False)
    _certs: dict[str, Path] = field(default_factory=dict, init=False, repr=False)
    _api_client: Any = field(default=None, init=False, repr=False)  # set by register()

    # ----------------------------------------------------------------- paths

    @property
    def dir(self) -> Path:
        if self._dir is None:
            raise WebhookError("webhook not started")
        return self._dir

    @property
    def policy_path(self) -> Path:
        return self.dir / "policy" / "policy.yaml"

    @property
    def log_path(self) -> Path:
        return self.dir / "webhook.log"

    @property
    def ca_pem(self) -> bytes:
        return self._certs["ca.crt"].read_bytes()

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}/mutate"

    # ----------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 60.0) -> WebhookProcess:
        """Spawn the process and wait for ``/readyz``; a port lost to a race is retried with another."""
        if self._proc is not None:
            raise WebhookError("already started")
        # started again (a webhook coming back): the same directory, so cleanup() removes the one it made
        self._dir = self.workdir or self._dir or Path(tempfile.mkdtemp(prefix=f"psi-{self.name}-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "policy").mkdir(exist_ok=True)
        self.write_policy(self.policy)
        self._certs = write_local_certs(
            service=self.name, namespace=self.namespace, out_dir=self.dir / "certs", ip_addresses=(LOOPBACK,)
        )
        last: WebhookError | None = None
        for _ in range(3):
            try:
                self._spawn_and_wait(timeout)
                return self
            except WebhookError as err:
                last = err
                if "address already in use" not in str(err).lower():
                    break
        self.stop()
        assert last is not None
        raise last

    def _argv(self) -> list[str]:
        return serve_argv(
            policy=self.policy_path,
            certs=self._certs,
            kubeconfig=self.control_plane.kubeconfig_path,
            port=self.port,
            namespace=self.namespace,
            lease=f"{self.name}-leader",
            metrics_port=self.metrics_port,
            extra_args=self.extra_args,
        )

    def _spawn_and_wait(self, timeout: float) -> None:
        self.port = free_port()
        env = serve_env(self.env, POD_NAME=f"{self.name}-{os.getpid()}")  # the Lease identity
        t0 = time.monotonic()
        self._spawn(self._argv(), env, name=f"webhook {self.name}")
        self._wait_ready(self.ready, f"webhook {self.name} ready", timeout, WebhookError)
        self.startup_seconds = time.monotonic() - t0

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        """GET ``path`` on the webhook over verified TLS; (status, body), never raises on HTTP errors."""
        return loopback_get(self.port, path, self._certs["ca.crt"], timeout)

    def ready(self) -> bool:
        return readyz(self.port, self._certs["ca.crt"])

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int | None:
        """:meth:`ServeProcess.stop`, timed (``stop_seconds``)."""
        if self._proc is None:
            return self.returncode
        t0 = time.monotonic()
        code = super().stop(timeout, sig)
        self.stop_seconds = time.monotonic() - t0
        return code

    def cleanup(self, keep: bool = False) -> None:
        """Stop, unregister, and remove the temp dir (unless ``keep``)."""
        self.stop()
        if self._api_client is not None:
            self.unregister()
        self._remove_dir(keep)

    # ----------------------------------------------------------------- policy

    def write_policy(self, policy: Mapping[str, Any] | str) -> None:
        """Replace the policy file atomically (the server polls it by content every 2 s)."""
        target = self.policy_path
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(policy_text(policy))
        os.replace(tmp, target)

    def reload_policy(self, policy: Mapping[str, Any] | str, *, expect: str = "policy reloaded") -> float:
        """Write ``policy`` and wait for the server's log line ``expect``; returns the seconds it took.

        A policy equal to the file's current content is no change for the server (it compares
        contents), so nothing is written or awaited then.
        """
        with contextlib.suppress(OSError):
            if self.policy_path.read_text() == policy_text(policy):
                return 0.0
        mark = self.log_mark()
        t0 = time.monotonic()
        self.write_policy(policy)
        self.wait_for_log(expect, since=mark, timeout=15)
        return time.monotonic() - t0

    # ----------------------------------------------------------------- logs

    def wait_for_log(self, pattern: str, *, since: int = 0, timeout: float = 15.0) -> str:
        """Wait until a log line (after offset ``since``) matches the regex ``pattern``; returns the line."""
        regex = re.compile(pattern)

        def find() -> str | None:
            for line in self.logs(since).splitlines():
                if regex.search(line):
                    return line
            return None

        try:
            return wait_for(find, f"log line /{pattern}/ from webhook {self.name}", timeout=timeout)
        except AssertionError as err:
            raise AssertionError(f"{err}\n--- webhook log tail:\n{self.log_tail()}") from None

    def assert_healthy(self, *, since: int = 0) -> None:
        """Still running, and no traceback in the log after offset ``since`` (a test's own stretch)."""
        assert self.running, f"webhook {self.name} died:\n{self.log_tail()}"
        tracebacks = [line for line in self.logs(since).splitlines() if "Traceback" in line]
        assert not tracebacks, f"webhook {self.name} logged a traceback:\n{self.logs(since)}"

    # ----------------------------------------------------------------- registration

    def register(self, api_client: Any, *, probe: Callable[[], bool], timeout: float = 30.0, **options: Any) -> None:
        """Register this process for Pod CREATE in namespaces labelled ``HOOK_LABEL=<name>``.

        ``probe`` (typically a dry-run Pod create checking the result) is polled until it
        returns True: only then is the apiserver known to call this webhook.
        """
        t0 = time.monotonic()
        register_webhook(
            api_client,
            self.name,
            self.url,
            self.ca_pem,
            namespace_selector={"matchLabels": {HOOK_LABEL: self.name}},
            replace=True,
            **options,
        )
        self._api_client = api_client
        wait_for(probe, f"the apiserver to call webhook {self.name}", timeout=timeout, interval=0.2)
        self.registration_seconds = time.monotonic() - t0

    @contextlib.contextmanager
    def configuration(
        self, api_client: Any, name: str, *, selects: str | None = None, ca_pem: bytes | None = None, **options: Any
    ) -> Iterator[None]:
        """One more MutatingWebhookConfiguration ``name`` calling this process, deleted when the block ends.

        It selects the namespaces labelled ``HOOK_LABEL=<selects>`` (default: ``name``) and trusts
        ``ca_pem`` (default: this process's CA); ``options`` as for ``register_webhook``.
        """
        register_webhook(
            api_client,
            name,
            self.url,
            self.ca_pem if ca_pem is None else ca_pem,
            namespace_selector={"matchLabels": {HOOK_LABEL: selects or name}},
            replace=True,
            **options,
        )
        try:
            yield
        finally:
            unregister_webhook(api_client, name)

    def unregister(self) -> None:
        """Delete the MutatingWebhookConfiguration made by ``register`` (if any)."""
        if self._api_client is not None:
            unregister_webhook(self._api_client, self.name)
            self._api_client = None


@contextlib.contextmanager
def registered_webhook(
    control_plane: ControlPlane,
    api_client: Any,
    *,
    name: str,
    namespace: str,
    policy: Mapping[str, Any] | str,
    probe: Callable[[str], bool],
    keep: bool = KEEP,
    **options: Any,
) -> Iterator[WebhookProcess]:
    """A :class:`WebhookProcess` ``name`` (``options``: its other fields), started and registered.

    It yields once the API server is seen calling it: ``probe(ns)`` is polled with a namespace
    labelled ``HOOK_LABEL=<name>`` (made for this, deleted once registered) until True. Afterwards,
    or when starting fails, the process is stopped by its PID, its configuration deleted and its
    temp dir removed (kept with ``keep``, and always after a failed start, for a post-mortem).
    """
    hook = WebhookProcess(control_plane=control_plane, name=name, namespace=namespace, policy=policy, **options)
    probes = Namespaces(control_plane, core_api(api_client), hook=name)
    try:
        probe_ns = probes.one(f"{name}-probe")
        hook.start()
        hook.register(api_client, probe=lambda: probe(probe_ns))
    except BaseException:
        hook.cleanup(keep=True)
        raise
    finally:
        probes.close()
    try:
        yield hook
    finally:
        hook.cleanup(keep=keep)


__all__ = ["HOOK_LABEL", "WebhookError", "WebhookProcess", "policy_text", "registered_webhook"]
