"""Image references: the distribution/reference grammar as the kubelet applies it."""

from __future__ import annotations

import pytest

from webhook.policy.images import ImageRef, InvalidReference, Registry, parse_image, parse_registry

D64 = "sha256:" + "a" * 64
D512 = "sha512:" + "b" * 128

# (reference, registry, repository, tag, digest)
VALID: list[tuple[str, str, str, str | None, str | None]] = [
    ("nginx", "docker.io", "library/nginx", None, None),
    ("nginx:1.27", "docker.io", "library/nginx", "1.27", None),
    ("nginx:latest", "docker.io", "library/nginx", "latest", None),
    ("library/nginx", "docker.io", "library/nginx", None, None),
    ("bitnami/redis:7.2", "docker.io", "bitnami/redis", "7.2", None),
    ("docker.io/nginx", "docker.io", "library/nginx", None, None),
    ("docker.io/library/nginx:1", "docker.io", "library/nginx", "1", None),
    ("index.docker.io/nginx", "docker.io", "library/nginx", None, None),
    ("index.docker.io/bitnami/redis", "docker.io", "bitnami/redis", None, None),
    ("registry-1.docker.io/library/busybox", "docker.io", "library/busybox", None, None),
    ("DOCKER.IO/library/busybox", "docker.io", "library/busybox", None, None),
    ("a/b/c/d", "docker.io", "a/b/c/d", None, None),
    ("quay.io/prometheus/node-exporter:v1.8.0", "quay.io", "prometheus/node-exporter", "v1.8.0", None),
    ("gcr.io/distroless/static", "gcr.io", "distroless/static", None, None),
    ("europe-docker.pkg.dev/my-project/repo/app:1.0", "europe-docker.pkg.dev", "my-project/repo/app", "1.0", None),
    ("registry.example.com:5000/team/app", "registry.example.com:5000", "team/app", None, None),
    ("registry.example.com:5000/team/app:v2", "registry.example.com:5000", "team/app", "v2", None),
    ("localhost/app", "localhost", "app", None, None),
    ("localhost:5000/app:dev", "localhost:5000", "app", "dev", None),
    ("myhost:5000/app", "myhost:5000", "app", None, None),
    ("10.0.0.1:5000/app", "10.0.0.1:5000", "app", None, None),
    ("[fc00::1]:5000/app:1", "[fc00::1]:5000", "app", "1", None),
    ("[fc00::1]/app", "[fc00::1]", "app", None, None),
    ("Registry.Example.COM/app", "registry.example.com", "app", None, None),
    ("Foo/bar", "Foo", "bar", None, None),
    (f"nginx@{D64}", "docker.io", "library/nginx", None, D64),
    (f"nginx:1.27@{D64}", "docker.io", "library/nginx", "1.27", D64),
    (f"quay.io/a/b@{D512}", "quay.io", "a/b", None, D512),
    (f"registry.example.com:5000/a:t@{D64}", "registry.example.com:5000", "a", "t", D64),
    ("a.b/c_d/e__f/g-h/i--j/k.l", "a.b", "c_d/e__f/g-h/i--j/k.l", None, None),
    ("app:" + "t" * 128, "docker.io", "library/app", "t" * 128, None),
    ("app:_under", "docker.io", "library/app", "_under", None),
    ("app:Mixed.Case-1", "docker.io", "library/app", "Mixed.Case-1", None),
]

