"""``validate --cluster``: the webhook's permission preflight, run from a laptop.

The same check a replica makes before it accepts a policy (:mod:`webhook.kube.access`),
asked of the cluster with the caller's kubeconfig: about the caller's own permissions
(SelfSubjectAccessReview; run it with the webhook ServiceAccount's credentials), or, with
``--as``, about someone else, typically ``system:serviceaccount:<ns>:<name>``
(SubjectAccessReview: an admin may ask). A platform team learns which chart value to set
before the edit reaches the cluster, not after.
"""

from __future__ import annotations

from pathlib import Path

from webhook.kube.access import AccessReport, check_policy
from webhook.kube.client import build_api_client, load_configuration
from webhook.kube.control import ControlApi
from webhook.policy.matching import CompiledPolicy


def groups_of(user: str) -> list[str]:
    """The groups a ServiceAccount token authenticates with (a SubjectAccessReview must name them)."""
    parts = user.split(":")
    if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
        return ["system:serviceaccounts", f"system:serviceaccounts:{parts[2]}", "system:authenticated"]
    return ["system:authenticated"]


def cluster_preflight(
    policy: CompiledPolicy,
    *,
    kubeconfig: Path | None,
    user: str | None,
    groups: list[str] | None = None,
    timeout: float = 10.0,
) -> AccessReport:
    """Ask the cluster whether ``user`` (``None``: the caller) may do what ``policy`` needs.

    Raises ``ApiError`` / ``AccessUnknown`` when the cluster cannot be asked, and the
    client's ``ConfigException``/``OSError`` for an unusable kubeconfig.
    """
    configuration = load_configuration(kubeconfig=kubeconfig)
    api = ControlApi(build_api_client(configuration=configuration, pool_size=8))
    member_of = groups if groups is not None else (groups_of(user) if user else [])
    try:
        return check_policy(
            policy, lambda attrs: api.review_access(attrs, user=user, groups=member_of, timeout=timeout)
        )
    finally:
        api.close()


__all__ = ["cluster_preflight", "groups_of"]
