"""Every setting of the webhook, with its default, in one place.

One frozen dataclass per concern, grouped in :class:`Settings`; the CLI (flags and ``PSI_*``
environment variables, :func:`webhook.cli.settings_from_args`) fills them, and the server and
the runtime take them whole. A default is written here and nowhere else: the CLI's help, the
transport's keyword defaults and ``tests/test_config.py`` (which checks the chart's values and
args against these) all read it from the dataclasses.

Each dataclass checks its own values when it is built (``__post_init__``), so a bad value is
refused wherever it comes from, as a :class:`SettingsError` naming the setting; the CLI turns
the setting's name back into the flag or environment variable it came from.

The module is pure: no I/O at import, nothing read from the environment except through
:func:`default_identity`, which takes the environment as an argument.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from webhook.errors import UserError

CertMode = Literal["files", "self", "dev"]
LogFormat = Literal["json", "text"]
CERT_MODES: tuple[CertMode, ...] = ("files", "self", "dev")
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "text")
LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(UserError):
    """A setting with a value it cannot have; ``setting`` is its field name (``port``, ``kube.namespace``)."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


def _require(condition: bool, setting: str, problem: str) -> None:
    if not condition:
        raise SettingsError(setting, problem)


def _port(value: int, setting: str, *, allow_zero: bool) -> None:
    low = 0 if allow_zero else 1
    _require(low <= value <= 65535, setting, f"must be a port number, {low} to 65535 (got {value})")


def _positive(value: float, setting: str) -> None:
    _require(value > 0, setting, f"must be greater than 0 (got {value:g})")


def _non_negative(value: float, setting: str) -> None:
    _require(value >= 0, setting, f"must be 0 or more (got {value:g})")