# (reference, substring of the error)
INVALID: list[tuple[str, str]] = [
    ("", "empty"),
    (" nginx", "whitespace"),
    ("Nginx", "lowercase"),
    ("docker.io/Library/nginx", "lowercase"),
    ("quay.io/Prometheus/x", "lowercase"),
    ("nginx:", "invalid tag"),
    ("nginx:-bad", "invalid tag"),
    ("nginx:" + "t" * 129, "invalid tag"),
    ("nginx@sha256:abc", "invalid digest"),
    ("nginx@md5:" + "a" * 32, "unsupported digest"),
    ("nginx@sha256:" + "A" * 64, "lowercase hex"),
    ("nginx@sha256:" + "a" * 63 + "g", "invalid digest"),
    ("a" * 64, "image ID"),
    ("registry.example.com:99999/app", "port"),
    ("registry.example.com/", "invalid repository name ''"),
    ("registry..example.com/app", "invalid registry"),
    ("-registry.example.com/app", "invalid registry"),
    ("app/-x", "invalid repository"),
    ("app//x", "invalid repository"),
    ("app/x_", "invalid repository"),
    ("app@@" + D64, "invalid digest"),
    ("quay.io/" + "a" * 250, "longer than"),
]


@pytest.mark.parametrize(
    ("reference", "registry", "repository", "tag", "digest"), VALID, ids=[v[0][:60] for v in VALID]
)
def test_valid_references_normalise(
    reference: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_image(reference)
    assert str(ref.registry) == registry
    assert ref.repository == repository
    assert ref.tag == tag
    assert ref.digest == digest


@pytest.mark.parametrize(("reference", "message"), INVALID, ids=[i[0][:40] or "empty" for i in INVALID])
def test_invalid_references_raise_a_clear_error(reference: str, message: str) -> None:
    with pytest.raises(InvalidReference, match=message):
        parse_image(reference)


def test_there_are_at_least_forty_cases() -> None:
    assert len(VALID) + len(INVALID) >= 40


@pytest.mark.parametrize(
    ("reference", "canonical"),
    [
        ("nginx", "docker.io/library/nginx:latest"),
        ("nginx:1.27", "docker.io/library/nginx:1.27"),
        (f"nginx@{D64}", f"docker.io/library/nginx@{D64}"),
        (f"nginx:1@{D64}", f"docker.io/library/nginx:1@{D64}"),
        ("[fc00::1]:5000/app", "[fc00::1]:5000/app:latest"),
    ],
    ids=["bare", "tag", "digest", "tag+digest", "ipv6"],
)
def test_canonical_string(reference: str, canonical: str) -> None:
    assert str(parse_image(reference)) == canonical


def test_uppercase_registry_is_matched_lowercase_but_printed_as_written() -> None:
    """``Foo/bar`` names registry ``Foo`` (uppercase makes it a host); DNS is case-insensitive."""
    ref = parse_image("Foo/bar")
    assert ref.registry == Registry(host="foo")
    assert str(ref) == "Foo/bar:latest"
    assert parse_image(str(ref)).registry == ref.registry


def test_parsed_reference_has_port_and_host_apart() -> None:
    ref = parse_image("registry.example.com:5000/team/app")
    assert ref.registry == Registry(host="registry.example.com", port=5000)
    assert ref.name == "registry.example.com:5000/team/app"
    assert isinstance(ref, ImageRef)


@pytest.mark.parametrize(
    ("key", "registry"),
    [
        ("https://index.docker.io/v1/", Registry("docker.io")),
        ("index.docker.io", Registry("docker.io")),
        ("registry-1.docker.io", Registry("docker.io")),
        ("https://quay.io", Registry("quay.io")),
        ("http://registry.example.com:5000/v2/", Registry("registry.example.com", 5000)),
        ("EUROPE-docker.pkg.dev", Registry("europe-docker.pkg.dev")),
        ("[fc00::1]:5000", Registry("[fc00::1]", 5000)),
    ],
    ids=["hub-url", "hub-index", "hub-api", "quay-url", "port-url", "uppercase", "ipv6"],
)
def test_registry_keys_of_docker_configs(key: str, registry: Registry) -> None:
    assert parse_registry(key) == registry


@pytest.mark.parametrize(
    "key", ["", "https://", "bad host/x", "host:notaport"], ids=["empty", "scheme", "space", "port"]
)
def test_bad_registry_keys(key: str) -> None:
    with pytest.raises(InvalidReference):
        parse_registry(key)
