"""``doctor``'s judgement: from a snapshot of what the cluster holds to findings with verdicts and fixes.

Everything the cluster was asked is in a :class:`Snapshot` (gathered by
:mod:`webhook.ops.doctor`); :func:`diagnose` turns it into :class:`Finding` lines and does
no I/O, so each diagnosis (no rule, unlabelled namespace, Pod older than the webhook, a
Secret without the entry the kubelet wants, a stale copy, a webhook that cannot be called)
is a table test. A finding never carries a credential: Secrets are described by name,
type, ``auths`` keys and content hashes only.

Verdicts: ``ok`` (checked, fine), ``info`` (context), ``warn`` (could not be checked, or
suspicious but not the cause), ``fail`` (a problem: ``doctor`` exits 1).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from webhook.admission.patch import INJECTED_ANNOTATION, iter_container_images
from webhook.observability.logs import redact
from webhook.ops.kubelet_match import lookup
from webhook.ops.snapshot import (
    EXPIRY_WARNING_SECONDS,
    PULL_EVENT_REASONS,
    PULL_FAILURE_REASONS,
    Finding,
    Snapshot,
    Unreadable,
    Verdict,
    _auths_keys,
    _entry_expiry,
    _entry_has_credentials,
    _metadata,
    _stamp,
    parse_time,
    pull_secret_names,
    selector_fix,
)
from webhook.ops.webhook_findings import webhook_findings
from webhook.policy.images import ImageRef, InvalidReference, parse_image, parse_registry
from webhook.policy.matching import CompiledPolicy, namespace_verdict
from webhook.policy.model import Rule
from webhook.policy.patterns import repository_matches
from webhook.secrets.desired import build_copy, is_current, is_managed
from webhook.secrets.dockerconfig import (
    DOCKERCFG_TYPE,
    DOCKERCONFIGJSON_KEY,
    DOCKERCONFIGJSON_TYPE,
    HASH_ANNOTATION,
    SourceError,
    content_hash,
    parse_source_secret,
)


def _pull_problems(snap: Snapshot) -> dict[str, list[str]]:
    """Container name -> quoted pull failures (container status and Events)."""
    found: dict[str, list[str]] = {}
    status = snap.pod.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(key) or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in PULL_FAILURE_REASONS:
                message = redact(str(waiting.get("message") or ""))
                found.setdefault(str(cs.get("name")), []).append(
                    f"{reason}" + (f": {json.dumps(message)}" if message else "")
                )
    if isinstance(snap.events, list):
        for event in snap.events:
            reason = event.get("reason")
            if reason not in PULL_EVENT_REASONS:
                continue
            message = redact(str(event.get("message") or ""))
            if reason in ("Failed", "InspectFailed") and "image" not in message.lower():
                continue
            path = str((event.get("involvedObject") or {}).get("fieldPath") or "")
            container = path.split("{", 1)[1].rstrip("}") if "{" in path else ""
            count = event.get("count") or 1
            line = f"Event {reason}" + (f" (x{count})" if count != 1 else "") + f": {json.dumps(message)}"
            bucket = found.setdefault(container, [])
            if line not in bucket:
                bucket.append(line)
    return found


def _rule_fix(policy: CompiledPolicy, ref: ImageRef, snap: Snapshot) -> tuple[Verdict, str]:
    """Why no rule serves ``ref`` here, as the most useful fix; ``fail`` when a rule would, if not for the namespace."""
    if policy.namespace_excluded(snap.namespace):
        return "fail", (
            f"namespace {snap.namespace} is in the policy's excludeNamespaces: remove it there, "
            "or run the Pod in another namespace"
        )
    labels = snap.labels
    for candidate in policy.candidates(ref.registry):
        rule = candidate.rule
        if rule.repositories and not any(repository_matches(p, ref.repository) for p in rule.repositories):
            continue
        verdict = namespace_verdict(rule, snap.namespace, labels)
        if verdict == "selector-mismatch" and rule.namespaces.selector is not None and labels is not None:
            return "fail", selector_fix(
                rule.namespaces.selector,
                labels,
                f"namespace {snap.namespace}",
                f"kubectl label namespace {snap.namespace}",
            ) + f" (rule {rule.name})"
        if verdict == "not-included":
            return "fail", f"add {snap.namespace} to namespaces.include of rule {rule.name}"
        if verdict == "excluded":
            return "fail", f"remove {snap.namespace} from namespaces.exclude of rule {rule.name}"
        if verdict == "labels-unknown":
            return "warn", f"cannot read Namespace {snap.namespace}: rule {rule.name}'s selector not evaluated"
    return "info", (
        f"if {ref.registry} needs credentials, add a rule for it to the policy "
        "(or list a pull secret in the Pod yourself)"
    )


def _rules_granting(policy: CompiledPolicy, secret: str, admitted: frozenset[int]) -> list[Rule]:
    return [
        rule
        for index, rule in enumerate(policy.policy.rules)
        if index in admitted and rule.secret == secret and rule.source is not None
    ]


def source_key(rule: Rule) -> tuple[str, str] | None:
    """The (namespace, name) of the Secret a rule's copy is built from; ``None`` without one.

    ``None`` too for a source kind this module does not know yet: doctor then skips the
    staleness check rather than guess.
    """
    source = rule.source
    if source is None:
        return None
    if source.secret is not None:
        return (source.secret.namespace, source.secret.name)
    if source.credentials is not None:
        ref = source.credentials.password_from
        return (ref.namespace, ref.name)
    return None


def _not_listed(snap: Snapshot, secret: str, called: bool, configs_created: datetime | None) -> tuple[str, str | None]:
    """Why a Pod does not list ``secret``, and the fix: the webhook was not there, not called, or failed."""
    created = parse_time(_metadata(snap.pod).get("creationTimestamp"))
    recreate = "delete the Pod so that its controller creates it again (imagePullSecrets of a Pod cannot be changed)"
    if configs_created is not None and created is not None and created < configs_created:
        return (
            f"the Pod lists no {secret}: it was created ({_stamp(created)}) before the webhook configuration "
            f"existed (created {_stamp(configs_created)}), so the webhook never saw it",
            recreate,
        )
    if not called:
        return f"the Pod lists no {secret}: the webhook is not called for it (see the webhook findings)", (
            "fix the webhook configuration, then " + recreate
        )
    annotations = _metadata(snap.pod).get("annotations") or {}
    if INJECTED_ANNOTATION in annotations:
        return (
            f"the Pod lists no {secret} although the webhook injected {annotations[INJECTED_ANNOTATION]!r} "
            "(another webhook or the policy changed since)",
            recreate,
        )
    return (
        f"the Pod lists no {secret} and carries no {INJECTED_ANNOTATION} annotation: the webhook was not "
        "called or failed (failurePolicy Ignore hides that), or the policy changed since the Pod was created",
        "check the webhook findings above and the webhook's logs, then " + recreate,
    )


def _secret_findings(
    snap: Snapshot,
    ref: ImageRef,
    secret_name: str,
    container: str,
    rule: Rule | None,
    admitted: frozenset[int],
) -> list[Finding]:
    findings: list[Finding] = []
    where = f"{snap.namespace}/{secret_name}"
    secret = snap.secrets.get(secret_name)
    if isinstance(secret, Unreadable):
        return [Finding("secret", "warn", f"cannot read Secret {where} ({secret.reason})", container=container)]
    if secret is None:
        fix: str | None
        if rule is not None and rule.source is not None:
            key = source_key(rule)
            source = snap.sources.get(key) if key else None
            if key is not None and source is None:
                fix = f"create the source Secret {key[0]}/{key[1]}: the webhook then copies it into {snap.namespace}"
            else:
                fix = (
                    f"the webhook creates it from {key[0]}/{key[1]} when a Pod is admitted or at the next resync: "
                    "check that it runs and may create Secrets in this namespace"
                    if key
                    else None
                )
        else:
            fix = (
                f"create it: pullsecret-injector import docker-config --registry {ref.registry} "
                f"--name {secret_name} -n {snap.namespace} --apply"
            )
        return [Finding("secret", "fail", f"Secret {where} not found", fix, container)]
    secret_type = secret.get("type") or "Opaque"
    managed = is_managed(secret)
    ownership = "managed by pullsecret-injector" if managed else "not managed by pullsecret-injector"
    if secret_type not in (DOCKERCONFIGJSON_TYPE, DOCKERCFG_TYPE):
        return [
            Finding(
                "secret-type",
                "fail",
                f"Secret {where} is of type {secret_type}, {ownership}: the kubelet only reads "
                f"{DOCKERCONFIGJSON_TYPE} and {DOCKERCFG_TYPE}",
                f"recreate it as {DOCKERCONFIGJSON_TYPE} (the type of a Secret cannot be changed)",
                container,
            )
        ]
    findings.append(Finding("secret", "ok", f"Secret {where} exists, type {secret_type}, {ownership}", None, container))
    try:
        auths = parse_source_secret(secret, what=f"Secret {where}")
    except SourceError as exc:
        findings.append(Finding("auths", "fail", str(exc), "recreate the Secret with a valid docker config", container))
        return findings
    image = ref.name
    chosen = lookup(auths, image)
    if chosen:
        entry = auths[chosen[0].server]
        if not _entry_has_credentials(entry):
            findings.append(
                Finding(
                    "auths",
                    "fail",
                    f"the kubelet picks auths entry {chosen[0].server!r} of {where} for {image}, "
                    "but it holds no credential",
                    "put a username and password (or auth) into that entry",
                    container,
                )
            )
        else:
            findings.append(
                Finding(
                    "auths",
                    "ok",
                    f"the kubelet picks auths entry {chosen[0].server!r} of {where} for {image}",
                    None,
                    container,
                )
            )
        expiry = _entry_expiry(entry)
        if expiry is not None:
            remaining = (expiry - snap.now).total_seconds()
            if remaining <= 0:
                findings.append(
                    Finding(
                        "expiry",
                        "fail",
                        f"the token in auths entry {chosen[0].server!r} expired at {_stamp(expiry)}",
                        "refresh the source credential",
                        container,
                    )
                )
            else:
                findings.append(
                    Finding(
                        "expiry",
                        "warn" if remaining < EXPIRY_WARNING_SECONDS else "info",
                        f"the token in auths entry {chosen[0].server!r} expires at {_stamp(expiry)}",
                        None,
                        container,
                    )
                )
    else:
        near = [server for server in auths if _same_registry(server, ref)]
        detail = f"it has {_auths_keys(auths)}"
        if near:
            detail += f"; {near[0]!r} names the registry but the kubelet does not match it (port, path or alias)"
        host = str(ref.registry)
        if managed:
            source_text = ""
            if rule is not None:
                key = source_key(rule)
                source_text = f" {key[0]}/{key[1]}" if key else ""
            fix = (
                f"the copy lacks an auths entry for {host}: add one to its source{source_text} "
                f"(the copy keeps only the entries matching the rule's registries)"
            )
        else:
            fix = (
                f"the Secret lacks an auths entry for {host}: pullsecret-injector import docker-config "
                f"--registry {host} --name {secret_name} -n {snap.namespace} --apply"
            )
        findings.append(
            Finding(
                "auths",
                "fail",
                f"Secret {where} has no auths entry the kubelet would pick for {image} ({detail})",
                fix,
                container,
            )
        )
    if managed and rule is not None:
        findings.extend(_currency(snap, secret, secret_name, container, admitted))
    return findings


def _same_registry(server: str, ref: ImageRef) -> bool:
    try:
        return parse_registry(server) == ref.registry
    except InvalidReference:
        return False


def _currency(
    snap: Snapshot, secret: dict[str, Any], secret_name: str, container: str, admitted: frozenset[int]
) -> list[Finding]:
    """Whether a managed copy equals what its source gives now (the content hash annotation, and the data)."""
    assert snap.policy is not None
    where = f"{snap.namespace}/{secret_name}"
    rules = _rules_granting(snap.policy, secret_name, admitted)
    if not rules:
        return []
    key = source_key(rules[0])
    if key is None:
        return [Finding("current", "info", f"the copy {where}: staleness not checked for this kind of source")]
    source = snap.sources.get(key)
    if isinstance(source, Unreadable):
        return [
            Finding(
                "current",
                "warn",
                f"cannot read source {key[0]}/{key[1]} ({source.reason}): staleness not checked",
                None,
                container,
            )
        ]
    data = (secret.get("data") or {}).get(DOCKERCONFIGJSON_KEY)
    actual_hash = None
    if isinstance(data, str):
        try:
            actual_hash = content_hash(base64.b64decode(data, validate=True))
        except binascii.Error:
            actual_hash = None
    annotated = (_metadata(secret).get("annotations") or {}).get(HASH_ANNOTATION)
    try:
        desired = build_copy(
            name=secret_name,
            namespace=snap.namespace,
            source=rules[0].source,  # type: ignore[arg-type]  # _rules_granting keeps rules with a source
            rules=[rule.name for rule in rules],
            registries=list(dict.fromkeys(p for rule in rules for p in rule.registries)),
            source_secret=source,
        )
    except SourceError as exc:
        return [Finding("current", "fail", f"the copy {where} cannot be refreshed: {exc}", _source_fix(exc), container)]
    if is_current(secret, desired):
        message = f"the copy {where} is current with its source {key[0]}/{key[1]}"
        return [Finding("current", "ok", message, None, container)]
    if annotated and actual_hash and annotated != actual_hash:
        why = "its data was edited by hand (its hash annotation no longer matches it)"
    elif actual_hash != desired.digest:
        why = f"its content ({actual_hash}) differs from what the source gives now ({desired.digest})"
    else:
        why = "its annotations differ from what the policy gives now"
    return [
        Finding(
            "current",
            "fail",
            f"the copy {where} is stale: {why}",
            "the webhook's reconciler rewrites it within --resync-seconds; if it stays stale, check that a replica "
            "holds the leader Lease and its logs",
            container,
        )
    ]


def _source_fix(exc: SourceError) -> str:
    if exc.reason == "SourceNotFound":
        return "create the source Secret"
    if exc.reason == "NoMatchingCredentials":
        return "add an auths entry for the rule's registries to the source"
    return "fix the source Secret's content"


def template_images(snap: Snapshot) -> list[tuple[str, str, object]]:
    spec = snap.pod.get("spec")
    return list(iter_container_images(spec)) if isinstance(spec, dict) else []


def diagnose(snap: Snapshot) -> list[Finding]:
    """All findings for the snapshot, webhook first, then each container in Pod order."""
    findings: list[Finding] = []
    if snap.policy is None:
        findings.append(
            Finding(
                "policy",
                "warn",
                f"no policy ({snap.policy_error or 'not found'}): rules and Secrets not checked",
                "pass --policy FILE or --policy-configmap NAMESPACE/NAME",
            )
        )
    else:
        findings.append(
            Finding("policy", "info", f"policy {snap.policy_origin}: {len(snap.policy.policy.rules)} rule(s)")
        )
    if snap.labels is None:
        reason = snap.namespace_object.reason if isinstance(snap.namespace_object, Unreadable) else "not found"
        findings.append(Finding("namespace", "warn", f"cannot read Namespace {snap.namespace} ({reason})"))
    hook_findings, called = webhook_findings(snap)
    findings.extend(hook_findings)
    configs_created = None
    if isinstance(snap.webhook_configs, list) and snap.webhook_configs:
        stamps = [parse_time(_metadata(c).get("creationTimestamp")) for c in snap.webhook_configs]
        known = [s for s in stamps if s is not None]
        configs_created = min(known) if known else None
    spec = snap.pod.get("spec") if isinstance(snap.pod.get("spec"), dict) else {}
    assert isinstance(spec, dict)
    listed = pull_secret_names(spec)
    sa_secrets: list[str] = []
    if isinstance(snap.service_account, dict):
        sa_secrets = pull_secret_names(snap.service_account)
    sa_name = spec.get("serviceAccountName") or "default"
    pulls = _pull_problems(snap)
    admitted = snap.policy.admitted_rules(snap.namespace, snap.labels) if snap.policy is not None else frozenset()
    for _kind, container, raw in template_images(snap):
        failing = pulls.get(container, [])
        if not isinstance(raw, str):
            findings.append(Finding("image", "fail", "the image is missing", None, container))
            continue
        try:
            ref = parse_image(raw)
        except InvalidReference as exc:
            findings.append(Finding("image", "fail", str(exc), "fix the image reference", container))
            continue
        normalised = "" if str(ref) == raw else f" (normalised: {ref})"
        findings.append(Finding("image", "info", f"image {raw}{normalised}", None, container))
        expected: list[tuple[str, Rule | None]] = []
        if snap.policy is not None:
            decision = snap.policy.decide(ref, snap.namespace, snap.labels, explain=True)
            if decision.rule is not None:
                findings.append(
                    Finding(
                        "rule",
                        "ok",
                        f"rule {decision.rule.name} gives Secret {decision.rule.secret}: {decision.reason}",
                        None,
                        container,
                    )
                )
                expected.append((decision.rule.secret, decision.rule))
            else:
                verdict, fix = _rule_fix(snap.policy, ref, snap)
                if failing and verdict == "info":
                    verdict = "fail"
                findings.append(Finding("rule", verdict, f"no rule: {decision.reason}", fix, container))
        # Secrets the Pod lists itself (by hand or from the ServiceAccount) are also what the kubelet reads.
        for name in listed:
            if all(name != secret for secret, _ in expected):
                expected.append((name, None))
        for secret_name, rule in expected:
            if secret_name in listed:
                origin = f" (from ServiceAccount {sa_name})" if secret_name in sa_secrets else ""
                if snap.is_pod:
                    findings.append(
                        Finding("listed", "ok", f"the Pod lists imagePullSecret {secret_name}{origin}", None, container)
                    )
            elif snap.is_pod:
                message, listed_fix = _not_listed(snap, secret_name, called, configs_created)
                findings.append(Finding("listed", "fail", message, listed_fix, container))
            else:
                findings.append(
                    Finding(
                        "listed",
                        "info",
                        f"the template lists no {secret_name}: the webhook adds it when each Pod is created",
                        None,
                        container,
                    )
                )
            findings.extend(_secret_findings(snap, ref, secret_name, container, rule, admitted))
        for line in failing:
            findings.append(Finding("pull", "fail", f"the image cannot be pulled: {line}", None, container))
    for container, lines in pulls.items():
        if container and container not in {name for _, name, _ in template_images(snap)}:
            for line in lines:
                findings.append(Finding("pull", "fail", f"the image cannot be pulled: {line}", None, container))
        elif not container:
            for line in lines:
                findings.append(Finding("pull", "fail", f"the image cannot be pulled: {line}", None, None))
    if isinstance(snap.events, Unreadable):
        findings.append(Finding("events", "warn", f"cannot read the Pod's Events ({snap.events.reason})"))
    return findings


def exit_code(findings: Sequence[Finding]) -> int:
    """0 when nothing failed, 1 when a problem was found."""
    return 1 if any(f.verdict == "fail" for f in findings) else 0


def render_text(snap: Snapshot, findings: Sequence[Finding]) -> str:
    """One line per finding: verdict, check, container, message and (after ``fix:``) the fix."""
    lines = [f"{snap.kind} {snap.namespace}/{snap.name}"]
    for f in findings:
        subject = f"[{f.container}] " if f.container else ""
        fix = f" -- fix: {f.fix}" if f.fix else ""
        lines.append(f"  {f.verdict.upper():<4}  {f.check:<22} {subject}{f.message}{fix}")
    problems = sum(f.verdict == "fail" for f in findings)
    warnings = sum(f.verdict == "warn" for f in findings)
    lines.append(f"{problems} problem(s), {warnings} warning(s)")
    return "\n".join(lines) + "\n"


def render_json(snap: Snapshot, findings: Sequence[Finding]) -> dict[str, Any]:
    return {
        "kind": snap.kind,
        "namespace": snap.namespace,
        "name": snap.name,
        "findings": [f.to_json() for f in findings],
        "problems": sum(f.verdict == "fail" for f in findings),
        "warnings": sum(f.verdict == "warn" for f in findings),
        "exitCode": exit_code(findings),
    }


#: With the snapshot types the callers of :func:`diagnose` need.
__all__ = ["Finding", "Snapshot", "Unreadable", "diagnose", "exit_code", "render_json", "render_text"]
