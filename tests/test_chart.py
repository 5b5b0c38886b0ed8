"""Tests of the Helm chart (charts/pullsecret-injector), the Dockerfile and .dockerignore.

The chart is linted and rendered by real Helm, through ``helm_sdkpy`` (Helm's Go
SDK as a shared library). ``helm_sdkpy`` exposes no ``helm template``: its
``Install``/``Upgrade`` always talk to a cluster. So :class:`FakeApiServer`
plays a tiny in-memory kube-apiserver on 127.0.0.1: discovery for the kinds
the chart uses, create/get/list/patch/delete of objects, and Helm's release
storage (Secrets that client-go sends as protobuf). Helm renders the chart
exactly as it would for ``helm install`` (schema validation, ``fail``,
``lookup`` against the fake server) and returns the manifest, hooks and notes
in the release, which these tests parse.

``helm_sdkpy`` is a hard requirement: when it is missing the tests fail, they
are not skipped (CI installs it).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import hashlib
import http.server
import json
import re
import shutil
import ssl
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.builders import JsonHandler
from webhook.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "pullsecret-injector"
CI_DIR = CHART / "ci"
CI_VALUES = sorted(p.stem.removesuffix("-values") for p in CI_DIR.glob("*-values.yaml"))
NAMESPACE = "pullsecret-system"
RELEASE = "pullsecret-injector"
FULLNAME = "pullsecret-injector"
SKIP_LABEL = "pullsecret-injector.io/skip"
WEBHOOK_PATH = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/" + FULLNAME

Obj = dict[str, Any]


def _helm() -> Any:
    """Import helm_sdkpy; a missing library is a test failure, never a skip."""
    try:
        import helm_sdkpy
    except ImportError as exc:  # pragma: no cover - exercised only on a broken set-up
        pytest.fail(f"helm_sdkpy is required for the chart tests (pip install helm-sdkpy): {exc}")
    return helm_sdkpy


# --------------------------------------------------------------------------- fake API server

#: (group, version) -> [(resource, kind, namespaced)] served by the fake API.
API_RESOURCES: dict[tuple[str, str], list[tuple[str, str, bool]]] = {
    ("", "v1"): [
        ("configmaps", "ConfigMap", True),
        ("secrets", "Secret", True),
        ("services", "Service", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("pods", "Pod", True),
        ("namespaces", "Namespace", False),
        ("events", "Event", True),
    ],
    ("apps", "v1"): [("deployments", "Deployment", True)],
    ("policy", "v1"): [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    ("rbac.authorization.k8s.io", "v1"): [
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False),
        ("roles", "Role", True),
        ("rolebindings", "RoleBinding", True),
    ],
    ("admissionregistration.k8s.io", "v1"): [("mutatingwebhookconfigurations", "MutatingWebhookConfiguration", False)],
    ("coordination.k8s.io", "v1"): [("leases", "Lease", True)],
    ("cert-manager.io", "v1"): [("issuers", "Issuer", True), ("certificates", "Certificate", True)],
    ("monitoring.coreos.com", "v1"): [("servicemonitors", "ServiceMonitor", True)],
}
KIND_OF = {res: kind for resources in API_RESOURCES.values() for res, kind, _ in resources}
OBJECT_PATH = re.compile(r"/(?:api/v1|apis/[^/]+/[^/]+)(?:/namespaces/[^/]+)?/([^/]+)(?:/([^/]+))?")
GROUP_VERSION_PATH = re.compile(r"/api/(v1)|/apis/([^/]+)/([^/]+)")


def _protobuf_fields(data: bytes) -> Iterator[tuple[int, bytes | int]]:
    """Minimal protobuf wire-format reader (enough for a core/v1 Secret)."""

    def varint(pos: int) -> tuple[int, int]:
        result = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return result, pos

    pos = 0
    while pos < len(data):
        key, pos = varint(pos)
        number, wire_type = key >> 3, key & 7
        value: bytes | int
        if wire_type == 0:
            value, pos = varint(pos)
        elif wire_type == 2:
            length, pos = varint(pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire_type == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire_type == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        yield number, value


def _pb_bytes(fields: dict[int, bytes | int], number: int) -> bytes:
    value = fields.get(number, b"")
    return value if isinstance(value, bytes) else b""


def decode_protobuf_secret(body: bytes) -> Obj:
    """Decode the ``k8s\\0``-framed protobuf Secret Helm's release driver sends."""
    if not body.startswith(b"k8s\x00"):
        raise ValueError("not a Kubernetes protobuf envelope")
    raw = _pb_bytes(dict(_protobuf_fields(body[4:])), 2)
    meta: Obj = {"labels": {}}
    data: dict[str, str] = {}
    secret_type = ""
    for number, value in _protobuf_fields(raw):
        if not isinstance(value, bytes):
            continue
        if number == 1:  # ObjectMeta
            for meta_number, meta_value in _protobuf_fields(value):
                if not isinstance(meta_value, bytes):
                    continue
                if meta_number == 1:
                    meta["name"] = meta_value.decode()
                elif meta_number == 11:  # labels map entry
                    entry = dict(_protobuf_fields(meta_value))
                    meta["labels"][_pb_bytes(entry, 1).decode()] = _pb_bytes(entry, 2).decode()
        elif number == 2:  # data map entry
            entry = dict(_protobuf_fields(value))
            data[_pb_bytes(entry, 1).decode()] = base64.b64encode(_pb_bytes(entry, 2)).decode()
        elif number == 3:
            secret_type = value.decode()
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": data, "type": secret_type}


