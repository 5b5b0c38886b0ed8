"""Realistic benchmark inputs: AdmissionReviews for Deployment Pods, and policies of N rules.

The Pods look like what the ReplicaSet controller sends after the ServiceAccount admission
plugin ran: ``generateName``, owner references, a large ``managedFields`` entry, an init
container, containers with env (including ``valueFrom``), ports, probes, resources and
security contexts, the projected ``kube-api-access`` token volume, default tolerations.

Two sizes of the same Pod: the full one (``compact=False``, about 14 KB for 3 containers) and
a ``compact`` one (about 6.6 KB for 3 containers) from a plainer Deployment: two env
variables, one port, a readiness probe only, and a ``managedFields`` entry of that size. The
smaller review is where the fixed per-request cost of the HTTP layer shows most.

Policies are built so that the *answer does not change with the number of rules*: one
"platform" rule serves every registry the Pods use, and the other N-1 rules are what a
large multi-team cluster has (per-team rules on the same shared registries, scoped to the
team's repositories and namespaces, team registries of their own, wildcards, selectors).
None of them applies to the benchmark Pods, but many of them are candidates for the same
hosts, so comparing 1 with 1,000 rules measures only what the extra rules cost.
"""

from __future__ import annotations

from typing import Any

import orjson
import yaml

from webhook.policy.matching import CompiledPolicy, load_policy

#: The namespace the steady-state reviews are sent from (and its labels).
NAMESPACE = "team-a"
NAMESPACE_LABELS = {
    "kubernetes.io/metadata.name": NAMESPACE,
    "team": "team-a",
    "env": "production",
    "cost-center": "cc-1042",
    "pull-secrets": "enabled",
}
PLATFORM_SECRET = "platform-pull"

#: Images the benchmark Pods use, in container order (cycled for bigger Pods).
CONTAINER_IMAGES = (
    "europe-docker.pkg.dev/my-project/web/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "nginx:1.27",
    "registry.example.com:5000/cache/redis:7",
    "quay.io/prometheus/node-exporter:v1.8.0",
    "europe-docker.pkg.dev/my-project/tools/envoy:1.30",
)
INIT_IMAGE = "europe-docker.pkg.dev/my-project/tools/migrate:1.4"
#: Registries the platform rule names (all those used above).
PLATFORM_REGISTRIES = ("*-docker.pkg.dev", "docker.io", "quay.io", "registry.example.com:5000")

_POD_TEMPLATE_HASH = "7c9f8d6b5d"


def _env(index: int, *, compact: bool = False) -> list[dict[str, Any]]:
    if compact:
        return [
            {"name": "PORT", "value": str(8080 + index)},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
        ]
    return [
        {"name": "LOG_LEVEL", "value": "info"},
        {"name": "PORT", "value": str(8080 + index)},
        {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel-collector.observability.svc:4317"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}},
        {
            "name": "DATABASE_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "web-db", "key": "password", "optional": False}},
        },
        {
            "name": "GOMEMLIMIT",
            "valueFrom": {
                "resourceFieldRef": {"containerName": f"c{index}", "resource": "limits.memory", "divisor": "0"}
            },
        },
    ]


def _probe(path: str, port: int, delay: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port, "scheme": "HTTP"},
        "initialDelaySeconds": delay,
        "timeoutSeconds": 1,
        "periodSeconds": 10,
        "successThreshold": 1,
        "failureThreshold": 3,
    }