def _name(value: str, setting: str) -> None:
    _require(bool(value.strip()), setting, "must not be empty")


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The HTTPS admission server and the plain-HTTP metrics server next to it."""

    host: str = "0.0.0.0"
    #: HTTPS port of ``POST /mutate``, ``/healthz`` and ``/readyz``.
    port: int = 8443
    #: Plain-HTTP port of ``/metrics``; 0 serves no metrics.
    metrics_port: int = 9090
    #: Largest AdmissionReview body accepted; the API server sends at most 3 MiB.
    max_body_bytes: int = 3 * 1024 * 1024
    #: Hard ceiling of one admission answer: the backstop behind ``KubeSettings.ensure_timeout``,
    #: below the webhook configuration's ``timeoutSeconds``.
    admission_timeout: float = 3.0
    #: Seconds a client has to send its request headers, and again its body (slow-loris guard).
    read_timeout: float = 10.0
    #: Seconds an idle keep-alive connection is kept open (the API server reuses its connections).
    keep_alive_timeout: float = 30.0
    #: Seconds between readiness going false and the listener closing on SIGTERM.
    shutdown_delay: float = 0.0
    log_format: LogFormat = "json"
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        _port(self.port, "port", allow_zero=False)
        _port(self.metrics_port, "metrics_port", allow_zero=True)
        _require(self.metrics_port != self.port, "metrics_port", f"must differ from the HTTPS port ({self.port})")
        _positive(self.max_body_bytes, "max_body_bytes")
        _positive(self.admission_timeout, "admission_timeout")
        _positive(self.read_timeout, "read_timeout")
        _positive(self.keep_alive_timeout, "keep_alive_timeout")
        _non_negative(self.shutdown_delay, "shutdown_delay")
        _require(self.log_format in LOG_FORMATS, "log_format", f"must be one of {', '.join(LOG_FORMATS)}")
        _require(
            self.log_level.upper() in LOG_LEVELS,
            "log_level",
            f"must be one of {', '.join(LOG_LEVELS)} (got {self.log_level!r})",
        )


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """Where the policy comes from."""

    #: The policy YAML file, re-read when its content changes; ``None`` only in dev mode
    #: (the bundled example is used).
    file: Path | None = None
    #: The ConfigMap (in ``KubeSettings.namespace``) the file is mounted from: a rejected
    #: policy is reported as an Event on it. ``None``: no Event.
    configmap: str | None = None
    #: Seconds between two looks at the policy file.
    poll_interval: float = 2.0

    def __post_init__(self) -> None:
        _positive(self.poll_interval, "poll_interval")
        if self.configmap is not None:
            _name(self.configmap, "configmap")


@dataclass(frozen=True, slots=True)
class CertSettings:
    """The serving certificate: from files, self-managed in the cluster, or a throwaway one.

    ``files``: ``tls_cert``/``tls_key``, re-read when they change; ``self``: a CA and a
    serving certificate kept in the Secret ``secret_name`` by the webhook itself, with the
    caBundle of ``webhook_config`` kept current; ``dev``: a self-signed pair made at start.
    """

    mode: CertMode = "files"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: ``self`` mode: the Secret (in ``KubeSettings.namespace``) holding the CA and the pair.
    secret_name: str = "pullsecret-injector-tls"
    #: ``self`` and ``dev`` modes: the Service the certificate is issued for.
    service: str = "pullsecret-injector"
    #: ``self`` mode: the MutatingWebhookConfiguration whose caBundle is kept current.
    webhook_config: str = "pullsecret-injector"
    #: ``self`` mode: seconds between checks of the certificate, the CA and the caBundle.
    check_interval: float = 300.0
    #: ``self`` mode: how long start-up retries an unreachable API server for the certificate.
    startup_timeout: float = 60.0
    #: ``files`` mode: seconds between two looks at the certificate files.
    file_poll_interval: float = 10.0

    def __post_init__(self) -> None:
        _require(self.mode in CERT_MODES, "mode", f"must be one of {', '.join(CERT_MODES)}")
        _name(self.secret_name, "secret_name")
        _name(self.service, "service")
        _name(self.webhook_config, "webhook_config")
        _positive(self.check_interval, "check_interval")
        _non_negative(self.startup_timeout, "startup_timeout")
        _positive(self.file_poll_interval, "file_poll_interval")


@dataclass(frozen=True, slots=True)
class KubeSettings:
    """Knobs of the Kubernetes side; the defaults are the production ones."""

    #: The webhook's own namespace (the Lease lives there).
    namespace: str = "pullsecret-system"
    #: A kubeconfig file; ``None``: the in-cluster service account (when in a Pod).
    kubeconfig: Path | None = None
    #: Never talk to a cluster (``--no-kube``): nothing is read or written.
    offline: bool = False
    #: Seconds an admission may spend making Secrets exist.
    ensure_timeout: float = 2.0
    #: Delete managed copies that no rule allows any more.
    cleanup: bool = True
    #: The leader-election Lease (in ``namespace``); the chart names it ``<fullname>-leader``
    #: too, so a release called ``pullsecret-injector`` uses this very name.
    lease_name: str = "pullsecret-injector-leader"
    #: Who we are in the Lease and in Events (the Pod name; see :func:`default_identity`).
    identity: str = "pullsecret-injector"
    #: Full reconcile interval, on top of the passes that watch events trigger.
    resync_seconds: float = 300.0
    #: Leader election (client-go's three durations, and its constraints between them): a
    #: Lease not renewed for ``lease_duration`` seconds is taken over by another replica; the
    #: leader steps down after ``renew_deadline`` without a renewal; every replica tries
    #: every ``retry_period`` (followers with up to 20 % jitter). A SIGKILLed leader is
    #: replaced within ``lease_duration + 2.4 * retry_period`` (docs/reliability.md).
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    #: Bound of each background (non-admission) API call.
    request_timeout: float = 10.0
    #: Server-side ``timeoutSeconds`` of a watch; jittered by up to 20 % like client-go's.
    watch_timeout: float = 300.0
    #: Connect timeout of list/watch calls.
    connect_timeout: float = 5.0
    #: Quiet time collecting watch events before a reconcile pass.
    debounce: float = 0.2
    #: Threads for request/response calls (watches have their own threads).
    workers: int = 16
    #: Writes the reconciler runs at once.
    reconcile_concurrency: int = 8
    #: The same Event (namespace, reason, Secret) is posted at most once per this many seconds.
    event_interval: float = 300.0
    #: How long ``start`` waits for the first list of every watch before serving anyway.
    sync_timeout: float = 15.0
    #: Objects per page when a watch lists (``limit``; client-go's reflector asks for 500 as
    #: well); 0 lists in one piece.
    list_page_size: int = 500
    #: ConfigMap (in ``namespace``) holding the ownership ledger: the copies made and the ones owed,
    #: so any replica, after any restart, cleans up and finishes them (webhook/secrets/ledger.py).
    ledger_configmap: str = "pullsecret-injector-ledger"

    #: Retries of a failed list or watch: capped at 5 s, so a watch resumes within a few seconds
    #: of the end of an API server outage (each retry is one list per watch).
    watch_backoff: BackoffSettings = field(default_factory=lambda: BackoffSettings(initial=0.5, maximum=5.0))
    #: Retries of a reconcile pass that failed (copies handed off by admissions, API errors).
    reconcile_backoff: BackoffSettings = field(default_factory=lambda: BackoffSettings(initial=1.0, maximum=30.0))
    #: Sizes of the Kubernetes side's bounded caches.
    cache_limits: CacheLimits = field(default_factory=lambda: CacheLimits())

    def __post_init__(self) -> None:
        # Only what a user can set from the command line is checked: tests shrink the
        # other timings freely.
        _name(self.namespace, "namespace")
        _name(self.lease_name, "lease_name")
        _name(self.identity, "identity")
        _positive(self.ensure_timeout, "ensure_timeout")
        _positive(self.resync_seconds, "resync_seconds")
        _non_negative(self.list_page_size, "list_page_size")
        # leader election: the Lease carries whole seconds; client-go's ordering of the three
        _require(self.lease_duration >= 1, "lease_duration", f"must be 1 or more (got {self.lease_duration:g})")
        _positive(self.renew_deadline, "renew_deadline")
        _positive(self.retry_period, "retry_period")
        _require(
            self.renew_deadline < self.lease_duration,
            "renew_deadline",
            f"must be shorter than the lease duration ({self.lease_duration:g}s)",
        )
        _require(
            self.retry_period * 1.2 < self.renew_deadline,
            "retry_period",
            f"must be shorter than the renew deadline ({self.renew_deadline:g}s) divided by 1.2 (its jitter)",
        )


@dataclass(frozen=True, slots=True)
class MirrorSettings:
    """The mirror check at admission (``mirrors[*].check``): HEAD on each endpoint's manifest."""

    #: Seconds the mirror checks of one Pod may take together (they run at once, one deadline).
    #: They run before the Secrets are ensured, both under the admission backstop: a Pod whose
    #: checks and ensure together outlast ``server.admission_timeout`` is admitted as written.
    check_budget: float = 0.75
    #: Seconds one manifest HEAD (with its token request) may take.
    probe_timeout: float = 0.6
    #: PEM CA bundle trusted for mirror endpoints on top of the system's (private registries).
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        _positive(self.check_budget, "check_budget")
        _positive(self.probe_timeout, "probe_timeout")


