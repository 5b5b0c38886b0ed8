"""Acceptance (issue 12, item 3): fail-open recovery's own RBAC, installed by real Helm, judged by the real authorizer.

With ``recovery.enabled`` the chart adds a ClusterRole allowing exactly what
:class:`webhook.kube.pods.PodApi` calls (``list`` and ``delete`` on ``pods``); without it, the
chart's ServiceAccount cannot touch a Pod at all. SubjectAccessReviews ask the API server
itself, for the ServiceAccount, before and after ``helm upgrade`` turns recovery on, then off.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from .chart_support import (
    HelmRelease,
    chart_copy,
    service_account_groups,
    service_account_user,
    subject_access_review,
)
from .controlplane import ControlPlane

RELEASE = "psi-rec"
FULLNAME = f"{RELEASE}-pullsecret-injector"
VALUES: dict[str, Any] = {
    "replicaCount": 1,
    "podDisruptionBudget": {"enabled": False},  # no policy/v1 in 1.20 (see chart_support.py)
    "certificates": {"mode": "self"},
}
#: (verb, allowed with recovery on). Only what PodApi calls; nothing else on Pods, ever.
POD_VERBS = [("list", True), ("delete", True), ("get", False), ("watch", False), ("update", False), ("create", False)]


@pytest.fixture(scope="module")
def release(
    control_plane: ControlPlane, api_client: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HelmRelease]:
    from kubernetes import client

    namespace = f"psi-rec-{uuid.uuid4().hex[:6]}"
    core: Any = client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": namespace}})
    chart_dir = chart_copy(tmp_path_factory.mktemp("chart") / "pullsecret-injector")
    helm = HelmRelease(control_plane, RELEASE, namespace, chart_dir, VALUES)
    helm.install()
    try:
        yield helm
    finally:
        if helm.installed:
            helm.uninstall()
        core.delete_namespace(namespace)


def _allowed(api_client: Any, release: HelmRelease, verb: str) -> bool:
    allowed, _ = subject_access_review(
        api_client,
        user=service_account_user(release.namespace, FULLNAME),
        groups=service_account_groups(release.namespace),
        verb=verb,
        resource="pods",
        namespace="some-team",
        name=None if verb in ("list", "watch", "create") else "web-7d9f-abcde",
    )
    return allowed


def test_recovery_rbac_follows_the_value(release: HelmRelease, api_client: Any) -> None:
    assert {verb: _allowed(api_client, release, verb) for verb, _ in POD_VERBS} == dict.fromkeys(
        (v for v, _ in POD_VERBS), False
    ), "recovery off (the default): no Pod permission at all"

    release.values = {**VALUES, "recovery": {"enabled": True}}
    release.upgrade()
    assert {verb: _allowed(api_client, release, verb) for verb, _ in POD_VERBS} == dict(POD_VERBS)
    args = next(
        c["args"]
        for d in release.rendered("Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
        if c["name"] == "webhook"
    )
    assert "--recover-fail-open" in args

    release.values = dict(VALUES)
    release.upgrade()
    assert not any(_allowed(api_client, release, verb) for verb, _ in POD_VERBS), "recovery off again: taken away"
