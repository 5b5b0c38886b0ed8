"""``import docker-config``: the real ``docker-credential-pass``, a failing helper, credHelpers beside
inline auths, Podman's auth.json; the Secret compared byte for byte with the real kubectl's.

The pass store is the real thing: a throwaway GPG key (no passphrase) and password store made
in a temporary HOME/GNUPGHOME, the credential stored with ``docker-credential-pass store``,
and the gpg-agent that gpg started stopped with ``gpgconf --kill`` at the end. The command runs
as a subprocess (``python -m webhook import docker-config ...``) with that environment, so the
helper is found on PATH and run exactly as on a laptop.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import builders
from tests.builders import b64, require_program
from webhook.ops.credhelpers import CredentialHelperError, HelperCredential
from webhook.ops.import_docker import NoCredential, podman_auth_paths, resolve, resolve_all

REPO = Path(__file__).resolve().parents[2]
PASS_PASSWORD = 'pa"ss<&>-from-pass-9d1e'
INLINE_PASSWORD = "inline-pass-4c2b"
PODMAN_PASSWORD = "podman-pass-77aa"
TOKEN = "identity-token-0b5e"
ALL_SECRETS = (PASS_PASSWORD, INLINE_PASSWORD, PODMAN_PASSWORD, TOKEN)


def _require(program: str) -> str:
    return require_program(program, "apt-get install golang-docker-credential-helpers gnupg pass kubectl")


def kubectl_secret(name: str, namespace: str, server: str, username: str, password: str) -> str:
    """What the real ``kubectl create secret docker-registry --dry-run=client -o yaml`` prints."""
    return builders.kubectl_secret(name, namespace, server, username, password, output="yaml")


def config_of(manifest: str) -> bytes:
    line = next(line for line in manifest.splitlines() if line.startswith("  .dockerconfigjson: "))
    return base64.b64decode(line.split(": ", 1)[1])


@dataclass
class Laptop:
    """A temporary HOME with a GPG key, a pass store and docker-credential-pass ready."""

    home: Path
    env: dict[str, str]

    def run_helper(self, helper: str, action: str, payload: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [f"docker-credential-{helper}", action],
            input=payload,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
            check=False,
        )

    def store(self, server: str, username: str, secret: str) -> None:
        payload = json.dumps({"ServerURL": server, "Username": username, "Secret": secret})
        result = self.run_helper("pass", "store", payload)
        assert result.returncode == 0, result.stdout + result.stderr

    def write_config(self, document: Mapping[str, object], where: Path | None = None) -> Path:
        path = where or self.home / ".docker" / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document))
        return path

    def import_(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "webhook", "import", "docker-config", *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=REPO,
            timeout=120,
            check=False,
        )


@pytest.fixture
def laptop() -> Iterator[Laptop]:
    _require("docker-credential-pass")
    _require("pass")
    gpg = _require("gpg")
    home = Path(tempfile.mkdtemp(prefix="psi-laptop-"))  # short: gpg-agent's socket path must fit
    gnupg = home / "gnupg"
    gnupg.mkdir(mode=0o700)
    env = {
        "HOME": str(home),
        "GNUPGHOME": str(gnupg),
        "PATH": os.environ["PATH"],
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(REPO),
    }
    try:
        subprocess.run(
            [gpg, "--batch", "--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key",
             "psi test <psi-test@example.invalid>", "future-default", "default", "never"],
            env=env, capture_output=True, check=True, timeout=120,
        )  # fmt: skip
        listing = subprocess.run(
            [gpg, "--list-keys", "--with-colons"], env=env, capture_output=True, text=True, check=True, timeout=60
        ).stdout
        fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        subprocess.run(["pass", "init", fingerprint], env=env, capture_output=True, check=True, timeout=60)
        yield Laptop(home=home, env=env)
    finally:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, capture_output=True, check=False, timeout=60)
        shutil.rmtree(home, ignore_errors=True)


def assert_clean(result: subprocess.CompletedProcess[str], *, manifest_ok: bool) -> None:
    """No credential in stderr, nor in stdout unless it is the manifest (which holds it base64'd only)."""
    for secret in ALL_SECRETS:
        assert secret not in result.stderr
        assert secret not in result.stdout
        if not manifest_ok:
            assert b64(secret) not in result.stdout


# --------------------------------------------------------------------------- the real helper


def test_creds_store_pass_gives_what_kubectl_makes(laptop: Laptop) -> None:
    laptop.store("registry.example.com:5000", "robot", PASS_PASSWORD)
    # What `docker login` leaves in the file with a credsStore: an empty marker entry.
    laptop.write_config({"auths": {"registry.example.com:5000": {}}, "credsStore": "pass"})

    result = laptop.import_("--registry", "registry.example.com:5000", "--name", "regcred", "-n", "shop")

    assert result.returncode == 0, result.stderr
    assert result.stdout == kubectl_secret("regcred", "shop", "registry.example.com:5000", "robot", PASS_PASSWORD)
    assert result.stderr == ""
    assert_clean(result, manifest_ok=True)


def test_cred_helpers_for_one_registry_beside_inline_auths_for_another(laptop: Laptop) -> None:
    laptop.store("ghcr.io", "octo", PASS_PASSWORD)
    laptop.write_config(
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": b64(f"hubuser:{INLINE_PASSWORD}"), "email": "me@example.com"},
                "quay.io": {"auth": b64("not:wanted")},
            },
            "credHelpers": {"ghcr.io": "pass"},
        }
    )

    result = laptop.import_("--registry", "ghcr.io", "--registry", "docker.io", "--name", "regcred", "-n", "shop")

    assert result.returncode == 0, result.stderr
    config = config_of(result.stdout)
    # Each entry is kubectl's entry for that registry; only the chosen registries, keys sorted as Go does.
    ghcr = config_of(kubectl_secret("regcred", "shop", "ghcr.io", "octo", PASS_PASSWORD))
    hub = json.loads(config)["auths"]["docker.io"]
    assert json.loads(config)["auths"]["ghcr.io"] == json.loads(ghcr)["auths"]["ghcr.io"]
    assert hub == {
        "username": "hubuser",
        "password": INLINE_PASSWORD,
        "email": "me@example.com",
        "auth": b64(f"hubuser:{INLINE_PASSWORD}"),
    }
    assert config.startswith(b'{"auths":{"docker.io":{"username":"hubuser","password":')
    assert b"quay.io" not in config
    assert_clean(result, manifest_ok=True)