def _container(index: int, image: str, token_volume: str, *, compact: bool = False) -> dict[str, Any]:
    port = 8080 + index
    if compact:
        return {
            "name": f"c{index}",
            "image": image,
            "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
            "env": _env(index, compact=True),
            "resources": {"limits": {"memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
            "volumeMounts": [
                {"name": token_volume, "readOnly": True, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}
            ],
            "readinessProbe": _probe("/readyz", port, 2),
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent",
        }
    return {
        "name": f"c{index}",
        "image": image,
        "args": ["--config=/etc/app/config.yaml", f"--listen=:{port}"],
        "ports": [
            {"name": "http", "containerPort": port, "protocol": "TCP"},
            {"name": "metrics", "containerPort": 9090 + index, "protocol": "TCP"},
        ],
        "env": _env(index),
        "envFrom": [{"configMapRef": {"name": "web-config"}}],
        "resources": {
            "limits": {"cpu": "1", "memory": "512Mi"},
            "requests": {"cpu": "100m", "memory": "128Mi"},
        },
        "volumeMounts": [
            {"name": "config", "readOnly": True, "mountPath": "/etc/app"},
            {"name": "tmp", "mountPath": "/var/cache/app"},
            {"name": token_volume, "readOnly": True, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
        ],
        "livenessProbe": _probe("/healthz", port, 10),
        "readinessProbe": _probe("/readyz", port, 2),
        "startupProbe": _probe("/healthz", port, 0),
        "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", "sleep 5"]}}},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
        "securityContext": {
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
        },
    }


def _managed_fields(containers: int, *, compact: bool = False) -> list[dict[str, Any]]:
    """The kube-controller-manager's ``managedFields`` entry (FieldsV1), as big as the real one."""
    spec_containers: dict[str, Any] = {}
    for index in range(containers):
        if compact:
            spec_containers[f'k:{{"name":"c{index}"}}'] = {
                ".": {},
                "f:env": {".": {}, **{f'k:{{"name":"{e["name"]}"}}': {".": {}} for e in _env(index, compact=True)}},
                "f:image": {},
                "f:name": {},
                "f:ports": {".": {}, f'k:{{"containerPort":{8080 + index},"protocol":"TCP"}}': {".": {}}},
                "f:readinessProbe": {".": {}},
            }
            continue
        spec_containers[f'k:{{"name":"c{index}"}}'] = {
            ".": {},
            "f:args": {},
            "f:env": {
                ".": {},
                **{f'k:{{"name":"{e["name"]}"}}': {".": {}, "f:name": {}, "f:value": {}} for e in _env(index)},
            },
            "f:image": {},
            "f:imagePullPolicy": {},
            "f:livenessProbe": {".": {}, "f:httpGet": {".": {}, "f:path": {}, "f:port": {}, "f:scheme": {}}},
            "f:name": {},
            "f:ports": {".": {}, f'k:{{"containerPort":{8080 + index},"protocol":"TCP"}}': {".": {}}},
            "f:readinessProbe": {".": {}, "f:httpGet": {".": {}, "f:path": {}, "f:port": {}}},
            "f:resources": {".": {}, "f:limits": {".": {}, "f:cpu": {}, "f:memory": {}}, "f:requests": {}},
            "f:securityContext": {".": {}, "f:capabilities": {".": {}, "f:drop": {}}, "f:runAsNonRoot": {}},
            "f:terminationMessagePath": {},
            "f:terminationMessagePolicy": {},
            "f:volumeMounts": {".": {}, 'k:{"mountPath":"/etc/app"}': {".": {}, "f:mountPath": {}, "f:name": {}}},
        }
    return [
        {
            "manager": "kube-controller-manager",
            "operation": "Update",
            "apiVersion": "v1",
            "time": "2026-11-24T01:00:00Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:metadata": {
                    "f:generateName": {},
                    "f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}},
                    "f:ownerReferences": {".": {}, 'k:{"uid":"5f1c2a8e-8d9b-4a43-a6f3-7b1e0c3d2f10"}': {}},
                },
                "f:spec": {
                    "f:containers": spec_containers,
                    "f:dnsPolicy": {},
                    "f:enableServiceLinks": {},
                    "f:initContainers": {'k:{"name":"migrate"}': {".": {}, "f:image": {}, "f:name": {}}},
                    "f:restartPolicy": {},
                    "f:schedulerName": {},
                    "f:securityContext": {},
                    "f:terminationGracePeriodSeconds": {},
                    "f:volumes": {".": {}, 'k:{"name":"config"}': {".": {}, "f:configMap": {}, "f:name": {}}},
                },
            },
        }
    ]


