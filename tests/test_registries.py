"""The registry helper (tests/registries.py) against the real Distribution, skopeo and umoci.

These start real processes (one registry for the module) but need no Kubernetes, so they are
not e2e: they run with the unit tests. Without the Debian tools they skip with one line, or
fail under ``PSI_REQUIRE_E2E=1`` (CI installs them), like the e2e prerequisites.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.prerequisites import unavailable
from tests.registries import INSTALL_HINT, BusyboxImages, OCIImage, Registry, RegistryTLS, missing_tools


def _require_tools() -> None:
    missing = missing_tools()
    if missing:
        unavailable(f"registry tools missing: {', '.join(missing)} ({INSTALL_HINT})")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> BusyboxImages:
    _require_tools()
    return BusyboxImages(tmp_path_factory.mktemp("oci") / "layout")


@pytest.fixture(scope="module")
def registry(images: BusyboxImages) -> Iterator[Registry]:
    reg = Registry(users={"alice": "alice-pw-1", "bob": "bob-pw-1"}, name="unit-registry")
    reg.start()
    try:
        yield reg
    finally:
        reg.stop()


def test_push_by_tag_reports_the_digest_the_registry_serves(registry: Registry, images: BusyboxImages) -> None:
    app = images.image("unit-app", entrypoint=["/bin/sh", "-c", "echo hello"])
    pushed = registry.push(app, "team/app", "1.0")

    assert pushed.reference == f"{registry.host}/team/app:1.0"
    assert pushed.digest.startswith("sha256:")
    assert registry.manifest_digest("team/app", "1.0", user="bob") == pushed.digest
    assert pushed.by_digest == f"{registry.host}/team/app@{pushed.digest}"


def test_distinct_images_have_distinct_digests(registry: Registry, images: BusyboxImages) -> None:
    one = registry.push(images.image("unit-one", entrypoint=["/bin/true"]), "team/one", "v")
    two = registry.push(images.image("unit-two", entrypoint=["/bin/true"]), "team/two", "v")
    assert one.digest != two.digest


def test_anonymous_and_wrong_passwords_are_refused(registry: Registry) -> None:
    assert registry.login_ok("alice", registry.current_users["alice"])
    assert not registry.login_ok("alice", "wrong")
    assert not registry.login_ok("mallory", "alice-pw-1")
    assert registry.manifest_digest("team/app", "1.0", user="alice") is not None


def test_password_rotation_takes_effect_without_a_restart(registry: Registry) -> None:
    old = registry.current_users["bob"]
    registry.set_password("bob", "bob-pw-2")

    assert registry.restarts == 0, "Distribution 2.8 re-reads a changed htpasswd file"
    assert registry.login_ok("bob", "bob-pw-2")
    assert not registry.login_ok("bob", old)
    assert registry.login_ok("alice", registry.current_users["alice"]), "other users are unaffected"


def test_a_restart_keeps_port_storage_and_users(registry: Registry, images: BusyboxImages) -> None:
    pushed = registry.push(images.image("unit-restart", entrypoint=["/bin/true"]), "team/restart", "1")
    host, pid = registry.host, registry.pid

    registry.restart()

    assert registry.host == host
    assert registry.pid != pid
    assert registry.manifest_digest("team/restart", "1") == pushed.digest
    assert registry.login_ok("bob", registry.current_users["bob"])


def test_dockerconfigjson_names_the_registry_with_its_port(registry: Registry) -> None:
    import json

    config = json.loads(registry.dockerconfigjson("alice"))
    assert list(config["auths"]) == [registry.host]
    assert config["auths"][registry.host]["username"] == "alice"


def test_registries_can_share_one_ca(images: BusyboxImages, tmp_path: Path) -> None:
    first = RegistryTLS.create(common_name="shared")
    with Registry(users={"u": "p"}, name="shared-b", tls=RegistryTLS.create((first.ca_pem, first.ca_key_pem))) as reg:
        assert reg.ca_path.read_bytes() == first.ca_pem
        assert reg.login_ok("u", "p")


def test_an_archive_is_a_docker_archive_with_the_given_name(images: BusyboxImages, tmp_path: Path) -> None:
    import json
    import tarfile

    image: OCIImage = images.image("unit-archive", entrypoint=["/bin/sleep", "3600"])
    path = images.archive(image, tmp_path / "img.tar", "psi.local/pause:1")
    with tarfile.open(path) as tar:
        manifest_file = tar.extractfile("manifest.json")
        assert manifest_file is not None
        manifest = json.load(manifest_file)
    assert manifest[0]["RepoTags"] == ["psi.local/pause:1"]


def test_a_mirror_serves_the_upstreams_images_to_its_own_users(images: BusyboxImages) -> None:
    with Registry(users={}, name="unit-upstream") as upstream:
        pushed = upstream.push(images.image("unit-mirrored", entrypoint=["/bin/true"]), "team/mirrored", "1")
        with Registry(users={"mirror-user": "m-pw"}, name="unit-mirror", upstream=upstream) as mirror:
            assert mirror.manifest_digest("team/mirrored", "1", user="mirror-user") == pushed.digest
            assert upstream.manifest_requests("team/mirrored") >= 1, "fetched from the upstream"
            assert not mirror.login_ok("mirror-user", "wrong"), "the mirror checks its own users"
