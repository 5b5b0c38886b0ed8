"""Pods on the e2e node (``node.py``): their spec, running one to its end, and reading what happened.

Pods for the node set ``nodeName`` (there is no scheduler), ``hostNetwork: true`` (no Pod
network: the loopback CNI config exists only so the node is Ready) and ``imagePullPolicy:
Always`` on every container (otherwise the node's image cache would hide a missing Secret).
The kubelet cannot serve logs to the API server, so the test images write
``/dev/termination-log`` (:func:`finishing`) and the tests read ``termination_messages``.

On a timeout, :func:`wait_pod` tells the Pod's story (status, Events, the kubelet's last
lines), which is what a failure on a shared machine needs to be understood.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.builders import wait_for
from tests.processes import tail

from .node import Node

#: Generous bounds for the node itself (image pull + container start on 2 shared cores).
POD_TIMEOUT = 90.0
BACKOFF_TIMEOUT = 90.0


def finishing(message: str) -> list[str]:
    """An entrypoint that writes ``message`` as its termination message and exits 0."""
    return ["/bin/sh", "-c", f"printf '{message}' > /dev/termination-log"]


def node_pod_spec(node: Node, *images: str, init: str | None = None, restart_policy: str = "Never") -> dict[str, Any]:
    """A Pod spec for the node: bound to it (no scheduler), host network (no CNI), every image pulled."""
    spec: dict[str, Any] = {
        "nodeName": node.name,
        "hostNetwork": True,
        "restartPolicy": restart_policy,
        "terminationGracePeriodSeconds": 2,
        "enableServiceLinks": False,
        "containers": [
            {"name": f"c{i}", "image": image, "imagePullPolicy": "Always"} for i, image in enumerate(images)
        ],
    }
    if init is not None:
        spec["initContainers"] = [{"name": "init", "image": init, "imagePullPolicy": "Always"}]
    return spec


def node_pod(
    node: Node, name: str, *images: str, init: str | None = None, restart_policy: str = "Never"
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": node_pod_spec(node, *images, init=init, restart_policy=restart_policy),
    }


def node_deployment(node: Node, name: str, image: str, *, replicas: int) -> dict[str, Any]:
    """A Deployment of ``replicas`` Pods ``app=<name>`` running ``image`` on the node (restartPolicy Always)."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": node_pod_spec(node, image, restart_policy="Always")},
        },
    }


def describe(core: Any, node: Node, namespace: str, name: str) -> str:
    """The Pod's status, its Events and the kubelet's last lines: what a timeout message needs."""
    try:
        pod = core.read_namespaced_pod(name, namespace)
        status = json.dumps(core.api_client.sanitize_for_serialization(pod.status), indent=1)[:4000]
        events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
        lines = "\n".join(f"  {e.reason}: {e.message}" for e in events)
    except Exception as err:  # diagnostics only: never hide the original failure
        return f"(could not read Pod {namespace}/{name}: {err})"
    return f"Pod {namespace}/{name} status:\n{status}\nEvents:\n{lines}\n--- kubelet:\n{tail(node.log('kubelet'), 15)}"


def wait_pod(
    core: Any, node: Node, namespace: str, name: str, check: Callable[[Any], bool], what: str, timeout: float
) -> tuple[Any, float]:
    """Poll the Pod until ``check(pod)``; (the Pod, seconds waited). On timeout, the Pod's story."""
    t0 = time.monotonic()

    def ready() -> Any:
        pod = core.read_namespaced_pod(name, namespace)
        return pod if check(pod) else None

    try:
        pod = wait_for(ready, f"Pod {namespace}/{name} {what}", timeout=timeout, interval=0.25)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{describe(core, node, namespace, name)}") from None
    return pod, time.monotonic() - t0


def finished(pod: Any) -> bool:
    return pod.status.phase in ("Succeeded", "Failed")


def waiting_reasons(pod: Any) -> dict[str, str]:
    """container name -> waiting reason (init containers included)."""
    statuses = (pod.status.init_container_statuses or []) + (pod.status.container_statuses or [])
    return {s.name: s.state.waiting.reason for s in statuses if s.state and s.state.waiting}


def in_pull_backoff(pod: Any) -> bool:
    return "ImagePullBackOff" in waiting_reasons(pod).values()


def termination_messages(pod: Any) -> dict[str, str]:
    statuses = (pod.status.init_container_statuses or []) + (pod.status.container_statuses or [])
    return {s.name: s.state.terminated.message for s in statuses if s.state and s.state.terminated}


@dataclass(frozen=True)
class Ran:
    """A Pod run to its end: as admitted (what the webhook made of it) and as it finished."""

    created: Any
    pod: Any
    seconds: float
    """From the create to the Pod seen finished."""
    waited: float
    """From the create's answer to the Pod seen finished."""


def succeeded(
    core: Any,
    node: Node,
    namespace: str,
    name: str,
    *,
    messages: dict[str, str] | None = None,
    timeout: float = POD_TIMEOUT,
) -> tuple[Any, float]:
    """Wait until the Pod ``name`` finished and check it Succeeded; (the Pod, seconds waited).

    ``messages``: the termination message each container must have written (the private
    images themselves ran). A failure carries the Pod's story.
    """
    pod, waited = wait_pod(core, node, namespace, name, finished, "finished", timeout)
    assert pod.status.phase == "Succeeded", describe(core, node, namespace, name)
    if messages is not None:
        assert termination_messages(pod) == messages, "the private images themselves ran"
    return pod, waited


def run_pod(
    core: Any,
    node: Node,
    namespace: str,
    name: str,
    *images: str,
    init: str | None = None,
    messages: dict[str, str] | None = None,
    timeout: float = POD_TIMEOUT,
) -> Ran:
    """Create the Pod ``name`` on the node and wait until it :func:`succeeded`."""
    t0 = time.monotonic()
    created = core.create_namespaced_pod(namespace, node_pod(node, name, *images, init=init))
    pod, waited = succeeded(core, node, namespace, name, messages=messages, timeout=timeout)
    return Ran(created=created, pod=pod, seconds=time.monotonic() - t0, waited=waited)


def pull_failure_messages(core: Any, namespace: str, name: str) -> list[str]:
    """The kubelet's "Failed" Events for the Pod (what the runtime said about the pull)."""
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return [e.message for e in events if e.reason == "Failed"]


def assert_pulls_unauthorized(core: Any, namespace: str, name: str) -> None:
    messages = pull_failure_messages(core, namespace, name)
    assert any("401" in m or "unauthorized" in m.lower() for m in messages), (
        f"the pull should fail on authentication: {messages}"
    )


__all__ = [
    "BACKOFF_TIMEOUT",
    "POD_TIMEOUT",
    "Ran",
    "assert_pulls_unauthorized",
    "describe",
    "finished",
    "finishing",
    "in_pull_backoff",
    "node_deployment",
    "node_pod",
    "node_pod_spec",
    "pull_failure_messages",
    "run_pod",
    "succeeded",
    "termination_messages",
    "wait_pod",
    "waiting_reasons",
]