def test_an_identity_token_is_written_as_identitytoken_with_a_warning(laptop: Laptop) -> None:
    laptop.store("acr.example.io", "<token>", TOKEN)
    laptop.write_config({"credsStore": "pass"})
    result = laptop.import_("--registry", "acr.example.io", "--name", "acr", "-n", "shop")
    assert result.returncode == 0, result.stderr
    assert json.loads(config_of(result.stdout)) == {"auths": {"acr.example.io": {"identitytoken": TOKEN}}}
    assert "identity token" in result.stderr
    assert_clean(result, manifest_ok=True)


def test_a_registry_the_helper_does_not_know_is_refused(laptop: Laptop) -> None:
    laptop.store("registry.example.com", "robot", PASS_PASSWORD)
    laptop.write_config({"credsStore": "pass"})
    result = laptop.import_("--registry", "registry.example.com", "--registry", "ghcr.io", "--name", "x", "-n", "y")
    assert result.returncode == 1
    assert result.stdout == "", "nothing partial is printed"
    assert "registry ghcr.io: credsStore in" in result.stderr
    assert "docker-credential-pass has no credential for it" in result.stderr
    assert_clean(result, manifest_ok=False)


# --------------------------------------------------------------------------- failing helpers


def test_a_failing_helper_is_named_with_its_reason(laptop: Laptop) -> None:
    bin_dir = laptop.home / "bin"
    bin_dir.mkdir()
    broken = bin_dir / "docker-credential-desktop"
    # Like a locked keychain: the protocol's error text on stdout, non-zero exit.
    broken.write_text(
        "#!/bin/sh\ncat >/dev/null\n"
        "echo 'error getting credentials - err: exit status 1, out: keychain is locked'\nexit 1\n"
    )
    broken.chmod(0o755)
    laptop.env["PATH"] = f"{bin_dir}{os.pathsep}{laptop.env['PATH']}"
    laptop.write_config({"credsStore": "desktop", "auths": {"registry.example.com": {}}})

    result = laptop.import_("--registry", "registry.example.com", "--name", "x", "-n", "y")

    assert result.returncode == 1
    assert result.stdout == ""
    assert "credential helper docker-credential-desktop: 'get registry.example.com' exited with code 1" in result.stderr
    assert "keychain is locked" in result.stderr


def test_a_helper_that_is_not_installed(laptop: Laptop) -> None:
    laptop.write_config({"credHelpers": {"123456789012.dkr.ecr.eu-west-1.amazonaws.com": "ecr-login"}})
    result = laptop.import_("--registry", "123456789012.dkr.ecr.eu-west-1.amazonaws.com", "--name", "x", "-n", "y")
    assert result.returncode == 1
    assert "docker-credential-ecr-login not found on PATH" in result.stderr
    assert "credHelpers['123456789012.dkr.ecr.eu-west-1.amazonaws.com']" in result.stderr


# --------------------------------------------------------------------------- podman


