"""Kubernetes Events: what a user sees with ``kubectl describe``, recorded without blocking admission."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from webhook.bounded import BoundedCache
from webhook.config import KubeSettings
from webhook.kube.client import KubeApi
from webhook.kube.errors import ApiError
from webhook.kube.objects import KubeObject
from webhook.kube.runner import Runner
from webhook.observability.logs import redact
from webhook.observability.stats import Stats

log = logging.getLogger(__name__)


def event_body(
    *, namespace: str, involved: KubeObject, reason: str, message: str, instance: str, type_: str = "Warning"
) -> KubeObject:
    """A core/v1 Event on ``involved``, written the one way every part of the webhook posts them.

    One shape for all (the recorder, the live policy, fail-open recovery) so that
    ``kubectl get events --field-selector source=pullsecret-injector`` finds them all and
    the API server's limits hold for all: a message is cut at 1,024 characters and the
    reporting instance (the Pod name) at 128. ``message`` is posted as given: redacting it is the
    caller's, who knows whether it may carry anything decoded.
    """
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": "pullsecret-injector.", "namespace": namespace},
        "involvedObject": involved,
        "reason": reason,
        "message": message[:1024],
        "type": type_,
        "source": {"component": "pullsecret-injector"},
        "reportingComponent": "pullsecret-injector",
        "reportingInstance": instance[:128],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class EventRecorder:
    """Posts core/v1 Events on a namespace when a Secret could not be provided there.

    Fire and forget: ``warn`` never blocks and never fails (the API may be the very thing
    that is down); a bounded queue drains in the background, and the same (namespace,
    reason, Secret) is posted at most once per ``event_interval``, so a crash-looping
    Deployment does not turn into an Event storm.
    """

    def __init__(self, *, api: KubeApi, runner: Runner, settings: KubeSettings, stats: Stats) -> None:
        self._api = api
        self._runner = runner
        self._settings = settings
        self._stats = stats
        self._queue: asyncio.Queue[KubeObject] = asyncio.Queue(maxsize=256)
        #: When each (namespace, reason, object) was last posted; the oldest are forgotten first,
        #: and they are the ones whose ``event_interval`` is over.
        self._last: BoundedCache[tuple[str, str, str], float] = BoundedCache(settings.cache_limits.recent_events)

    def warn(self, *, namespace: str, secret: str, reason: str, message: str) -> None:
        self._post(namespace=namespace, name=secret, reason=reason, message=message, involved=None)

    def warn_configmap(self, *, namespace: str, name: str, reason: str, message: str) -> None:
        """An Event on a ConfigMap (the policy's, when a new version is rejected)."""
        involved = {"apiVersion": "v1", "kind": "ConfigMap", "name": name, "namespace": namespace}
        self._post(namespace=namespace, name=f"configmap/{name}", reason=reason, message=message, involved=involved)

    def _post(self, *, namespace: str, name: str, reason: str, message: str, involved: dict[str, str] | None) -> None:
        now = time.monotonic()
        key = (namespace, reason, name)
        last = self._last.get(key)
        if last is not None and now - last < self._settings.event_interval:
            return
        self._last.pop(key, None)  # stored again at the end: the newest, forgotten last
        self._last[key] = now
        try:
            self._queue.put_nowait(
                self._event(namespace=namespace, reason=reason, message=redact(message), involved=involved)
            )
        except asyncio.QueueFull:
            self._stats.event("dropped")

    def _event(self, *, namespace: str, reason: str, message: str, involved: dict[str, str] | None) -> KubeObject:
        # A Namespace is cluster-scoped, but a core/v1 Event must live in the namespace
        # of its involvedObject: naming the namespace there too puts the Event where
        # `kubectl get events -n <namespace>` shows it.
        return event_body(
            namespace=namespace,
            involved=involved or {"apiVersion": "v1", "kind": "Namespace", "name": namespace, "namespace": namespace},
            reason=reason,
            message=message,
            instance=self._settings.identity,
        )

    async def run(self) -> None:
        """Drain the queue until cancelled."""
        api = self._api
        while True:
            event = await self._queue.get()
            namespace = event["metadata"]["namespace"]
            try:
                await self._runner(
                    lambda timeout: api.create_event(namespace, event, timeout=timeout),  # noqa: B023
                    timeout=self._settings.request_timeout,
                    action=f"create Event in {namespace}",
                )
            except ApiError as exc:
                self._stats.event("error")
                log.info("event in %s not recorded (%s)", namespace, exc.kind)
            except Exception:
                self._stats.event("error")
                log.exception("event in %s not recorded", namespace)
            else:
                self._stats.event("ok")