@dataclass(frozen=True, slots=True)
class ControlSettings:
    """The control surface's own timings: the live policy ConfigMap and the ownership ledger.

    Where they are is said once elsewhere: both live in ``KubeSettings.namespace``, the ledger
    is ``KubeSettings.ledger_configmap``, the policy ConfigMap ``PolicySettings.configmap``,
    and each of their calls is bounded by ``KubeSettings.request_timeout``.
    """

    #: The key of the policy document in the policy ConfigMap (the chart writes this one).
    policy_key: str = "policy.yaml"
    #: Seconds between re-checks of a policy rejected for permissions (RBAC may be granted meanwhile).
    recheck_seconds: float = 10.0
    #: A new version missing permissions is re-checked this long before it is reported rejected
    #: (``helm upgrade`` applies the ConfigMap before the Roles that grant its new rules).
    rbac_grace_seconds: float = 3.0
    #: How long start-up retries an unreachable API server for the policy.
    startup_timeout: float = 60.0
    #: Quiet time collecting ledger changes before one write.
    ledger_debounce: float = 0.05


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``serve`` needs, one part per concern; each part goes whole to its user.

    Retry and backoff delays get their own part here too (``BackoffSettings``).
    """

    server: ServerSettings = field(default_factory=ServerSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    certs: CertSettings = field(default_factory=CertSettings)
    kube: KubeSettings = field(default_factory=KubeSettings)
    mirrors: MirrorSettings = field(default_factory=MirrorSettings)
    control: ControlSettings = field(default_factory=ControlSettings)
    # fail-open recovery (issue 12): RecoverySettings is defined at the end of this module
    recovery: RecoverySettings = field(default_factory=lambda: RecoverySettings())

    def __post_init__(self) -> None:
        _require(
            self.server.admission_timeout > self.kube.ensure_timeout,
            "server.admission_timeout",
            f"must be larger than the ensure timeout ({self.kube.ensure_timeout:g}s): it is the backstop behind it",
        )

    @property
    def dev(self) -> bool:
        """Dev mode (``--dev``): a throwaway certificate, and the bundled example if no policy is given."""
        return self.certs.mode == "dev"


@dataclass(frozen=True, slots=True)
class BackoffSettings:
    """Delays of one retry loop: exponential from ``initial`` to ``maximum``, each jittered.

    Every retrying loop (the list-watch, the reconciler) takes one of these and a
    :class:`webhook.backoff.Backoff` built from it, so the delays are named settings rather
    than constants spread over the loops. ``jitter`` is the relative spread (0.2: each delay
    drawn from 80-120 % of its nominal value), so replicas that failed together do not retry
    together.
    """

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2
    #: A loop that has been healthy this long starts again from ``initial`` at its next failure
    #: (for the list-watch: seconds a watch stream has been open after a successful list).
    healthy_after: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(f"backoff needs 0 < initial <= maximum, got {self.initial} and {self.maximum}")
        if self.factor < 1 or not 0 <= self.jitter < 1 or self.healthy_after < 0:
            raise ValueError("backoff needs factor >= 1, 0 <= jitter < 1 and healthy_after >= 0")


@dataclass(frozen=True, slots=True)
class CacheLimits:
    """Entries each bounded cache (:class:`webhook.bounded.BoundedCache`) keeps; every limit in one place.

    Sized so that a cluster of 10,000 namespaces fits with room to spare (the RSS benchmark
    measures that case); past a limit the least recently used entry is forgotten, and
    rebuilding it costs one cold admission, not a cache emptied at once.
    """

    #: Policy decisions per (namespace, selector label values): the admit scan over every
    #: scoped rule costs 180 us with 1,000 rules, a hit 0.1 us.
    namespaces: int = 65536
    #: Ranked rule candidates per registry host (few distinct hosts in any cluster).
    registries: int = 4096
    #: Container plans per (namespace decisions, kind, name, image): Pods of one template
    #: cost a lookup per container instead of parsing and matching each image.
    container_plans: int = 16384
    #: Whole answers per (namespace decisions, Pod template fingerprint): one per template
    #: and distinct set of admitted rules, so a repeated Pod costs a lookup, not a plan.
    answers: int = 4096
    #: Grants per (Secret name, admitted rules): one object per distinct answer, so the
    #: desired copy memoized on its identity is built once, not per admission.
    grants: int = 4096
    #: Desired copies built from a source's content (decoding and re-encoding the
    #: credentials is the expensive part of the warm ensure path).
    desired_copies: int = 1024
    #: Copies found current, per (namespace, name), by resourceVersion.
    verdicts: int = 65536
    #: Namespaces whose label lookup failed a moment ago (held off, not asked again at once).
    failed_lookups: int = 1024
    #: Events posted recently, per (namespace, reason, object): the dedupe window's memory.
    recent_events: int = 4096
    #: Copies whose last reconcile failed, with how (to log a change of failure once).
    failures: int = 65536


def default_identity(env: Mapping[str, str]) -> str:
    """The Pod name (``POD_NAME``, from the downward API), else host and pid: unique per replica."""
    return env.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


__all__ = [
    "CERT_MODES",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "BackoffSettings",
    "CacheLimits",
    "CertMode",
    "CertSettings",
    "KubeSettings",
    "LogFormat",
    "MirrorSettings",
    "PolicySettings",
    "RecoverySettings",
    "ServerSettings",
    "Settings",
    "SettingsError",
    "default_identity",
]


# --------------------------------------------------------------------------- fail-open recovery (issue 12)


@dataclass(frozen=True, slots=True)
class RecoverySettings:
    """Opt-in recovery of Pods admitted without the Secret the policy would have injected.

    With ``failurePolicy: Ignore`` a Pod created while no replica answered (or past the
    timeout) is admitted unmodified and, for a private image, never pulls. With
    ``enabled``, the leader deletes such a Pod once it has sat in ``ImagePullBackOff`` (or
    ``ErrImagePull``) for ``grace_seconds``, *if a controller owns it*: the controller makes
    a new Pod, which goes through the webhook. Bare Pods are only reported (an Event and a
    log line): nobody would recreate them. Off by default: deleting Pods is a decision the
    operator takes (docs/reliability.md explains the trade-off).
    """

    enabled: bool = False
    #: Seconds a Pod must be in an image-pull error, as first seen by us, before it is deleted.
    grace_seconds: float = 60.0
    #: Seconds between two looks at the Pods (a paged list of every namespace's Pods).
    interval: float = 15.0
    #: Pods of the same controller deleted at most this many times per ``window_seconds``: a
    #: Pod the webhook cannot fix (its namespace not sent to it, say) is not deleted forever.
    max_per_owner: int = 3
    window_seconds: float = 3600.0

    def __post_init__(self) -> None:
        _non_negative(self.grace_seconds, "grace_seconds")
        _positive(self.interval, "interval")
        _require(self.max_per_owner >= 1, "max_per_owner", f"must be 1 or more (got {self.max_per_owner})")
        _positive(self.window_seconds, "window_seconds")
