"""The scenarios several test modules share, so that each suite reads as what it checks.

* The *shared source*: one Secret ``ops/shared`` holding Docker Hub, quay.io and an internal
  registry, and a policy of three rules (``quay`` by namespace glob, ``internal`` by namespace
  label, ``fail-closed`` with ``failurePolicy: Fail``), each copy taken from that one source.
* The *canary*: a policy whose sources carry a password that must never be seen anywhere
  (logs, warnings, Events, metrics), and the spellings a leak of it could take.
* The *pure formats*: the Docker config and the key file the docker-config and desired-copy
  tests parse and render without a cluster.

:func:`handler_for` is the admission handler a replica serves, wired to a runtime's caches and
ensurer.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from tests.builders import b64, policy_yaml, review, rule, warnings
from tests.conftest import RuntimeFactory
from tests.kube_fixtures import Cluster
from webhook.admission.handler import Handler
from webhook.admission.wire import AdmissionReviewResponse
from webhook.policy.matching import CompiledPolicy, load_policy
from webhook.runtime import KubeRuntime

# --------------------------------------------------------------------------- the shared source

HUB = base64.b64encode(b"hub-user:hub-pass").decode()
QUAY = base64.b64encode(b"quay-user:quay-pass").decode()
INTERNAL = base64.b64encode(b"int-user:int-pass").decode()
SHARED_CONFIG = {
    "auths": {
        "https://index.docker.io/v1/": {"auth": HUB},
        "quay.io": {"auth": QUAY},
        "registry.example.com:5000": {"username": "int-user", "password": "int-pass", "auth": INTERNAL},
    }
}
QUAY_ONLY = b'{"auths":{"quay.io":{"auth":"' + QUAY.encode() + b'"}}}'

EXCLUDED = ["kube-system", "ops"]
QUAY_RULE = rule(
    "quay",
    "quay.io",
    "quay-pull",
    source="ops/shared",
    namespaces={"include": ["team-*"], "exclude": ["team-private"]},
)
INTERNAL_RULE = rule(
    "internal",
    "registry.example.com:5000",
    "internal-pull",
    source="ops/shared",
    namespaces={"selector": {"matchLabels": {"internal": "yes"}}},
)
FAIL_CLOSED_RULE = rule("fail-closed", "ghcr.io", "ghcr-pull", source="ops/shared", failurePolicy="Fail")
RULES = (QUAY_RULE, INTERNAL_RULE, FAIL_CLOSED_RULE)
POLICY_TEXT = policy_yaml(*RULES, exclude=EXCLUDED)
POLICY = load_policy(POLICY_TEXT)


def handler_for(runtime: KubeRuntime, policy: CompiledPolicy = POLICY) -> Handler:
    return Handler(policy=lambda: policy, namespaces=runtime.namespaces, ensurer=runtime.ensurer)


async def shared_source(cluster: Cluster, config: dict[str, Any] = SHARED_CONFIG) -> None:
    await cluster.namespace("ops")
    await cluster.secret(
        "ops",
        "shared",
        {".dockerconfigjson": json.dumps(config)},
        labels={"argocd.argoproj.io/instance": "registry-creds"},
        annotations={"team": "platform"},
    )


async def tenants(cluster: Cluster, count: int, **labels: str) -> list[str]:
    """The shared source, and namespaces ``team-0`` .. ``team-<count-1>`` (each with ``labels``)."""
    await shared_source(cluster)
    names = [f"team-{i}" for i in range(count)]
    for name in names:
        await cluster.namespace(name, **labels)
    return names


async def copies_of(runtime: KubeRuntime, cluster: Cluster, namespaces: list[str], image: str) -> Handler:
    """Create each namespace and admit one Pod there, so that each holds its copy."""
    handler = handler_for(runtime)
    for namespace in namespaces:
        await cluster.namespace(namespace)
        response = await handler.handle(review(namespace, image))
        assert warnings(response) == []
    return handler


async def admitted_without_source(
    cluster: Cluster, make_runtime: RuntimeFactory, **settings: Any
) -> tuple[KubeRuntime, AdmissionReviewResponse]:
    """``ops`` exists but not ``ops/shared``; a replica that does not lead admits a quay.io Pod in team-a."""
    await cluster.namespace("ops")
    await cluster.namespace("team-a")
    runtime = await make_runtime(POLICY, elect=False, **settings)
    response = await handler_for(runtime).handle(review("team-a", "quay.io/acme/web:1"))
    return runtime, response


# --------------------------------------------------------------------------- the canary

CANARY = "Canary-pa55w0rd-never-log-me-4b1d"
ROTATED = "Canary-rotated-pa55w0rd-also-secret-77e0"

PULL_YES = {"selector": {"matchLabels": {"pull": "yes"}}}
GAR_KEY_SOURCE = {
    "credentials": {
        "registry": "europe-docker.pkg.dev",
        "username": "_json_key",
        "passwordFrom": {"namespace": "ops", "name": "gar-key", "key": "key.json"},
    }
}
CANARY_POLICY = load_policy(
    policy_yaml(
        rule("quay", "quay.io", "quay-pull", source="ops/shared", namespaces=PULL_YES),
        rule("gar", "*-docker.pkg.dev", "gar-pull", source=GAR_KEY_SOURCE, namespaces=PULL_YES),
        exclude=["ops"],
    )
)


def forms(secret: str) -> set[str]:
    """The spellings a leaked password could take."""
    return {
        secret,
        base64.b64encode(secret.encode()).decode(),
        base64.b64encode(f"robot:{secret}".encode()).decode(),
        json.dumps(secret)[1:-1],
    }


def config(password: str) -> str:
    auth = base64.b64encode(f"robot:{password}".encode()).decode()
    return json.dumps(
        {
            "auths": {
                "quay.io": {"username": "robot", "password": password, "auth": auth},
                "https://index.docker.io/v1/": {"username": "robot", "password": password, "auth": auth},
            }
        }
    )


def gar_key(password: str) -> str:
    return json.dumps({"type": "service_account", "private_key": password, "client_email": "ci@p.iam"}, indent=2)


# --------------------------------------------------------------------------- the pure formats

#: One quay.io entry with username, password and auth: what every source format is parsed into.
DOCKER_CONFIG = {
    "auths": {"quay.io": {"username": "quay-user", "password": "quay-pass", "auth": b64("quay-user:quay-pass")}}
}
#: A service-account key file, multi-line and full of characters JSON escapes: the hardest password.
GAR_JSON_KEY = (
    '{\n  "type": "service_account",\n'
    '  "private_key": "-----BEGIN PRIVATE KEY-----\\nMIIE\\n-----END PRIVATE KEY-----\\n"\n}'
)