def make_pod(
    containers: int, *, namespace: str = NAMESPACE, suffix: str = "x7k2p", compact: bool = False
) -> dict[str, Any]:
    """A Pod with ``containers`` regular containers and one init container (``compact``: a plainer one)."""
    token_volume = "kube-api-access-9q8zt"
    images = [CONTAINER_IMAGES[i % len(CONTAINER_IMAGES)] for i in range(containers)]
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"web-{_POD_TEMPLATE_HASH}-",
            "namespace": namespace,
            "uid": "3e0d8c6f-2b0c-4c4e-9a51-0d5b1f7e9a21",
            "creationTimestamp": None,
            "labels": {
                "app": "web",
                "app.kubernetes.io/name": "web",
                "app.kubernetes.io/part-of": "shop",
                "pod-template-hash": _POD_TEMPLATE_HASH,
            },
            "annotations": {
                "kubectl.kubernetes.io/restartedAt": "2026-11-20T09:12:44Z",
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9090",
            },
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"web-{_POD_TEMPLATE_HASH}",
                    "uid": "5f1c2a8e-8d9b-4a43-a6f3-7b1e0c3d2f10",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
            "managedFields": _managed_fields(containers, compact=compact),
        },
        "spec": {
            "volumes": [
                {"name": "config", "configMap": {"name": "web-config", "defaultMode": 420}},
                {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                {
                    "name": token_volume,
                    "projected": {
                        "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                            {
                                "downwardAPI": {
                                    "items": [
                                        {
                                            "path": "namespace",
                                            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                                        }
                                    ]
                                }
                            },
                        ],
                        "defaultMode": 420,
                    },
                },
            ],
            "initContainers": [
                {
                    "name": "migrate",
                    "image": INIT_IMAGE,
                    "command": ["/migrate", "--up"],
                    "env": _env(99, compact=True) if compact else _env(99)[:4],
                    "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
                    "volumeMounts": [
                        {
                            "name": token_volume,
                            "readOnly": True,
                            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                        }
                    ],
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "imagePullPolicy": "IfNotPresent",
                }
            ],
            "containers": [_container(i, image, token_volume, compact=compact) for i, image in enumerate(images)],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "web",
            "serviceAccount": "web",
            "securityContext": {"runAsUser": 10001, "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
            "affinity": {
                "podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 100,
                            "podAffinityTerm": {
                                "labelSelector": {"matchLabels": {"app": "web"}},
                                "topologyKey": "kubernetes.io/hostname",
                            },
                        }
                    ]
                }
            },
            "schedulerName": "default-scheduler",
            "tolerations": [
                {
                    "key": "node.kubernetes.io/not-ready",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
                {
                    "key": "node.kubernetes.io/unreachable",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
            ],
            "priority": 0,
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {"phase": "Pending", "qosClass": "Burstable"},
    }
    if compact:
        # No config volumes to mount and no scheduling preferences.
        spec = pod["spec"]
        spec["volumes"] = [v for v in spec["volumes"] if v["name"] == token_volume]
        del spec["affinity"]
    return pod


def make_review(
    containers: int, *, namespace: str = NAMESPACE, uid: str | None = None, compact: bool = False
) -> dict[str, Any]:
    """An ``admission.k8s.io/v1`` AdmissionReview for a Pod CREATE from the ReplicaSet controller."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid or f"bench-{containers:04d}-0000-0000-000000000000",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "0c1a6d3e-90a4-4b8f-8e0e-5d6c2b7e4f11",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
            },
            "object": make_pod(containers, namespace=namespace, compact=compact),
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def review_bodies(containers: int, count: int, *, namespace: str = NAMESPACE, compact: bool = False) -> list[bytes]:
    """``count`` encoded reviews of the same Pod with distinct uids (as the API server sends them)."""
    return [
        orjson.dumps(
            make_review(containers, namespace=namespace, uid=f"bench-{containers:04d}-{i:012d}", compact=compact)
        )
        for i in range(count)
    ]


# --------------------------------------------------------------------------- policies


def _platform_rule() -> dict[str, Any]:
    return {
        "name": "platform",
        "registries": list(PLATFORM_REGISTRIES),
        "secret": PLATFORM_SECRET,
        "source": {"secret": {"namespace": "pullsecret-system", "name": "platform-credentials"}},
    }


def _filler_rule(i: int) -> dict[str, Any]:
    """Rule ``i`` of a big multi-team policy; never applies to the benchmark Pods in ``team-a``.

    The mix (by ``i % 10``): 3/10 per-team rules on the shared registries the Pods use
    (candidates for every review, ruled out by repository or namespace), 1/10 of those
    with a namespace selector, 4/10 team registries of their own (exact hosts, some with a
    port), 2/10 wildcards (one with the same label count as the Pods' hosts).
    """
    team = f"team{i:04d}"
    secret = f"{team}-pull"
    source = {"secret": {"namespace": "pullsecret-system", "name": f"{team}-credentials"}}
    kind = i % 10
    rule: dict[str, Any] = {"name": f"{team}-r{kind}", "secret": secret, "source": source}
    if kind in (0, 1):
        # Per-team on the shared Artifact Registry host: exact host, so ranked above the platform rule.
        rule["registries"] = ["europe-docker.pkg.dev"]
        rule["repositories"] = [f"{team}/*"]
        rule["namespaces"] = {"include": [f"{team}", f"{team}-*"]}
    elif kind == 2:
        # Per-team Docker Hub organisation, every namespace except the sandbox.
        rule["registries"] = ["docker.io"]
        rule["repositories"] = [f"{team}/*", f"{team}-mirror/*"]
        rule["namespaces"] = {"exclude": ["sandbox-*"]}
    elif kind == 3:
        # Opt-in by namespace label on quay.io.
        rule["registries"] = ["quay.io"]
        rule["repositories"] = [f"{team}/*"]
        rule["namespaces"] = {"selector": {"matchLabels": {"team": team}}}
    elif kind in (4, 5, 6):
        rule["registries"] = [f"registry.{team}.corp.example"]
    elif kind == 7:
        rule["registries"] = [f"registry.{team}.corp.example:5000", f"mirror.{team}.corp.example"]
        rule["namespaces"] = {"include": [f"{team}-*"]}
    elif kind == 8:
        rule["registries"] = [f"*.{team}.corp.example"]
    else:
        # Three labels, like europe-docker.pkg.dev and registry.example.com: scanned on a host-cache miss.
        rule["registries"] = [f"{team}-*.pkg.dev"]
    return rule


def policy_document(rules: int) -> dict[str, Any]:
    """A policy of ``rules`` rules (>= 1): the platform rule first, then the multi-team mix."""
    if rules < 1:
        raise ValueError("a benchmark policy has at least one rule")
    return {
        "excludeNamespaces": ["kube-system", "kube-public", "kube-node-lease"],
        "rules": [_platform_rule(), *(_filler_rule(i) for i in range(1, rules))],
    }


def policy_yaml(rules: int) -> str:
    return yaml.safe_dump(policy_document(rules), sort_keys=False)


def make_policy(rules: int) -> CompiledPolicy:
    return load_policy(policy_yaml(rules))


# --------------------------------------------------------------------------- cluster state (RSS)


def namespace_labels(index: int) -> dict[str, str]:
    """Labels of namespace ``index`` in a 10,000-namespace cluster (about what real ones carry)."""
    name = namespace_name(index)
    labels = {
        "kubernetes.io/metadata.name": name,
        "team": f"team{index % 997:04d}",
        "env": ("production", "staging", "dev")[index % 3],
        "cost-center": f"cc-{index % 211}",
        "app.kubernetes.io/managed-by": "argocd",
    }
    if index % 2 == 0:
        labels["pull-secrets"] = "enabled"
    return labels


def namespace_name(index: int) -> str:
    return f"team{index % 997:04d}-svc-{index:05d}"
