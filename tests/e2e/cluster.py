"""Objects the e2e tests make in the cluster, written once: namespaces for a webhook, Secrets, probes.

- :class:`Namespaces` creates namespaces labelled ``HOOK_LABEL=<hook>`` (so only that webhook's
  configuration selects them, and concurrent webhooks never see each other's Pods), each ready
  for Pods (its ``default`` ServiceAccount has its token), and deletes them on ``close()``;
  the ``namespaces`` fixture (conftest.py) is one per test.
- :func:`source_namespace`: a webhook's own namespace holding its source Secrets, deleted afterwards.
- :func:`dockerconfig_secret` builds a ``kubernetes.io/dockerconfigjson`` Secret, :func:`read_secret`
  reads one back (None when there is none), :func:`copy_auths` decodes its ``auths``.
- :func:`injects` / :func:`dry_run_probe`: a dry-run Pod create that comes back with a given Secret
  referenced, which is how a test knows the API server calls a webhook (1.20 picks a new
  configuration up asynchronously).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from tests.builders import b64, pod_body, pull_secrets

from .controlplane import ControlPlane

#: Namespaces carrying ``HOOK_LABEL: <webhook name>`` are the ones that webhook's configuration selects.
HOOK_LABEL = "e2e.pullsecret-injector.io/hook"
DOCKERCONFIGJSON = "kubernetes.io/dockerconfigjson"


def core_api(api_client: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api_client)


def apps_api(api_client: Any) -> Any:
    from kubernetes import client

    return client.AppsV1Api(api_client)


def delete_namespace(core: Any, name: str) -> None:
    """Delete ``name`` (asynchronously, by the namespace controller); no error if it is gone."""
    from kubernetes.client.exceptions import ApiException

    with contextlib.suppress(ApiException):
        core.delete_namespace(name)


class Namespaces:
    """Creates namespaces ready for Pods, labelled for a webhook; ``close()`` deletes them (asynchronously).

    ``hook`` (per call, else the default given here) is the webhook whose configuration selects
    the namespace; with neither, the namespace has no such label and no test webhook is called for it.
    """

    def __init__(
        self, control_plane: ControlPlane, core: Any, *, hook: str | None = None, created: list[str] | None = None
    ) -> None:
        self._control_plane = control_plane
        self._core = core
        self.hook = hook
        self.created: list[str] = [] if created is None else created

    def for_hook(self, hook: str) -> Namespaces:
        """The same factory (one list of namespaces to delete), labelling for ``hook`` by default."""
        return Namespaces(self._control_plane, self._core, hook=hook, created=self.created)

    def make(
        self,
        prefix: str = "e2e-ws",
        *,
        count: int = 1,
        hook: str | None = None,
        labels: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> list[str]:
        """``count`` new namespaces ``<prefix>-<random>`` (or the one ``name``), waited for together."""
        names = [name] if name is not None else [f"{prefix}-{uuid.uuid4().hex[:8]}" for _ in range(count)]
        hook = hook or self.hook
        for each in names:
            metadata = {"name": each, "labels": {**({HOOK_LABEL: hook} if hook else {}), **(labels or {})}}
            self._core.create_namespace({"metadata": metadata})
            self.created.append(each)
        for each in names:  # the token controller works on all of them meanwhile
            self._control_plane.wait_for_default_service_account(each)
        return names

    def one(
        self,
        prefix: str = "e2e-ws",
        *,
        hook: str | None = None,
        labels: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> str:
        return self.make(prefix, hook=hook, labels=labels, name=name)[0]

    def close(self) -> None:
        for name in self.created:
            delete_namespace(self._core, name)
        self.created.clear()


# --------------------------------------------------------------------------- Secrets


def dockerconfig_secret(name: str, auths: Mapping[str, Any], **metadata: Any) -> dict[str, Any]:
    """A ``kubernetes.io/dockerconfigjson`` Secret ``name`` holding ``{"auths": auths}``."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, **metadata},
        "type": DOCKERCONFIGJSON,
        "data": {".dockerconfigjson": b64(json.dumps({"auths": dict(auths)}))},
    }


def read_secret(core: Any, namespace: str, name: str) -> Any:
    """The Secret (a ``V1Secret``), or None when there is none."""
    from kubernetes.client.exceptions import ApiException

    try:
        return core.read_namespaced_secret(name, namespace)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def copy_auths(secret: Any) -> dict[str, dict[str, str]]:
    """The ``auths`` of a dockerconfigjson Secret the API returned (a ``V1Secret``)."""
    auths: dict[str, dict[str, str]] = json.loads(base64.b64decode(secret.data[".dockerconfigjson"]))["auths"]
    return auths


def secret_password(secret: Any, host: str) -> str:
    return str(copy_auths(secret)[host]["password"])


@contextlib.contextmanager
def source_namespace(core: Any, name: str, secrets: Iterable[Mapping[str, Any]] = ()) -> Iterator[str]:
    """The namespace ``name`` holding ``secrets`` (a webhook's own, with its sources); deleted on exit."""
    core.create_namespace({"metadata": {"name": name}})
    try:
        for secret in secrets:
            core.create_namespaced_secret(name, dict(secret))
        yield name
    finally:
        delete_namespace(core, name)


# --------------------------------------------------------------------------- probes


def injects(core: Any, image: str, secret: str) -> Callable[[str], bool]:
    """``probe(namespace)``: True when a dry-run Pod naming ``image`` in it comes back with ``secret``."""

    def probe(namespace: str) -> bool:
        pod = core.create_namespaced_pod(namespace, pod_body(image, name="probe"), dry_run="All")
        return secret in pull_secrets(pod)

    return probe


def dry_run_probe(core: Any, namespace: str, image: str, secret: str) -> Callable[[], bool]:
    """True once a dry-run Pod create in ``namespace`` comes back with ``secret`` injected."""
    return functools.partial(injects(core, image, secret), namespace)


__all__ = [
    "DOCKERCONFIGJSON",
    "HOOK_LABEL",
    "Namespaces",
    "apps_api",
    "copy_auths",
    "core_api",
    "delete_namespace",
    "dockerconfig_secret",
    "dry_run_probe",
    "injects",
    "read_secret",
    "secret_password",
    "source_namespace",
]
