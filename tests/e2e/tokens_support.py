"""Helpers of the token e2e modules: the webhook minting GCP tokens through a loopback metadata server.

The webhook process gets its Google identity the way it would on GKE: google-auth's
Application Default Credentials find the metadata server through ``GCE_METADATA_HOST`` /
``GCE_METADATA_IP`` (here a loopback :class:`~tests.tokens.google_servers.GoogleServers`), with
no key file in the environment. A static rule with a source of its own answers the
registration probe, so the token minter stays cold until a test's first Pod.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.builders import auth_entry
from tests.tokens.google_servers import GoogleServers

from .cluster import dockerconfig_secret, injects, source_namespace
from .controlplane import ControlPlane
from .webhook import WebhookProcess, registered_webhook

PROBE_IMAGE = "probe.example.com/team/app:1.0"
PROBE_SECRET = "probe-pull"


def probe_rule(namespace: str) -> dict[str, Any]:
    """The static rule the registration probe is answered by (its source lives in ``namespace``)."""
    return {
        "name": "probe",
        "registries": ["probe.example.com"],
        "secret": PROBE_SECRET,
        "source": {"secret": {"namespace": namespace, "name": "probe-credentials"}},
    }


def metadata_env(google: GoogleServers, gcloud_config: Path) -> dict[str, str | None]:
    """The webhook's environment for ADC on the metadata server: its address, no key file, no gcloud config."""
    return {
        "GCE_METADATA_HOST": google.host,
        "GCE_METADATA_IP": google.host,
        "CLOUDSDK_CONFIG": str(gcloud_config),
        "GOOGLE_APPLICATION_CREDENTIALS": None,
    }


@contextlib.contextmanager
def token_webhook(
    control_plane: ControlPlane,
    api_client: Any,
    core: Any,
    google: GoogleServers,
    *,
    name: str,
    namespace: str,
    rules: Sequence[dict[str, Any]],
    gcloud_config: Path,
    **options: Any,
) -> Iterator[WebhookProcess]:
    """The webhook ``name`` with ``rules`` (and :func:`probe_rule`) in its own ``namespace``, registered.

    ``options``: more :class:`~tests.e2e.webhook.WebhookProcess` fields (``extra_args``, ...).
    The namespace (with the probe's source) is deleted afterwards.
    """
    sources = [dockerconfig_secret("probe-credentials", {"probe.example.com": auth_entry("probe", "pw")})]
    with (
        source_namespace(core, namespace, sources),
        registered_webhook(
            control_plane,
            api_client,
            name=name,
            namespace=namespace,
            policy={"rules": [*rules, probe_rule(namespace)]},
            probe=injects(core, PROBE_IMAGE, PROBE_SECRET),
            env=metadata_env(google, gcloud_config),  # as a container's env
            **options,
        ) as hook,
    ):
        yield hook


__all__ = ["PROBE_IMAGE", "PROBE_SECRET", "metadata_env", "probe_rule", "token_webhook"]