def test_podman_auth_json_in_xdg_runtime_dir(laptop: Laptop) -> None:
    runtime = laptop.home / "run"
    laptop.env["XDG_RUNTIME_DIR"] = str(runtime)
    laptop.write_config(
        {"auths": {"quay.io": {"auth": b64(f"podder:{PODMAN_PASSWORD}")}}}, runtime / "containers" / "auth.json"
    )
    # docker's file has another quay.io credential: Podman's own file comes first.
    laptop.write_config({"auths": {"quay.io": {"auth": b64("docker:other")}}})

    result = laptop.import_("--podman", "--registry", "quay.io", "--name", "quay", "-n", "tools")

    assert result.returncode == 0, result.stderr
    assert result.stdout == kubectl_secret("quay", "tools", "quay.io", "podder", PODMAN_PASSWORD)
    assert_clean(result, manifest_ok=True)


def test_podman_paths_follow_containers_auth_json() -> None:
    env = {"HOME": "/h", "REGISTRY_AUTH_FILE": "/a.json", "XDG_RUNTIME_DIR": "/run/user/1"}
    assert podman_auth_paths(env) == [
        Path("/a.json"),
        Path("/run/user/1/containers/auth.json"),
        Path("/h/.config/containers/auth.json"),
        Path("/h/.docker/config.json"),
    ]


# --------------------------------------------------------------------------- resolution (pure)


def _fake(store: Mapping[tuple[str, str], HelperCredential | Exception]) -> object:
    def get(helper: str, url: str) -> HelperCredential | None:
        found = store.get((helper, url))
        if isinstance(found, Exception):
            raise found
        return found

    return get


RESOLVE_CASES = [
    pytest.param(
        {"auths": {"r.io": {"username": "u", "password": "p"}}},
        "r.io",
        {},
        ("r.io", "u", "auths["),
        id="inline-username-password",
    ),
    pytest.param(
        {"auths": {"https://r.io/v2/": {"auth": b64("u:p")}}},
        "r.io",
        {},
        ("r.io", "u", "auths["),
        id="inline-url-key-same-registry",
    ),
    pytest.param(
        {"credsStore": "s", "auths": {"r.io": {"auth": b64("inline:ignored")}}},
        "r.io",
        {("s", "r.io"): HelperCredential("r.io", "helper", "p")},
        ("r.io", "helper", "credsStore"),
        id="creds-store-wins-over-inline-as-in-docker",
    ),
    pytest.param(
        {"credsStore": "s", "credHelpers": {"r.io": "h"}},
        "r.io",
        {("h", "r.io"): HelperCredential("r.io", "fromh", "p"), ("s", "r.io"): HelperCredential("r.io", "froms", "p")},
        ("r.io", "fromh", "credHelpers"),
        id="cred-helpers-win-over-creds-store",
    ),
    pytest.param(
        {"credsStore": "s"},
        "docker.io",
        {("s", "https://index.docker.io/v1/"): HelperCredential("https://index.docker.io/v1/", "hub", "p")},
        ("docker.io", "hub", "credsStore"),
        id="docker-hub-asked-under-its-v1-url",
    ),
]


@pytest.mark.parametrize(("document", "wanted", "store", "expected"), RESOLVE_CASES)
def test_resolution_follows_the_docker_cli(
    document: dict[str, object],
    wanted: str,
    store: dict[tuple[str, str], HelperCredential],
    expected: tuple[str, str, str],
) -> None:
    resolved = resolve(document, wanted, path=Path("/c.json"), get=_fake(store))  # type: ignore[arg-type]
    registry, username, origin = expected
    assert resolved.registry == registry
    assert resolved.entry.username == username
    assert origin in resolved.origin


REFUSE_CASES = [
    pytest.param({"auths": {}}, "r.io", {}, "has no auths entry, credHelpers entry or credsStore", id="nothing"),
    pytest.param({"auths": {"r.io": {}}}, "r.io", {}, "holds no credential", id="empty-marker-without-store"),
    pytest.param(
        {"credsStore": "s"},
        "r.io",
        {("s", "r.io"): CredentialHelperError("s", "exited with code 1: locked")},
        "docker-credential-s: exited with code 1: locked",
        id="helper-error",
    ),
    pytest.param({"credsStore": "s"}, "r.io", {}, "docker-credential-s has no credential for it", id="helper-empty"),
    pytest.param({"auths": {"r.io": {"auth": "%%%"}}}, "r.io", {}, "not base64", id="bad-auth"),
]


@pytest.mark.parametrize(("document", "wanted", "store", "message"), REFUSE_CASES)
def test_refusals_say_why(
    document: dict[str, object], wanted: str, store: dict[tuple[str, str], object], message: str
) -> None:
    with pytest.raises(NoCredential) as info:
        resolve_all(document, [wanted], path=Path("/c.json"), get=_fake(store))  # type: ignore[arg-type]
    assert message in str(info.value)
