"""``pullsecret-injector import k3s`` on every registries.yaml shape k3s documents (tests/data/k3s).

The policy it prints must pass ``validate``; each Secret must be what the real ``kubectl
create secret docker-registry`` makes for the same server, username and password (data byte
for byte, type, name, namespace); and every node-level setting in the file must be named in
the output, not dropped silently.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import builders
from webhook.cli import main
from webhook.ops.k3s import K3sImportError, import_registries, object_name

DATA = Path(__file__).parent / "data" / "k3s"
EXAMPLES = sorted(p.name for p in DATA.glob("*.yaml"))
NAMESPACE = "pullsecret-system"


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def kubectl_secret(name: str, server: str, username: str, password: str) -> dict[str, Any]:
    secret: dict[str, Any] = json.loads(
        builders.kubectl_secret(name, NAMESPACE, server, username, password, output="json")
    )
    return secret


def test_every_documented_shape_is_here() -> None:
    assert len(EXAMPLES) == 9


@pytest.mark.parametrize("example", EXAMPLES)
def test_the_policy_validates(example: str, tmp_path: Path) -> None:
    code, text = run_cli("import", "k3s", str(DATA / example), "--output", "policy")
    assert code == 0
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(text)
    code, report = run_cli("validate", str(policy_file))
    assert code == 0, report
    assert "valid" in report
    # helm -f: the same policy under the chart's `policy` value.
    code, values = run_cli("import", "k3s", str(DATA / example))
    assert code == 0
    assert yaml.safe_load(values) == {"policy": yaml.safe_load(text)}


@pytest.mark.parametrize("example", EXAMPLES)
def test_secrets_are_what_kubectl_makes(example: str) -> None:
    document = yaml.safe_load((DATA / example).read_text())
    code, text = run_cli("import", "k3s", str(DATA / example), "--output", "secrets")
    assert code == 0
    secrets = [doc for doc in yaml.safe_load_all(text) if doc]
    configs = {k: v for k, v in (document.get("configs") or {}).items() if v and v.get("auth")}
    assert len(secrets) == len(configs)
    for secret, (server, config) in zip(secrets, configs.items(), strict=True):
        auth = config["auth"]
        expected = kubectl_secret(object_name(server), server, str(auth["username"]), str(auth["password"]))
        assert secret["metadata"] == {"name": object_name(server), "namespace": NAMESPACE}
        assert secret["type"] == expected["type"]
        if "token" not in auth:
            assert secret["data"] == expected["data"], "byte for byte what kubectl stores"
        else:
            ours = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
            theirs = json.loads(base64.b64decode(expected["data"][".dockerconfigjson"]))
            theirs["auths"][server]["identitytoken"] = auth["token"]
            assert ours == theirs


@pytest.mark.parametrize("example", EXAMPLES)
def test_nothing_node_level_is_dropped_silently(example: str) -> None:
    document = yaml.safe_load((DATA / example).read_text())
    result = import_registries((DATA / example).read_text())
    notes = "\n".join(result.notes)
    for server, config in (document.get("configs") or {}).items():
        if config and "tls" in config:
            assert f"configs.{server}.tls" in notes
            for key in config["tls"] or {}:
                assert key in notes
    for registry, mirror in (document.get("mirrors") or {}).items():
        for endpoint in mirror.get("endpoint") or []:
            if endpoint.startswith("http://"):
                assert f"{endpoint} is plain HTTP" in notes
        assert result.policy["mirrors"][registry]["endpoint"] == mirror["endpoint"]
        assert result.policy["mirrors"][registry].get("rewrite", {}) == (mirror.get("rewrite") or {})
    if document.get("mirrors"):
        assert "no per-pull fallback" in notes
    _code, text = run_cli("import", "k3s", str(DATA / example))
    for note in result.notes:
        assert f"# NOTE: {note}" in text


def test_auth_field_and_token_forms() -> None:
    encoded = base64.b64encode(b"robot:s3cret").decode()
    result = import_registries(
        "configs:\n"
        f"  a.example.com: {{auth: {{auth: {encoded}}}}}\n"
        "  b.example.com: {auth: {identity_token: refresh-me}}\n"
        "  '*': {auth: {username: u, password: p}}\n"
    )
    by_name = {s["metadata"]["name"]: s for s in result.secrets}
    a = json.loads(base64.b64decode(by_name["k3s-a.example.com"]["data"][".dockerconfigjson"]))
    assert a == {"auths": {"a.example.com": {"username": "robot", "password": "s3cret", "auth": encoded}}}
    b = json.loads(base64.b64decode(by_name["k3s-b.example.com"]["data"][".dockerconfigjson"]))
    assert b == {"auths": {"b.example.com": {"identitytoken": "refresh-me"}}}
    assert [r["registries"] for r in result.policy["rules"]] == [["a.example.com"], ["b.example.com"], ["*"]]


def test_the_check_command_explains_the_rewrite(tmp_path: Path) -> None:
    code, policy = run_cli("import", "k3s", str(DATA / "03-rewrite.yaml"), "--output", "policy")
    assert code == 0
    (tmp_path / "policy.yaml").write_text(policy)
    (tmp_path / "pod.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n"
        "  containers: [{name: c, image: docker.io/rancher/pause:3.6}]\n"
    )
    code, text = run_cli("check", "--policy", str(tmp_path / "policy.yaml"), str(tmp_path / "pod.yaml"))
    assert code == 0
    assert (
        "docker.io/rancher/pause:3.6 -> registry.example.com:5000/mirrorproject/rancher-images/pause:3.6 "
        "by mirror docker.io, rewrite ^rancher/(.*)"
    ) in text
    _code, report = run_cli("validate", str(tmp_path / "policy.yaml"))
    assert "mirror docker.io -> https://registry.example.com:5000; rewrite ^rancher/(.*) -> " in report


@pytest.mark.parametrize(
    ("text", "error"),
    [("[1, 2]", "must be a mapping"), ("mirrors: [a]", "mirrors must be a mapping"), ("a: [", "not valid YAML")],
    ids=["list", "mirrors-list", "yaml"],
)
def test_bad_files(text: str, error: str) -> None:
    with pytest.raises(K3sImportError, match=error):
        import_registries(text)


def test_unusable_endpoints_are_named() -> None:
    result = import_registries(
        "mirrors:\n  docker.io:\n    endpoint: ['https://h.example.com/prefix/v2', 'mirror']\n"
        "    rewrite: {'rancher/(.*)': 'x/$1'}\n"
    )
    assert "mirrors" not in result.policy
    assert any("cannot be expressed in an image name" in n for n in result.notes)
    assert any("no usable endpoint" in n for n in result.notes)
