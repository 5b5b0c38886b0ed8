"""``doctor``'s checks of the webhook itself: is it registered, does it cover Pod CREATE in this
namespace, does its caBundle verify the serving certificate, is it ready, what does it do on failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhook.ops.snapshot import (
    Finding,
    Snapshot,
    Unreadable,
    WebhookProbe,
    _metadata,
    _selector,
    selector_fix,
)


def _rule_covers_pod_create(rule: Mapping[str, Any]) -> bool:
    def has(key: str, *accepted: str) -> bool:
        values = rule.get(key) or []
        return any(value in accepted for value in values)

    scope = rule.get("scope") or "*"
    return (
        has("operations", "CREATE", "*")
        and has("apiGroups", "", "*")
        and has("apiVersions", "v1", "*")
        and has("resources", "pods", "*", "*/*")
        and scope in ("*", "Namespaced")
    )


def webhook_findings(snap: Snapshot) -> tuple[list[Finding], bool]:
    """Findings on the MutatingWebhookConfiguration; also whether some webhook would be called for the Pod."""
    findings: list[Finding] = []
    configs = snap.webhook_configs
    if isinstance(configs, Unreadable):
        findings.append(
            Finding(
                "webhook-config",
                "warn",
                f"cannot read MutatingWebhookConfigurations ({configs.reason}): webhook not checked",
                "run doctor with a user that may get mutatingwebhookconfigurations",
            )
        )
        return findings, True
    if not configs:
        findings.append(
            Finding(
                "webhook-config",
                "fail",
                f"no MutatingWebhookConfiguration {snap.webhook_wanted}: the API server calls no webhook, "
                "so no Pod gets its imagePullSecrets",
                "install the chart (helm install pullsecret-injector charts/pullsecret-injector), "
                "or name the configuration with --webhook-config",
            )
        )
        return findings, False
    called = False
    ns_labels = snap.labels
    pod_labels = {str(k): str(v) for k, v in (_metadata(snap.pod).get("labels") or {}).items()}
    for config in configs:
        config_name = str(_metadata(config).get("name"))
        for hook in config.get("webhooks") or []:
            hook_name = str(hook.get("name"))
            where = f"webhook {hook_name} of MutatingWebhookConfiguration {config_name}"
            covers = True
            if not any(_rule_covers_pod_create(rule) for rule in hook.get("rules") or []):
                covers = False
                findings.append(
                    Finding(
                        "webhook-rules",
                        "fail",
                        f"{where} has no rule for Pod CREATE",
                        "add the rule operations [CREATE], apiGroups [''], apiVersions [v1], resources [pods]",
                    )
                )
            ns_selector = _selector(hook.get("namespaceSelector"))
            if ns_selector is not None:
                if ns_labels is None:
                    findings.append(
                        Finding(
                            "webhook-namespace",
                            "warn",
                            f"cannot read Namespace {snap.namespace}: the namespaceSelector of {where} not evaluated",
                        )
                    )
                elif not ns_selector.matches(ns_labels):
                    covers = False
                    findings.append(
                        Finding(
                            "webhook-namespace",
                            "fail",
                            f"the namespaceSelector of {where} does not select namespace {snap.namespace}: "
                            "its Pods are never sent to the webhook",
                            selector_fix(
                                ns_selector,
                                ns_labels,
                                f"namespace {snap.namespace}",
                                f"kubectl label namespace {snap.namespace}",
                            ),
                        )
                    )
            obj_selector = _selector(hook.get("objectSelector"))
            if obj_selector is not None and not obj_selector.matches(pod_labels):
                covers = False
                what = "the Pod" if snap.is_pod else f"the Pods of {snap.kind} {snap.name}"
                findings.append(
                    Finding(
                        "webhook-object",
                        "fail",
                        f"the objectSelector of {where} does not select {what} (its labels)",
                        selector_fix(
                            obj_selector,
                            pod_labels,
                            what,
                            f"kubectl -n {snap.namespace} label pod {snap.name}"
                            if snap.is_pod
                            else "set the labels in the Pod template:",
                        ),
                    )
                )
            if covers:
                called = True
                findings.append(
                    Finding("webhook-scope", "ok", f"{where} covers Pod CREATE in namespace {snap.namespace}")
                )
            failure_policy = hook.get("failurePolicy") or "Fail"
            if failure_policy == "Ignore":
                findings.append(
                    Finding(
                        "webhook-failure-policy",
                        "info",
                        f"failurePolicy Ignore: when {hook_name} cannot be called, Pods are created without "
                        "their imagePullSecrets and nothing says so",
                    )
                )
            else:
                findings.append(
                    Finding(
                        "webhook-failure-policy",
                        "info",
                        f"failurePolicy {failure_policy}: a webhook that cannot be called blocks Pod creation",
                    )
                )
            probe = snap.probes.get((config_name, hook_name))
            findings.extend(_probe_findings(hook, hook_name, probe))
    return findings, called


def _probe_findings(hook: Mapping[str, Any], hook_name: str, probe: WebhookProbe | None) -> list[Finding]:
    findings: list[Finding] = []
    client = hook.get("clientConfig") or {}
    if not client.get("caBundle"):
        findings.append(
            Finding(
                "webhook-ca",
                "warn",
                f"{hook_name} has no caBundle: the API server verifies the webhook with its own trust store",
                "set caBundle (the chart fills it in self and cert-manager modes)",
            )
        )
    if probe is None:
        return findings
    if probe.ca_verified is True:
        findings.append(Finding("webhook-ca", "ok", "the caBundle verifies the serving certificate"))
    elif probe.ca_verified is False:
        findings.append(
            Finding(
                "webhook-ca",
                "fail",
                f"the caBundle does not verify the serving certificate of {probe.target} ({probe.ca_detail}): "
                "the API server's calls fail TLS",
                "put the CA that signed the serving certificate into the caBundle "
                "(self mode: restart the webhook, it re-patches the caBundle)",
            )
        )
    elif probe.ca_detail:
        findings.append(Finding("webhook-ca", "warn", f"serving certificate not checked: {probe.ca_detail}"))
    if probe.ready is True:
        # The URL (with its port) stays out of the ok line: the report of a healthy setup is stable.
        how = probe.ready_detail if probe.target.startswith("service ") else "GET /readyz answered 200"
        findings.append(Finding("webhook-ready", "ok", f"the webhook reports ready ({how})"))
    elif probe.ready is False:
        findings.append(
            Finding(
                "webhook-ready",
                "fail",
                f"the webhook is not ready: {probe.ready_detail}",
                "kubectl -n <webhook namespace> logs deploy/pullsecret-injector",
            )
        )
    elif probe.ready_detail:
        findings.append(Finding("webhook-ready", "warn", f"readiness not checked: {probe.ready_detail}"))
    return findings