class FakeApiServer:
    """An in-memory stand-in for kube-apiserver, just enough for Helm install/upgrade/uninstall."""

    def __init__(self) -> None:
        self.objects: dict[str, Obj] = {}
        self.lock = threading.Lock()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeApiServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    @property
    def kubeconfig(self) -> str:
        port = self.httpd.server_address[1]
        return yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "fake", "user": {"token": "fake"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "current-context": "fake",
            }
        )

    def kinds(self) -> list[str]:
        with self.lock:
            return sorted(str(o.get("kind")) for o in self.objects.values())

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(JsonHandler):
            protocol_version = "HTTP/1.1"

            def _not_found(self) -> None:
                self.send_json(
                    404,
                    {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404},
                )

            def _handle(self) -> None:
                url = urllib.parse.urlparse(self.path)
                reply = server.respond(self.command, url.path, urllib.parse.parse_qs(url.query), self.read_body())
                if reply is None:
                    self._not_found()
                else:
                    self.send_json(*reply)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        return Handler

    def respond(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> tuple[int, Obj] | None:
        if path == "/version":
            return 200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0", "platform": "linux/amd64"}
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if path == "/apis":
            groups = [
                {
                    "name": group,
                    "versions": [{"groupVersion": f"{group}/{version}", "version": version}],
                    "preferredVersion": {"groupVersion": f"{group}/{version}", "version": version},
                }
                for group, version in API_RESOURCES
                if group
            ]
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        gv = GROUP_VERSION_PATH.fullmatch(path)
        if gv:
            key = ("", "v1") if gv.group(1) else (gv.group(2), gv.group(3))
            if key not in API_RESOURCES:
                return None
            verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
            resources = [
                {"name": r, "singularName": k.lower(), "namespaced": ns, "kind": k, "verbs": verbs}
                for r, k, ns in API_RESOURCES[key]
            ]
            group_version = f"{key[0]}/{key[1]}" if key[0] else key[1]
            return 200, {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": group_version,
                "resources": resources,
            }
        match = OBJECT_PATH.fullmatch(path)
        if not match or match.group(1) not in KIND_OF:
            return None
        resource, name = match.groups()
        collection = path.rsplit("/", 1)[0] if name else path
        with self.lock:
            if method == "GET" and name:
                found = self.objects.get(path)
                return (200, found) if found else None
            if method == "GET":
                selector = dict(
                    term.split("=", 1) for term in query.get("labelSelector", [""])[0].split(",") if "=" in term
                )
                items = [
                    o
                    for p, o in self.objects.items()
                    if p.rsplit("/", 1)[0] == collection
                    and all(o["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())
                ]
                return 200, {
                    "kind": KIND_OF[resource] + "List",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": "1"},
                    "items": items,
                }
            if method in ("POST", "PUT"):
                obj = json.loads(body) if body.startswith(b"{") else decode_protobuf_secret(body)
                obj.setdefault("metadata", {}).setdefault("uid", str(uuid.uuid4()))
                obj["metadata"]["resourceVersion"] = "1"
                self.objects[f"{collection}/{obj['metadata']['name']}" if method == "POST" else path] = obj
                return (201 if method == "POST" else 200), obj
            if method == "PATCH":
                # Helm 3-way merge patches; the fake keeps the live object as it is.
                found = self.objects.get(path)
                return (200, found) if found else None
            if method == "DELETE":
                self.objects.pop(path, None)
                return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
        return None


# --------------------------------------------------------------------------- rendering helpers


@dataclass
class Rendered:
    """A release rendered by Helm: regular manifests, hook manifests and NOTES."""

    values: Obj
    manifests: list[Obj]
    hooks: list[Obj]
    notes: str
    raw_manifest: str = field(repr=False)

    def all(self, kind: str) -> list[Obj]:
        return [m for m in self.manifests if m.get("kind") == kind]

    def one(self, kind: str, name: str | None = None) -> Obj:
        found = [m for m in self.all(kind) if name is None or m["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    @property
    def webhook(self) -> Obj:
        config = self.one("MutatingWebhookConfiguration")
        assert len(config["webhooks"]) == 1
        webhook: Obj = config["webhooks"][0]
        return webhook

    @property
    def pod_spec(self) -> Obj:
        spec: Obj = self.one("Deployment")["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> Obj:
        containers: list[Obj] = self.pod_spec["containers"]
        assert len(containers) == 1
        return containers[0]

    @property
    def args(self) -> list[str]:
        return [str(a) for a in self.container["args"]]


def deep_merge(base: Obj, override: Obj) -> Obj:
    """Merge values the way Helm coalesces them: maps recursively, anything else replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_yaml(path: Path) -> Obj:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    return loaded


def ci_values(name: str) -> Obj:
    return load_yaml(CI_DIR / f"{name}-values.yaml")


def default_values() -> Obj:
    return load_yaml(CHART / "values.yaml")


def _parse_manifests(text: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]


def _to_rendered(values: Obj, release: Obj) -> Rendered:
    hooks = [doc for hook in release.get("hooks") or [] for doc in _parse_manifests(hook["manifest"])]
    return Rendered(
        values=deep_merge(default_values(), values),
        manifests=_parse_manifests(release["manifest"]),
        hooks=hooks,
        notes=str(release.get("info", {}).get("notes", "")),
        raw_manifest=release["manifest"],
    )


def helm_install(api: FakeApiServer, values: Obj, *, skip_schema_validation: bool = False) -> Rendered:
    helm = _helm()
    config = helm.Configuration(namespace=NAMESPACE, kubeconfig=api.kubeconfig)
    release = asyncio.run(
        helm.Install(config).run(
            RELEASE,
            str(CHART),
            values=values,
            wait=False,
            timeout=60,
            skip_schema_validation=skip_schema_validation,
        )
    )
    return _to_rendered(values, release)


def render(values: Obj, *, skip_schema_validation: bool = False) -> Rendered:
    """``helm install`` into a fresh fake cluster; returns what Helm rendered."""
    with FakeApiServer() as api:
        return helm_install(api, values, skip_schema_validation=skip_schema_validation)


_CACHE: dict[str, Rendered] = {}


def render_ci(name: str) -> Rendered:
    if name not in _CACHE:
        _CACHE[name] = render(ci_values(name))
    return _CACHE[name]


@pytest.fixture(params=CI_VALUES)
def ci(request: pytest.FixtureRequest) -> Rendered:
    """The chart rendered with each ci/*-values.yaml."""
    return render_ci(str(request.param))


def cert_mode(r: Rendered) -> str:
    return str(r.values["certificates"]["mode"])


def service_dns_names(service: str = FULLNAME, namespace: str = NAMESPACE) -> list[str]:
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


# --------------------------------------------------------------------------- lint


def test_ci_values_cover_every_cert_mode() -> None:
    modes = {str(ci_values(name).get("certificates", {}).get("mode", "self")) for name in CI_VALUES}
    assert modes == {"self", "cert-manager", "manual"}
    assert {"self", "cert-manager", "manual"} <= set(CI_VALUES)


@pytest.mark.parametrize("values_name", ["default", *CI_VALUES], ids=["default", *CI_VALUES])
def test_helm_lint(values_name: str, tmp_path: Path) -> None:
    """``helm lint --strict`` equivalent for every ci values file.

    helm_sdkpy's Lint takes no values, so the chart is copied and its
    values.yaml replaced by the defaults merged with the ci file.
    """
    helm = _helm()
    chart = tmp_path / "pullsecret-injector"
    shutil.copytree(CHART, chart)
    if values_name != "default":
        merged = deep_merge(default_values(), ci_values(values_name))
        (chart / "values.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    config = helm.Configuration(namespace=NAMESPACE)
    result = asyncio.run(helm.Lint(config).run(str(chart)))
    assert result["TotalChartsLinted"] == 1
    # Severity: 1 info, 2 warning, 3 error (the Go error text does not survive the FFI).
    problems = [m for m in result.get("Messages") or [] if m["Severity"] >= 2]
    assert not problems, f"lint warnings/errors in {[m['Path'] for m in problems]}"
    assert not result.get("Errors")


# --------------------------------------------------------------------------- webhook configuration


def test_webhook_configuration(ci: Rendered) -> None:
    values = ci.values
    config = ci.one("MutatingWebhookConfiguration")
    assert config["metadata"]["name"] == FULLNAME
    annotations = config["metadata"].get("annotations") or {}
    # A normal release resource: deleted by helm uninstall, never kept or hooked.
    assert "helm.sh/hook" not in annotations
    assert "helm.sh/resource-policy" not in annotations
    assert not [h for h in ci.hooks if h["kind"] == "MutatingWebhookConfiguration"]

    webhook = ci.webhook
    assert webhook["admissionReviewVersions"] == ["v1"]
    pods = {"apiGroups": [""], "apiVersions": ["v1"], "scope": "Namespaced"}
    expected_rules = [{"operations": ["CREATE"], "resources": ["pods"], **pods}]
    if values["policy"].get("mirrors"):  # kubectl debug's containers are rewritten too
        expected_rules.append({"operations": ["UPDATE"], "resources": ["pods/ephemeralcontainers"], **pods})
    assert webhook["rules"] == expected_rules
    assert webhook["sideEffects"] == "NoneOnDryRun"
    assert webhook["failurePolicy"] == values["webhook"]["failurePolicy"]
    assert webhook["timeoutSeconds"] == values["webhook"]["timeoutSeconds"]
    assert webhook["reinvocationPolicy"] == "IfNeeded"
    assert webhook["matchPolicy"] == "Equivalent"
    assert webhook["clientConfig"]["service"] == {
        "name": FULLNAME,
        "namespace": NAMESPACE,
        "path": "/mutate",
        "port": 443,
    }

    expressions = webhook["namespaceSelector"]["matchExpressions"]
    ns_expr = next(e for e in expressions if e["key"] == "kubernetes.io/metadata.name")
    assert ns_expr["operator"] == "NotIn"
    assert {NAMESPACE, "kube-system", *values["webhook"]["excludeNamespaces"]} <= set(ns_expr["values"])
    literal_policy_excludes = {n for n in values["policy"]["excludeNamespaces"] if "*" not in n}
    assert literal_policy_excludes <= set(ns_expr["values"])
    assert len(ns_expr["values"]) == len(set(ns_expr["values"]))

    assert {"key": SKIP_LABEL, "operator": "NotIn", "values": ["true"]} in webhook["objectSelector"]["matchExpressions"]


def test_webhook_defaults_are_fail_open() -> None:
    webhook = render_ci("self").webhook
    assert webhook["failurePolicy"] == "Ignore"
    assert webhook["timeoutSeconds"] == 5


def test_webhook_strict_settings_from_values() -> None:
    r = render_ci("ha")
    assert r.webhook["failurePolicy"] == "Fail"
    assert r.webhook["timeoutSeconds"] == 10
    excluded = r.webhook["namespaceSelector"]["matchExpressions"][0]["values"]
    assert {"cert-manager", "monitoring"} <= set(excluded)


def test_webhook_extra_selectors_are_anded() -> None:
    extra = {"key": "pull-secrets", "operator": "In", "values": ["enabled"]}
    obj_extra = {"key": "team", "operator": "Exists"}
    r = render({"webhook": {"namespaceSelectorExpressions": [extra], "objectSelectorExpressions": [obj_extra]}})
    assert extra in r.webhook["namespaceSelector"]["matchExpressions"]
    assert obj_extra in r.webhook["objectSelector"]["matchExpressions"]
    assert r.webhook["objectSelector"]["matchExpressions"][0]["key"] == SKIP_LABEL


# --------------------------------------------------------------------------- deployment


def test_deployment_is_hardened(ci: Rendered) -> None:
    deployment = ci.one("Deployment")
    assert deployment["spec"]["replicas"] == ci.values["replicaCount"]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = ci.pod_spec
    assert pod["serviceAccountName"] == FULLNAME
    pod_sc = pod["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == 65532
    assert pod_sc["runAsGroup"] == 65532
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = ci.container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert isinstance(sc["runAsUser"], int)
    assert sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}

    resources = ci.container["resources"]
    assert resources["requests"]["cpu"]
    assert resources["requests"]["memory"]
    assert resources["limits"]["memory"]


def test_default_replicas_and_anti_affinity() -> None:
    r = render_ci("self")
    assert r.one("Deployment")["spec"]["replicas"] == 2
    terms = r.pod_spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert terms[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selector = terms[0]["podAffinityTerm"]["labelSelector"]["matchLabels"]
    assert selector == r.one("Deployment")["spec"]["selector"]["matchLabels"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in r.pod_spec["affinity"]["podAntiAffinity"]


@pytest.mark.parametrize("host_network", [False, True], ids=["pod-network", "host-network"])
def test_host_network(host_network: bool) -> None:
    values = ci_values("self")
    values["hostNetwork"] = host_network
    values["server"] = {**values.get("server", {}), "port": 9443}
    r = render(values)
    assert r.pod_spec.get("hostNetwork", False) is host_network
    assert r.pod_spec.get("dnsPolicy") == ("ClusterFirstWithHostNet" if host_network else None)
    # the port the Pod listens on is the one the Service forwards to, whatever the network
    assert {p["name"]: p["containerPort"] for p in r.container["ports"]}["https"] == 9443
    assert "--port=9443" in r.args


@pytest.mark.parametrize(
    ("host_network", "bind_node_ip", "bound"),
    [(True, True, True), (True, False, False), (False, True, False)],
    ids=["host-network-node-ip", "host-network-all", "pod-network-ignored"],
)
def test_bind_node_ip(host_network: bool, bind_node_ip: bool, bound: bool) -> None:
    """``server.bindNodeIP`` serves on ``status.hostIP`` only (the node's address), and only with hostNetwork."""
    values = ci_values("self")
    values["hostNetwork"] = host_network
    values["server"] = {**values.get("server", {}), "bindNodeIP": bind_node_ip}
    env = {e["name"]: e for e in render(values).container.get("env") or []}
    if bound:
        assert env["PSI_HOST"] == {"name": "PSI_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}
    else:
        assert "PSI_HOST" not in env


def test_mirrors_register_the_ephemeral_containers_subresource() -> None:
    values = ci_values("self")
    values["policy"] = {**values.get("policy", {}), "mirrors": {"docker.io": {"endpoint": ["mirror.example.com:5000"]}}}
    rules = render(values).webhook["rules"]
    assert [r["resources"] for r in rules] == [["pods"], ["pods/ephemeralcontainers"]]
    assert rules[1]["operations"] == ["UPDATE"]


#: The mirror CA bundle in the container (``--mirror-ca-file``): the one key of the ConfigMap, as ca.crt.
MIRROR_CA_DIR = "/mirror-ca"
MIRROR_CA_FILE = f"{MIRROR_CA_DIR}/ca.crt"
MIRROR_CA = "-----BEGIN CERTIFICATE-----\nbWlycm9y\n-----END CERTIFICATE-----\n"
OTHER_MIRROR_CA = "-----BEGIN CERTIFICATE-----\nb3RoZXI=\n-----END CERTIFICATE-----\n"


def pod_annotations(r: Rendered) -> dict[str, str]:
    annotations: dict[str, str] = r.one("Deployment")["spec"]["template"]["metadata"].get("annotations") or {}
    return annotations


#: (id, mirrors values, data of the ConfigMap the chart owns or None, (ConfigMap mounted, its key) or None)
MIRROR_CA_CASES: list[tuple[str, Obj, dict[str, str] | None, tuple[str, str] | None]] = [
    ("unset", {}, None, None),
    ("key-alone-mounts-nothing", {"caBundleKey": "bundle.pem"}, None, None),
    ("ca-bundle", {"caBundle": MIRROR_CA}, {"ca.crt": MIRROR_CA}, (f"{FULLNAME}-mirror-ca", "ca.crt")),
    (
        "ca-bundle-own-key",
        {"caBundle": MIRROR_CA, "caBundleKey": "bundle.pem"},
        {"bundle.pem": MIRROR_CA},
        (f"{FULLNAME}-mirror-ca", "bundle.pem"),
    ),
    ("existing-configmap", {"existingCaConfigMap": "corp-ca"}, None, ("corp-ca", "ca.crt")),
    (
        "existing-configmap-own-key",
        {"existingCaConfigMap": "corp-ca", "caBundleKey": "root-certs.pem"},
        None,
        ("corp-ca", "root-certs.pem"),
    ),
]


@pytest.mark.parametrize(
    ("mirrors", "owned", "mounted"), [pytest.param(m, o, v, id=i) for i, m, o, v in MIRROR_CA_CASES]
)
def test_mirror_ca_bundle(mirrors: Obj, owned: dict[str, str] | None, mounted: tuple[str, str] | None) -> None:
    """The ConfigMap (only the chart's own), the read-only volume and mount, the flag: all or nothing."""
    r = render({"mirrors": mirrors})
    configmaps = {m["metadata"]["name"]: m for m in r.all("ConfigMap")}
    volumes = {v["name"]: v for v in r.pod_spec["volumes"]}
    mounts = {m["name"]: m for m in r.container["volumeMounts"]}
    if owned is None:
        assert set(configmaps) == {f"{FULLNAME}-policy"}, "a ConfigMap the user owns (or none at all) is never rendered"
    else:
        assert set(configmaps) == {f"{FULLNAME}-policy", f"{FULLNAME}-mirror-ca"}
        configmap = configmaps[f"{FULLNAME}-mirror-ca"]
        assert configmap["metadata"]["namespace"] == NAMESPACE
        assert configmap["metadata"]["labels"]["app.kubernetes.io/part-of"] == "pullsecret-injector"
        assert configmap["data"] == owned, "the PEM byte for byte, under caBundleKey"
    if mounted is None:
        assert "mirror-ca" not in volumes
        assert "mirror-ca" not in mounts
        assert _flag(r.args, "--mirror-ca-file") is None
    else:
        name, key = mounted
        assert volumes["mirror-ca"] == {
            "name": "mirror-ca",
            "configMap": {"name": name, "items": [{"key": key, "path": "ca.crt"}]},
        }
        assert mounts["mirror-ca"] == {"name": "mirror-ca", "mountPath": MIRROR_CA_DIR, "readOnly": True}
        assert _flag(r.args, "--mirror-ca-file") == MIRROR_CA_FILE
    expected_checksum = hashlib.sha256(MIRROR_CA.encode()).hexdigest() if owned is not None else None
    assert pod_annotations(r).get("checksum/mirror-ca") == expected_checksum


def test_a_changed_mirror_ca_bundle_rolls_the_pods() -> None:
    """The webhook reads the bundle at start-up: a new bundle must change the Pod template, a policy edit must not."""
    base: Obj = {"mirrors": {"caBundle": MIRROR_CA}, "podAnnotations": {"team": "platform"}}
    first = pod_annotations(render(base))
    other_policy = pod_annotations(render({**base, "policy": {"rules": [{**_rule(), "name": "other"}]}}))
    other_bundle = pod_annotations(render({**base, "mirrors": {"caBundle": MIRROR_CA + OTHER_MIRROR_CA}}))
    assert first["team"] == other_bundle["team"] == "platform", "podAnnotations are kept beside the checksum"
    assert first["checksum/mirror-ca"] == other_policy["checksum/mirror-ca"]
    assert first["checksum/mirror-ca"] != other_bundle["checksum/mirror-ca"]


def _load_as_the_webhook_does(ca_file: Path) -> list[Obj]:
    """``build_mirror_checker`` (webhook/admission/mirroring.py): the system's CAs plus the file."""
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=str(ca_file))
    loaded: list[Obj] = context.get_ca_certs()
    return loaded


def test_the_ci_mirror_ca_is_one_the_webhook_loads(tmp_path: Path) -> None:
    """ci/mirror-ca-values.yaml's bundle, as mounted, is a CA the webhook takes (a placeholder PEM is not)."""
    r = render_ci("mirror-ca")
    configmap = r.one("ConfigMap", f"{FULLNAME}-mirror-ca")
    volume = next(v for v in r.pod_spec["volumes"] if v["name"] == "mirror-ca")
    (item,) = volume["configMap"]["items"]
    ca_file = tmp_path / item["path"]
    ca_file.write_text(configmap["data"][item["key"]])
    subjects = [ca["subject"] for ca in _load_as_the_webhook_does(ca_file)]
    assert ((("commonName", "registry.internal.example example CA"),),) in subjects
    policy = yaml.safe_load(r.one("ConfigMap", f"{FULLNAME}-policy")["data"]["policy.yaml"])
    assert policy["mirrors"]["docker.io"]["check"] is True, "the case is a checked mirror"
    placeholder = tmp_path / "placeholder.crt"
    placeholder.write_text(MIRROR_CA)
    with pytest.raises(ssl.SSLError):
        _load_as_the_webhook_does(placeholder)


def test_probes_ports_and_env(ci: Rendered) -> None:
    container = ci.container
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["https"] == 8443
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "https", "scheme": "HTTPS"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "https", "scheme": "HTTPS"}
    assert container["startupProbe"]["httpGet"]["scheme"] == "HTTPS"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    if ci.values["metrics"]["enabled"]:
        assert ports["metrics"] == 9090
        assert "--metrics-port=9090" in ci.args
    else:
        assert "metrics" not in ports
        assert "--metrics-port=0" in ci.args


def test_volumes_follow_cert_mode(ci: Rendered) -> None:
    volumes = {v["name"]: v for v in ci.pod_spec["volumes"]}
    mounts = {m["name"]: m for m in ci.container["volumeMounts"]}
    # The policy is watched through the API (issue 11): no mounted file the kubelet refreshes late.
    assert "policy" not in volumes
    assert "policy" not in mounts
    assert "emptyDir" in volumes["tmp"]
    assert mounts["tmp"]["mountPath"] == "/tmp"  # noqa: S108 - a mount path in the manifest, not a temp file
    if cert_mode(ci) == "self":
        assert "tls" not in volumes
        assert "tls" not in mounts
    else:
        assert mounts["tls"]["mountPath"] == "/tls"
        assert mounts["tls"]["readOnly"] is True
        expected = ci.values["certificates"]["manual"]["secretName"] if cert_mode(ci) == "manual" else f"{FULLNAME}-tls"
        assert volumes["tls"]["secret"]["secretName"] == expected


def test_no_policy_checksum_annotation(ci: Rendered) -> None:
    """The policy is hot-reloaded: changing it must not roll the Pods (only the mirror CA, read at start-up, does)."""
    annotations = ci.one("Deployment")["spec"]["template"]["metadata"].get("annotations") or {}
    checksums = {k for k in annotations if k.startswith("checksum/")}
    assert checksums == ({"checksum/mirror-ca"} if ci.values["mirrors"]["caBundle"] else set())


def _flag(args: list[str], name: str) -> str | None:
    for arg in args:
        if arg == name:
            return ""
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def test_container_args_follow_the_cli_contract(ci: Rendered) -> None:
    args = ci.args
    assert args[0] == "serve"
    assert _flag(args, "--policy") is None  # read through the API, not from a mounted file
    assert _flag(args, "--policy-configmap") == f"{FULLNAME}-policy"
    assert _flag(args, "--ledger-configmap") == f"{FULLNAME}-ledger"
    assert _flag(args, "--port") == "8443"
    assert _flag(args, "--namespace") == NAMESPACE
    assert _flag(args, "--leader-election-lease") == f"{FULLNAME}-leader"
    assert _flag(args, "--log-format") == "json"
    assert _flag(args, "--max-body-bytes") == "3145728"
    assert float(_flag(args, "--ensure-timeout") or "nan") == float(ci.values["server"]["ensureTimeout"])
    assert ("--cleanup" in args) != ("--no-cleanup" in args)
    if cert_mode(ci) == "self":
        assert _flag(args, "--cert-mode") == "self"
        assert _flag(args, "--cert-secret") == f"{FULLNAME}-tls"
        assert _flag(args, "--service") == FULLNAME
        assert _flag(args, "--webhook-config") == FULLNAME
        assert _flag(args, "--tls-cert") is None
    else:
        assert _flag(args, "--cert-mode") == "files"
        assert _flag(args, "--tls-cert") == "/tls/tls.crt"
        assert _flag(args, "--tls-key") == "/tls/tls.key"
        assert _flag(args, "--cert-secret") is None
    # Every flag the chart passes is one `pullsecret-injector serve` really has, and parses.
    serve = next(
        action
        for action in build_parser()._subparsers._group_actions  # type: ignore[union-attr]
        if isinstance(action, argparse._SubParsersAction)
    ).choices["serve"]
    known = {option for action in serve._actions for option in action.option_strings}
    assert {a.split("=", 1)[0] for a in args[1:]} <= known
    parsed = build_parser().parse_args(args)
    assert parsed.policy_configmap.endswith("-policy")


def test_image_reference() -> None:
    chart = load_yaml(CHART / "Chart.yaml")
    r = render_ci("self")
    assert r.container["image"] == f"ghcr.io/pullsecret-injector/pullsecret-injector:{chart['appVersion']}"
    digest = "sha256:" + "a" * 64
    pinned = render({"image": {"tag": "1.2.3", "digest": digest}, "imagePullSecrets": [{"name": "ghcr"}]})
    assert pinned.container["image"] == f"ghcr.io/pullsecret-injector/pullsecret-injector@{digest}"
    assert pinned.pod_spec["imagePullSecrets"] == [{"name": "ghcr"}]


# --------------------------------------------------------------------------- service, PDB, metrics


def test_service_ports(ci: Rendered) -> None:
    service = ci.one("Service")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["https"]["port"] == 443
    assert ports["https"]["targetPort"] == "https"
    if ci.values["metrics"]["enabled"]:
        assert ports["metrics"]["port"] == 9090
        assert ports["metrics"]["targetPort"] == "metrics"
    else:
        assert "metrics" not in ports
    assert service["spec"]["selector"] == ci.one("Deployment")["spec"]["selector"]["matchLabels"]


def test_pod_disruption_budget(ci: Rendered) -> None:
    pdb = ci.one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == ci.values["podDisruptionBudget"]["minAvailable"]
    assert pdb["spec"]["minAvailable"] < ci.values["replicaCount"]
    assert pdb["spec"]["selector"]["matchLabels"] == ci.one("Deployment")["spec"]["selector"]["matchLabels"]


def test_single_replica_renders_no_pdb() -> None:
    """With one replica a minAvailable: 1 budget would block every drain: it is left out."""
    r = render({"replicaCount": 1})
    assert r.all("PodDisruptionBudget") == []
    assert r.one("Deployment")["spec"]["replicas"] == 1


def test_service_monitor_only_when_enabled(ci: Rendered) -> None:
    monitors = ci.all("ServiceMonitor")
    if not ci.values["metrics"]["serviceMonitor"]["enabled"]:
        assert monitors == []
        return
    (monitor,) = monitors
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["selector"]["matchLabels"] == ci.one("Service")["spec"]["selector"]
    for key, value in ci.values["metrics"]["serviceMonitor"]["labels"].items():
        assert monitor["metadata"]["labels"][key] == value


def test_service_monitor_can_be_enabled_in_any_mode() -> None:
    r = render({"metrics": {"serviceMonitor": {"enabled": True}}})
    assert len(r.all("ServiceMonitor")) == 1
    assert render_ci("self").all("ServiceMonitor") == []


# --------------------------------------------------------------------------- RBAC

SOURCES_ROLE = f"{FULLNAME}-sources"
SECRETS: Obj = {"apiGroups": [""], "resources": ["secrets"]}
CREATE_SECRETS: Obj = {**SECRETS, "verbs": ["create"]}
CONFIGMAPS: Obj = {"apiGroups": [""], "resources": ["configmaps"]}
READ = ["get", "list", "watch"]


def policy_secret_names(values: Obj) -> tuple[set[str], dict[str, set[str]]]:
    """(target names, {namespace: source names}) the policy uses."""
    targets: set[str] = set(values["rbac"]["extraSecretNames"])
    sources: dict[str, set[str]] = {}
    for rule in values["policy"]["rules"]:
        targets.add(rule["secret"])
        source = rule.get("source") or {}
        refs = []
        if "secret" in source:
            refs.append(source["secret"])
        if "credentials" in source:
            refs.append(source["credentials"]["passwordFrom"])
        for ref in refs:
            sources.setdefault(ref["namespace"], set()).add(ref["name"])
    return targets, sources


def secret_rules(role: Obj) -> list[Obj]:
    return [r for r in role["rules"] if "secrets" in r["resources"]]


def source_roles(r: Rendered) -> dict[str, Obj]:
    """The per-namespace source Roles, by namespace."""
    roles = [role for role in r.all("Role") if role["metadata"]["name"] == SOURCES_ROLE]
    by_namespace = {role["metadata"]["namespace"]: role for role in roles}
    assert len(by_namespace) == len(roles), "one source Role per namespace"
    return by_namespace


def copy_rule(targets: set[str]) -> Obj:
    """The ClusterRole rule on the copies: exactly the verbs KubeApi uses on them."""
    # delete even without cleanup: a managed copy of the wrong (immutable) type is replaced.
    return {**SECRETS, "resourceNames": sorted(targets), "verbs": [*READ, "patch", "delete"]}


def test_rbac_has_no_wildcards(ci: Rendered) -> None:
    for role in ci.all("ClusterRole") + ci.all("Role"):
        for rule in role["rules"]:
            for key in ("verbs", "resources", "apiGroups", "resourceNames"):
                assert "*" not in rule.get(key, []), f"{role['kind']} rule {rule} uses a wildcard in {key}"
            assert all("/" not in r for r in rule["resources"]), "no subresources are needed"
            assert rule.get("resourceNames", True), "an empty resourceNames list would grant every object"


def test_cluster_role_secret_access_is_exactly_the_copies(ci: Rendered) -> None:
    """Create (unrestrictable), and get/list/watch/patch[/delete] on the copy names only: no source, no update."""
    targets, sources = policy_secret_names(ci.values)
    assert targets, "ci values are expected to use some Secrets"
    assert sources, "ci values are expected to read some sources"
    assert secret_rules(ci.one("ClusterRole")) == [
        CREATE_SECRETS,
        copy_rule(targets),
    ]


def test_cluster_role_does_not_name_sources_cluster_wide() -> None:
    """A source name is granted in its namespace only, even on a policy where it is no copy's name."""
    r = render_ci("self")
    named = {n for rule in secret_rules(r.one("ClusterRole")) for n in rule.get("resourceNames", [])}
    assert named == {"gar-pull", "harbor-pull"}
    assert not named & {"gar-credentials", "harbor-robot"}


def test_cluster_role_other_rules(ci: Rendered) -> None:
    rules = [r for r in ci.one("ClusterRole")["rules"] if "secrets" not in r["resources"]]
    expected = [
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": READ},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},  # created, never patched
    ]
    if cert_mode(ci) == "self":
        expected.append(
            {
                "apiGroups": ["admissionregistration.k8s.io"],
                "resources": ["mutatingwebhookconfigurations"],
                "resourceNames": [FULLNAME],
                "verbs": ["get", "patch"],
            }
        )
    assert rules == expected


def test_role_in_release_namespace(ci: Rendered) -> None:
    role = ci.one("Role", FULLNAME)
    assert role["metadata"]["namespace"] == NAMESPACE
    leases = {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"]}
    expected: list[Obj] = [
        # LeaseElector: get + create the first time, then patch (never PUT: no update).
        {**leases, "verbs": ["create"]},
        {**leases, "resourceNames": [f"{FULLNAME}-leader"], "verbs": ["get", "patch"]},
        # The policy ConfigMap: get + by-name list/watch, patch for the status annotations.
        {**CONFIGMAPS, "resourceNames": [f"{FULLNAME}-policy"], "verbs": ["get", "list", "watch", "patch"]},
        # The ownership ledger: created at runtime, then read, watched and patched by name.
        {**CONFIGMAPS, "verbs": ["create"]},
        {**CONFIGMAPS, "resourceNames": [f"{FULLNAME}-ledger"], "verbs": ["get", "list", "watch", "patch"]},
    ]
    if cert_mode(ci) == "self":
        # selfcert: get, create, replace (PUT); never list/watch/patch.
        expected += [CREATE_SECRETS, {**SECRETS, "resourceNames": [f"{FULLNAME}-tls"], "verbs": ["get", "update"]}]
    assert role["rules"] == expected


def test_source_roles_one_per_source_namespace(ci: Rendered) -> None:
    _, sources = policy_secret_names(ci.values)
    roles = source_roles(ci)
    assert set(roles) == set(sources)
    for namespace, role in roles.items():
        assert role["rules"] == [{**SECRETS, "resourceNames": sorted(sources[namespace]), "verbs": READ}]


def test_source_roles_follow_every_source_namespace() -> None:
    """source.secret and passwordFrom, several namespaces, names shared by rules deduplicated."""
    values = {
        "policy": {
            "rules": [
                _rule("a", "a-pull", {"secret": {"namespace": "vault-a", "name": "creds"}}),
                _rule("b", "b-pull", {"secret": {"namespace": "vault-a", "name": "creds"}}),
                _rule("c", "c-pull", {"secret": {"namespace": "vault-a", "name": "another"}}),
                _rule("d", "d-pull", {"credentials": {**CREDENTIALS, "passwordFrom": {**CREDENTIALS["passwordFrom"]}}}),
                _rule(
                    "e",
                    "e-pull",
                    {
                        "credentials": {
                            **CREDENTIALS,
                            "passwordFrom": {"namespace": "vault-b", "name": "robot-token", "key": "token"},
                        }
                    },
                ),
            ]
        }
    }
    r = render(values)
    roles = source_roles(r)
    assert {ns: role["rules"][0]["resourceNames"] for ns, role in roles.items()} == {
        "vault-a": ["another", "creds"],
        "vault-b": ["robot-token"],
        NAMESPACE: ["token"],
    }
    assert all(role["rules"][0]["verbs"] == READ for role in roles.values())
    assert secret_rules(r.one("ClusterRole")) == [
        CREATE_SECRETS,
        copy_rule({"a-pull", "b-pull", "c-pull", "d-pull", "e-pull"}),
    ]
    bindings = {b["metadata"]["namespace"]: b for b in r.all("RoleBinding") if b["metadata"]["name"] == SOURCES_ROLE}
    assert set(bindings) == set(roles)


def test_bindings_reference_the_service_account(ci: Rendered) -> None:
    account = ci.one("ServiceAccount")
    subject = {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    crb = ci.one("ClusterRoleBinding")
    assert crb["subjects"] == [subject]
    assert crb["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": ci.one("ClusterRole")["metadata"]["name"],
    }
    rb = ci.one("RoleBinding", FULLNAME)
    assert rb["metadata"]["namespace"] == NAMESPACE
    assert rb["subjects"] == [subject]
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": FULLNAME}
    roles = {(role["metadata"]["namespace"], role["metadata"]["name"]) for role in ci.all("Role")}
    bindings = ci.all("RoleBinding")
    assert {(b["metadata"]["namespace"], b["metadata"]["name"]) for b in bindings} == roles
    for binding in bindings:
        assert binding["subjects"] == [subject], "every binding is for the webhook's ServiceAccount, in its namespace"
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": binding["metadata"]["name"],
        }


def test_rbac_without_rules_grants_no_secrets() -> None:
    r = render({"policy": {"rules": []}, "certificates": {"mode": "cert-manager"}})
    assert secret_rules(r.one("ClusterRole")) == []
    assert secret_rules(r.one("Role", FULLNAME)) == []
    assert source_roles(r) == {}
    assert [b["metadata"]["name"] for b in r.all("RoleBinding")] == [FULLNAME]


def test_rbac_without_rules_self_mode_can_still_create_its_certificate() -> None:
    """The Role's own Secret create: with no rules the ClusterRole grants none."""
    r = render({"policy": {"rules": []}})
    assert secret_rules(r.one("ClusterRole")) == []
    assert CREATE_SECRETS in secret_rules(r.one("Role", FULLNAME))


def test_rbac_extra_secret_names_and_no_cleanup() -> None:
    values = copy.deepcopy(ci_values("self"))
    values["rbac"] = {"extraSecretNames": ["old-pull"]}
    values["server"] = {"cleanup": False}
    r = render(values)
    # --no-cleanup still needs delete (wrong-typed copies); the extra name is a copy name, never a source.
    assert secret_rules(r.one("ClusterRole")) == [
        CREATE_SECRETS,
        copy_rule({"gar-pull", "harbor-pull", "old-pull"}),
    ]
    assert all("old-pull" not in role["rules"][0]["resourceNames"] for role in source_roles(r).values())
    assert "--no-cleanup" in r.args


def test_rbac_disabled_renders_none() -> None:
    r = render({"rbac": {"create": False}, "policy": {"rules": [_rule()]}})
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
        assert r.all(kind) == []


# --------------------------------------------------------------------------- certificate modes


def test_self_mode_renders_no_tls_secret_and_no_ca_bundle() -> None:
    r = render_ci("self")
    assert r.all("Secret") == []
    assert r.all("Certificate") == []
    assert r.all("Issuer") == []
    assert "caBundle" not in r.webhook["clientConfig"]
    config = r.one("MutatingWebhookConfiguration")
    assert "cert-manager.io/inject-ca-from" not in (config["metadata"].get("annotations") or {})


def test_self_mode_upgrade_keeps_runtime_ca_bundle() -> None:
    """The webhook patches the caBundle at runtime; helm upgrade must not wipe it (lookup)."""
    helm = _helm()
    ca_bundle = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nruntime\n-----END CERTIFICATE-----\n").decode()
    with FakeApiServer() as api:
        first = helm_install(api, ci_values("self"))
        assert "caBundle" not in first.webhook["clientConfig"]
        with api.lock:  # what the webhook's start-up PATCH does
            api.objects[WEBHOOK_PATH]["webhooks"][0]["clientConfig"]["caBundle"] = ca_bundle
        config = helm.Configuration(namespace=NAMESPACE, kubeconfig=api.kubeconfig)
        upgraded = asyncio.run(
            helm.Upgrade(config).run(RELEASE, str(CHART), values=ci_values("self"), wait=False, timeout=60)
        )
        again = _to_rendered(ci_values("self"), upgraded)
    assert again.webhook["clientConfig"]["caBundle"] == ca_bundle


def test_uninstall_removes_the_webhook_configuration() -> None:
    helm = _helm()
    with FakeApiServer() as api:
        helm_install(api, ci_values("self"))
        assert "MutatingWebhookConfiguration" in api.kinds()
        config = helm.Configuration(namespace=NAMESPACE, kubeconfig=api.kubeconfig)
        asyncio.run(helm.Uninstall(config).run(RELEASE, wait=False, timeout=60))
        assert "MutatingWebhookConfiguration" not in api.kinds()
        assert "Deployment" not in api.kinds()


def test_cert_manager_mode() -> None:
    r = render_ci("cert-manager")
    serving = r.one("Certificate", f"{FULLNAME}-serving")
    config = r.one("MutatingWebhookConfiguration")
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/{FULLNAME}-serving"
    assert "caBundle" not in r.webhook["clientConfig"]
    assert sorted(serving["spec"]["dnsNames"]) == sorted(service_dns_names())
    assert serving["spec"]["secretName"] == f"{FULLNAME}-tls"
    assert "server auth" in serving["spec"]["usages"]
    # Chain: self-signed Issuer -> CA Certificate -> CA Issuer -> serving Certificate.
    ca = r.one("Certificate", f"{FULLNAME}-ca")
    assert ca["spec"]["isCA"] is True
    assert ca["spec"]["issuerRef"]["name"] == f"{FULLNAME}-selfsigned"
    assert "selfSigned" in r.one("Issuer", f"{FULLNAME}-selfsigned")["spec"]
    assert r.one("Issuer", f"{FULLNAME}-ca")["spec"]["ca"]["secretName"] == ca["spec"]["secretName"]
    assert serving["spec"]["issuerRef"] == {"group": "cert-manager.io", "kind": "Issuer", "name": f"{FULLNAME}-ca"}
    assert r.all("Secret") == []


def test_cert_manager_mode_with_existing_issuer() -> None:
    r = render(
        {
            "certificates": {
                "mode": "cert-manager",
                "certManager": {"issuerRef": {"name": "corp", "kind": "ClusterIssuer"}},
            }
        }
    )
    assert r.all("Issuer") == []
    (serving,) = r.all("Certificate")
    assert serving["spec"]["issuerRef"] == {"group": "cert-manager.io", "kind": "ClusterIssuer", "name": "corp"}


def test_manual_mode() -> None:
    r = render_ci("manual")
    manual = r.values["certificates"]["manual"]
    assert r.webhook["clientConfig"]["caBundle"] == manual["caBundle"]
    assert base64.b64decode(manual["caBundle"]).startswith(b"-----BEGIN CERTIFICATE-----")
    assert r.all("Certificate") == []
    assert r.all("Secret") == []
    assert "cert-manager.io/inject-ca-from" not in (
        r.one("MutatingWebhookConfiguration")["metadata"].get("annotations") or {}
    )


def test_full_name_follows_release_and_overrides() -> None:
    r = render({"fullnameOverride": "psi"})
    assert r.one("Deployment")["metadata"]["name"] == "psi"
    assert r.webhook["clientConfig"]["service"]["name"] == "psi"
    assert _flag(r.args, "--service") == "psi"
    assert _flag(r.args, "--webhook-config") == r.one("MutatingWebhookConfiguration")["metadata"]["name"] == "psi"


# --------------------------------------------------------------------------- policy ConfigMap


def test_policy_configmap_round_trips(ci: Rendered) -> None:
    configmap = ci.one("ConfigMap", f"{FULLNAME}-policy")
    policy = {k: v for k, v in ci.values["policy"].items() if k != "existingConfigMap"}
    assert yaml.safe_load(configmap["data"]["policy.yaml"]) == policy


def test_default_policy_excludes_system_namespaces() -> None:
    policy = default_values()["policy"]
    assert policy["rules"] == []
    assert {"kube-system", "kube-public", "kube-node-lease"} <= set(policy["excludeNamespaces"])


def test_policy_rule_without_source_only_references_the_secret() -> None:
    rule = {"name": "existing", "registries": ["quay.io"], "secret": "quay-pull", "failurePolicy": "Fail"}
    r = render({"policy": {"rules": [rule]}})
    assert yaml.safe_load(r.one("ConfigMap")["data"]["policy.yaml"])["rules"] == [rule]
    names = {n for rule in secret_rules(r.one("ClusterRole")) for n in rule.get("resourceNames", [])}
    assert names == {"quay-pull"}
    assert source_roles(r) == {}, "no source, nothing to read"


# --------------------------------------------------------------------------- contradictory values


def _rule(name: str = "r", target: str = "pull", source: Obj | None = None) -> Obj:
    return {
        "name": name,
        "registries": ["registry.example.com"],
        "secret": target,
        "source": source or {"secret": {"namespace": NAMESPACE, "name": "creds"}},
    }


CREDENTIALS: Obj = {
    "registry": "registry.example.com",
    "username": "bot",
    "passwordFrom": {"namespace": NAMESPACE, "name": "token", "key": "token"},
}
MANUAL_CA = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n").decode()

#: A policy mirror whose endpoint is checked with a HEAD before the rewrite (spends mirrors.checkBudget).
CHECKED_MIRROR: Obj = {"docker.io": {"endpoint": ["mirror.example:5000"], "check": True}}

BAD_VALUES: list[tuple[str, Obj, bool, str]] = [
    # (id, values, skip schema validation, expected error fragment)
    (
        "manual-without-ca-bundle",
        {"certificates": {"mode": "manual", "manual": {"secretName": "tls"}}},
        False,
        "certificates.mode=manual requires certificates.manual.caBundle",
    ),
    (
        "manual-without-secret-name",
        {"certificates": {"mode": "manual", "manual": {"caBundle": MANUAL_CA}}},
        False,
        "certificates.mode=manual requires certificates.manual.secretName",
    ),
    (
        "manual-ca-bundle-not-pem",
        {"certificates": {"mode": "manual", "manual": {"secretName": "tls", "caBundle": "bm90IGEgY2VydA=="}}},
        False,
        "certificates.manual.caBundle must be the base64 encoding of a PEM certificate",
    ),
    ("unknown-cert-mode-schema", {"certificates": {"mode": "vault"}}, False, "/certificates/mode"),
    ("unknown-cert-mode-template", {"certificates": {"mode": "vault"}}, True, "certificates.mode must be one of"),
    ("zero-replicas-schema", {"replicaCount": 0}, False, "/replicaCount"),
    ("zero-replicas-template", {"replicaCount": 0}, True, "replicaCount must be >= 1"),
    ("failure-policy-schema", {"webhook": {"failurePolicy": "Sometimes"}}, False, "/webhook/failurePolicy"),
    (
        "failure-policy-template",
        {"webhook": {"failurePolicy": "Sometimes"}},
        True,
        "webhook.failurePolicy must be Ignore or Fail",
    ),
    ("timeout-too-long", {"webhook": {"timeoutSeconds": 31}}, False, "/webhook/timeoutSeconds"),
    (
        "ensure-timeout-not-below-webhook-timeout",
        {"webhook": {"timeoutSeconds": 2}, "server": {"ensureTimeout": 2.0}},
        False,
        "server.ensureTimeout (2) must be lower than webhook.timeoutSeconds (2)",
    ),
    (
        "duplicate-rule-names",
        {"policy": {"rules": [_rule("dup", "a"), _rule("dup", "b")]}},
        False,
        'duplicate rule name "dup"',
    ),
    (
        "both-sources-schema",
        {
            "policy": {
                "rules": [_rule(source={"secret": {"namespace": NAMESPACE, "name": "c"}, "credentials": CREDENTIALS})]
            }
        },
        False,
        "/policy/rules/0/source",
    ),
    # No "-template" twin: exactly one source is the model's rule, the generated schema holds it.
    ("empty-source-schema", {"policy": {"rules": [{**_rule(), "source": {}}]}}, False, "/policy/rules/0/source"),
    (
        "same-secret-two-sources",
        {
            "policy": {
                "rules": [
                    _rule("a", "pull"),
                    _rule("b", "pull", {"credentials": CREDENTIALS}),
                ]
            }
        },
        False,
        "one Secret name, one source",
    ),
    ("glob-secret-name", {"policy": {"rules": [_rule(target="pull-*")]}}, True, "is not a valid Secret name"),
    (
        "source-namespace-not-a-label-schema",
        {"policy": {"rules": [_rule(source={"secret": {"namespace": "Vault_NS", "name": "creds"}})]}},
        False,
        "/policy/rules/0/source/secret/namespace",
    ),
    (
        "source-namespace-not-a-label-template",
        {"policy": {"rules": [_rule(source={"secret": {"namespace": "Vault_NS", "name": "creds"}})]}},
        True,
        'source.secret.namespace: "Vault_NS" is not a valid namespace name',
    ),
    (
        "password-namespace-not-a-label-template",
        {
            "policy": {
                "rules": [
                    _rule(
                        source={
                            "credentials": {
                                **CREDENTIALS,
                                "passwordFrom": {**CREDENTIALS["passwordFrom"], "namespace": "a.b"},
                            }
                        }
                    )
                ]
            }
        },
        True,
        'source.credentials.passwordFrom.namespace: "a.b" is not a valid namespace name',
    ),
    (
        "pdb-blocks-drains",
        {"replicaCount": 2, "podDisruptionBudget": {"minAvailable": 2}},
        False,
        "podDisruptionBudget.minAvailable (2) must be lower than replicaCount (2)",
    ),
    (
        "service-monitor-without-metrics",
        {"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}},
        False,
        "metrics.serviceMonitor.enabled requires metrics.enabled",
    ),
    (
        "shutdown-delay-exceeds-grace-period",
        {"server": {"shutdownDelay": 30}, "terminationGracePeriodSeconds": 30},
        False,
        "server.shutdownDelay (30) must be lower than terminationGracePeriodSeconds (30)",
    ),
    ("unknown-top-level-key", {"replicas": 3}, False, "additional properties 'replicas' not allowed"),
    (
        "mirror-ca-bundle-and-existing-configmap",
        {"mirrors": {"caBundle": MIRROR_CA, "existingCaConfigMap": "corp-ca"}},
        False,
        "mirrors.caBundle and mirrors.existingCaConfigMap are mutually exclusive",
    ),
    ("mirror-ca-bundle-base64", {"mirrors": {"caBundle": MANUAL_CA}}, False, "mirrors.caBundle must be PEM text"),
    ("mirror-ca-key-schema", {"mirrors": {"caBundleKey": "ca/crt"}}, False, "/mirrors/caBundleKey"),
    (
        "mirror-ca-key-template",
        {"mirrors": {"caBundleKey": "ca/crt"}},
        True,
        'mirrors.caBundleKey: "ca/crt" is not a ConfigMap key',
    ),
    (
        "mirror-ca-configmap-not-a-name",
        {"mirrors": {"existingCaConfigMap": "Corp CA"}},
        False,
        "/mirrors/existingCaConfigMap",
    ),
    ("mirror-check-budget-zero", {"mirrors": {"checkBudget": 0}}, False, "/mirrors/checkBudget"),
    (
        "mirror-check-budget-past-the-backstop",
        {"mirrors": {"checkBudget": 1.0}, "policy": {"mirrors": CHECKED_MIRROR}},
        False,
        "mirrors.checkBudget (1) + server.ensureTimeout (2) must be lower than the admission backstop (3 s",
    ),
    (
        "mirror-check-budget-past-a-backstop-halfway-to-the-timeout",
        {"webhook": {"timeoutSeconds": 3}, "policy": {"mirrors": CHECKED_MIRROR}},
        False,
        "mirrors.checkBudget (0.75) + server.ensureTimeout (2) must be lower than the admission backstop (2.5 s",
    ),
    ("mirror-probe-timeout-negative", {"mirrors": {"probeTimeout": -1}}, False, "/mirrors/probeTimeout"),
    ("mirror-unknown-key", {"mirrors": {"caFile": "/ca.crt"}}, False, "additional properties 'caFile' not allowed"),
    (
        "service-account-without-name",
        {"serviceAccount": {"create": False}},
        False,
        "serviceAccount.name is required when serviceAccount.create is false",
    ),
]


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"mirrors": {"checkBudget": 0.99}, "policy": {"mirrors": CHECKED_MIRROR}}, id="just-below"),
        pytest.param(
            {"mirrors": {"checkBudget": 5}, "policy": {"mirrors": {"docker.io": {"endpoint": ["m.example:5000"]}}}},
            id="no-mirror-is-checked",
        ),
        pytest.param({"mirrors": {"checkBudget": 5}}, id="no-mirrors"),
        pytest.param(
            {
                "mirrors": {"checkBudget": 0.9},
                "server": {"ensureTimeout": 4.0},
                "webhook": {"timeoutSeconds": 15},
                "policy": {"mirrors": CHECKED_MIRROR},
            },
            id="a-longer-backstop",
        ),
    ],
)
def test_a_check_budget_that_fits_or_is_never_spent_renders(values: Obj) -> None:
    """The budget check fails only where a checked mirror could really outlast the backstop."""
    render(values)


@pytest.mark.parametrize(
    ("values", "skip_schema", "message"),
    [pytest.param(v, s, m, id=i) for i, v, s, m in BAD_VALUES],
)
def test_contradictory_values_fail(values: Obj, skip_schema: bool, message: str) -> None:
    helm = _helm()
    with pytest.raises(helm.HelmError) as excinfo:
        render(values, skip_schema_validation=skip_schema)
    assert message in str(excinfo.value)


# --------------------------------------------------------------------------- helm test hook, NOTES


def test_helm_test_pod(ci: Rendered) -> None:
    (pod,) = [h for h in ci.hooks if h["kind"] == "Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["metadata"]["labels"][SKIP_LABEL] == "true"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    assert container["image"] == ci.container["image"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert "/readyz" in container["args"][0]
    compile(container["args"][0], "helm-test", "exec")  # the embedded script is valid Python
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["WEBHOOK_HOST"] == f"{FULLNAME}.{NAMESPACE}.svc"
    assert env["WEBHOOK_HOST"] in service_dns_names()
    assert env["WEBHOOK_PORT"] == "443"
    if cert_mode(ci) == "manual":
        assert env["WEBHOOK_CA"] == base64.b64decode(ci.values["certificates"]["manual"]["caBundle"]).decode()
    else:
        (volume,) = spec["volumes"]
        assert volume["secret"]["secretName"] == f"{FULLNAME}-tls"
        assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}], "never mount the key"


def test_notes_explain_how_to_check(ci: Rendered) -> None:
    assert "helm test" in ci.notes
    assert "imagePullSecrets" in ci.notes
    assert "kubectl" in ci.notes
    first_rule = ci.values["policy"]["rules"][0]
    assert f"get secret {first_rule['secret']}" in ci.notes


# --------------------------------------------------------------------------- chart files


def test_values_yaml_documents_every_key() -> None:
    """helm-docs style: every leaf key has a '# --' comment, or sits under a documented key."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    key_line = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z][\w.-]*):(?P<rest>.*)$")
    documented_stack: list[tuple[int, bool]] = []
    undocumented: list[str] = []
    for number, line in enumerate(lines):
        match = key_line.match(line)
        if not match:
            continue
        indent = len(match.group("indent"))
        while documented_stack and documented_stack[-1][0] >= indent:
            documented_stack.pop()
        comments: list[str] = []
        back = number - 1
        while back >= 0 and lines[back].strip().startswith("#"):
            comments.append(lines[back].strip())
            back -= 1
        documented = any(c.startswith("# --") for c in comments)
        inherited = any(d for _, d in documented_stack)
        rest = match.group("rest").strip()
        is_leaf = rest != "" and not rest.startswith("#")
        next_is_list = number + 1 < len(lines) and lines[number + 1].strip().startswith("- ")
        if (is_leaf or next_is_list) and not (documented or inherited):
            undocumented.append(match.group("key"))
        documented_stack.append((indent, documented or inherited))
    assert not undocumented, f"values.yaml keys without a '# --' comment: {undocumented}"


def test_schema_is_strict() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    for key in ("image", "webhook", "server", "metrics", "certificates", "policy", "mirrors", "rbac", "service"):
        assert props[key]["additionalProperties"] is False, key
    assert props["certificates"]["properties"]["mode"]["enum"] == ["self", "cert-manager", "manual"]
    assert props["webhook"]["properties"]["failurePolicy"]["enum"] == ["Ignore", "Fail"]
    assert props["server"]["properties"]["logFormat"]["enum"] == ["json", "text"]
    assert set(default_values()) <= set(props)


def test_helpers_are_split_by_concern() -> None:
    templates = CHART / "templates"
    for name in (
        "_helpers.tpl",
        "_policy.tpl",
        "_certs.tpl",
        "_mirrors.tpl",
        "NOTES.txt",
        "tests/test-connection.yaml",
    ):
        assert (templates / name).is_file(), name
    assert "pullsecret-injector.validateMirrors" in (templates / "_mirrors.tpl").read_text()
    assert "pullsecret-injector.targetSecretNames" in (templates / "_policy.tpl").read_text()
    assert "pullsecret-injector.sourceSecretsByNamespace" in (templates / "_policy.tpl").read_text()
    assert "lookup" in (templates / "_certs.tpl").read_text()


# --------------------------------------------------------------------------- Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            instruction, _, rest = stripped.partition(" ")
            result.append((instruction.upper(), rest.strip()))
    return result


def test_dockerfile_contract() -> None:
    instructions = _dockerfile_instructions()
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for i, rest in instructions if i == "ARG" and "=" in rest}
    froms = [rest for i, rest in instructions if i == "FROM"]
    assert len(froms) == 2, "multi-stage: builder + runtime"
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert froms[0].endswith(" AS builder")
    runs = " ".join(rest for i, rest in instructions if i == "RUN")
    assert "pip wheel" in runs
    assert "pip install" in runs
    # hermetic builds: a non-empty wheelhouse/ in the context is installed from without an index
    assert ("COPY", "wheelhouse/ /wheelhouse/") in instructions
    assert "--no-index --find-links /wheelhouse" in runs
    from_positions = [n for n, (i, _) in enumerate(instructions) if i == "FROM"]
    runtime = instructions[from_positions[1] :]

    def last(name: str) -> str:
        return [rest for i, rest in runtime if i == name][-1]

    # the runtime stage builds nothing: its one RUN only removes the base's package installer
    (cleanup,) = [rest for i, rest in runtime if i == "RUN"]
    assert "pip uninstall" in cleanup
    assert "rm -rf /usr/share/python-wheels" in cleanup
    assert not re.search(r"pip install|apt-get|pip wheel", cleanup)
    assert [rest for i, rest in runtime if i == "COPY"] == ["--from=builder /opt/venv /opt/venv"]
    assert re.fullmatch(r"\d+(:\d+)?", last("USER")), "numeric non-root user"
    assert last("USER").split(":")[0] == "65532"
    assert json.loads(last("ENTRYPOINT")) == ["pullsecret-injector"]
    assert json.loads(last("CMD")) == ["serve"]
    assert set(last("EXPOSE").split()) == {"8443", "9090"}
    labels = " ".join(rest for i, rest in runtime if i == "LABEL")
    for key in ("title", "source", "version", "revision", "licenses", "created"):
        assert f"org.opencontainers.image.{key}=" in labels
    chart = load_yaml(CHART / "Chart.yaml")
    assert args["VERSION"] == chart["appVersion"]


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Translate a .dockerignore pattern (Go filepath.Match plus ``**``) into a regex."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            close = pattern.index("]", i)
            out, i = out + pattern[i : close + 1], close + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _dockerignore_allows(path: str) -> bool:
    """Docker's rules: a pattern matches a path or any parent of it; the last match wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    allowed = True
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        regex = _glob_regex(pattern.removeprefix("!").rstrip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            allowed = negate
    return allowed


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("pyproject.toml", True),
        ("webhook/cli.py", True),
        ("webhook/examples/policy.yaml", True),
        (".venv/bin/python", False),
        (".git/config", False),
        ("tests/test_chart.py", False),
        ("charts/pullsecret-injector/values.yaml", False),
        ("certs/tls.key", False),
        ("webhook/__pycache__/cli.cpython-311.pyc", False),
    ],
    ids=lambda v: str(v),
)
def test_dockerignore(path: str, allowed: bool) -> None:
    assert _dockerignore_allows(path) is allowed
