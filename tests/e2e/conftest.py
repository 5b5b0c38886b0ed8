"""Fixtures for the e2e tests: a real control plane on loopback, started once per session.

Without the binaries the tests skip (one line saying how to get them), unless
PSI_REQUIRE_E2E=1, which turns that into a failure (for CI, so e2e cannot silently vanish).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.prerequisites import unavailable
from tests.registries import BusyboxImages, Registry

from .cluster import Namespaces, apps_api, core_api
from .controlplane import KEEP, ControlPlane, KubeAssets, find_assets
from .node import NODE_INSTALL_HINT, Node, missing_prerequisites
from .report import Measurements, Note

_HERE = Path(__file__).resolve().parent

MISSING_ASSETS = (
    "e2e: no kube-apiserver/etcd found; run `bash hack/build-kube-assets.sh` "
    "or set KUBE_ASSETS=/path/with/etcd+kube-apiserver"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e (and only those) with ``e2e``."""
    for item in items:
        if item.path.resolve().is_relative_to(_HERE):
            item.add_marker(pytest.mark.e2e)


def require_assets() -> KubeAssets:
    """The binaries, or skip with one line saying how to get them (fail under PSI_REQUIRE_E2E=1)."""
    assets = find_assets()
    if assets is None:
        unavailable(MISSING_ASSETS)
    return assets


def require_node() -> None:
    """Skip (fail under PSI_REQUIRE_E2E=1) with one line when a real node cannot start here."""
    missing = missing_prerequisites()
    if missing:
        unavailable(f"e2e node: missing {'; '.join(missing)} ({NODE_INSTALL_HINT})")


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """A started etcd + kube-apiserver + kube-controller-manager, stopped after the session."""
    with ControlPlane(require_assets(), keep_workdir=KEEP) as cp:
        yield cp


@pytest.fixture(scope="session")
def api_client(control_plane: ControlPlane) -> Iterator[Any]:
    """A ``kubernetes.client.ApiClient`` for the admin user (session-wide)."""
    with control_plane.admin_client() as api:
        yield api


@pytest.fixture(scope="module")
def core(api_client: Any) -> Any:
    """``CoreV1Api`` over the admin client (a module with a control plane of its own overrides it)."""
    return core_api(api_client)


@pytest.fixture(scope="module")
def apps(api_client: Any) -> Any:
    return apps_api(api_client)


@pytest.fixture
def namespaces(control_plane: ControlPlane, core: Any) -> Iterator[Namespaces]:
    """Namespaces for one test (``namespaces.one(prefix, hook=...)``), deleted after it."""
    factory = Namespaces(control_plane, core)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def note(measurements: Measurements, record_property: Callable[[str, object], None], request: Any) -> Note:
    """``note(key, text)``: print it, record it as a property, list it under the module's ``measurements``."""
    return measurements.noter(request, record_property)


@pytest.fixture
def namespace(namespaces: Namespaces) -> str:
    """A fresh namespace whose ``default`` ServiceAccount is ready for Pods; deleted afterwards."""
    return namespaces.one("e2e")


@pytest.fixture(scope="session")
def node_images(tmp_path_factory: pytest.TempPathFactory) -> BusyboxImages:
    """One OCI layout for every image the node tests build (they share the busybox layer)."""
    require_node()
    return BusyboxImages(tmp_path_factory.mktemp("node-images") / "layout")


@pytest.fixture(scope="session")
def node_registries(node_images: BusyboxImages) -> Iterator[tuple[Registry, Registry]]:
    """Two private registries (htpasswd + TLS, each its own CA) with different users, for the session.

    ``a``: ``puller-a`` and ``rotator`` (whose password the rotation test changes); ``b``: ``puller-b``.
    """
    a = Registry(users={"puller-a": "a-pass-1", "rotator": "rot-pass-1"}, name="registry-a", keep_workdir=KEEP)
    b = Registry(users={"puller-b": "b-pass-1"}, name="registry-b", keep_workdir=KEEP)
    a.start()
    try:
        b.start()
        try:
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


@pytest.fixture(scope="session")
def node(
    control_plane: ControlPlane, node_images: BusyboxImages, node_registries: tuple[Registry, Registry]
) -> Iterator[Node]:
    """A Ready node (containerd + kubelet) trusting both registries; torn down by PID after the session."""
    require_node()
    real = Node(control_plane, node_images, keep_workdir=KEEP)
    real.start(node_registries)
    try:
        yield real
    finally:
        real.stop()
