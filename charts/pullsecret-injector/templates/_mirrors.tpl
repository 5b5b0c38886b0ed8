{{/*
Mirror helpers (mirrors.*): the webhook's side of policy.mirrors, i.e. what a
`check: true` HEAD to a mirror endpoint trusts and how long it may take.

The CA bundle (--mirror-ca-file) comes from one of two ConfigMaps, mounted
read-only at /mirror-ca (only the one key, as ca.crt):
  mirrors.caBundle             PEM text; the chart renders <fullname>-mirror-ca.
  mirrors.existingCaConfigMap  a ConfigMap you (trust-manager, a GitOps tool)
                               own in the release namespace; never rendered.
The webhook reads the bundle once, at start-up (build_mirror_checker in
webhook/admission/mirroring.py), unlike the policy (watched) and the TLS files
(reloaded). So the chart's own ConfigMap is hashed into a checksum annotation
on the Pod template, and a changed bundle rolls the Deployment; a ConfigMap the
chart does not render cannot be hashed here (lookup sees nothing under
`helm template` and GitOps renderers): restart the Deployment after changing it.
*/}}

{{/* Fails on contradictory or unusable mirror values. Renders nothing. */}}
{{- define "pullsecret-injector.validateMirrors" -}}
{{- $m := .Values.mirrors -}}
{{- if and $m.caBundle $m.existingCaConfigMap -}}
{{- fail (printf "mirrors.caBundle and mirrors.existingCaConfigMap are mutually exclusive (existingCaConfigMap is %q): give the PEM in caBundle for a ConfigMap the chart renders, or name a ConfigMap you own in existingCaConfigMap, not both" (toString $m.existingCaConfigMap)) -}}
{{- end -}}
{{- if and $m.caBundle (not (contains "-----BEGIN CERTIFICATE-----" (toString $m.caBundle))) -}}
{{- fail "mirrors.caBundle must be PEM text (-----BEGIN CERTIFICATE-----), not base64: the webhook reads it as a PEM file" -}}
{{- end -}}
{{- if not (regexMatch "^[-._a-zA-Z0-9]{1,253}$" (toString $m.caBundleKey)) -}}
{{- fail (printf "mirrors.caBundleKey: %q is not a ConfigMap key (letters, digits, '-', '_', '.')" (toString $m.caBundleKey)) -}}
{{- end -}}
{{- /* Checked mirrors run before the Secrets are ensured: both must fit under the backstop, or
every Pod whose mirror is slow is let through unchanged. Only for a policy the chart renders
(with policy.existingConfigMap it cannot see the mirrors). */ -}}
{{- $checked := false -}}
{{- range $registry, $mirror := (.Values.policy.mirrors | default dict) -}}
{{- if and (kindIs "map" $mirror) $mirror.check -}}{{- $checked = true -}}{{- end -}}
{{- end -}}
{{- $backstop := include "pullsecret-injector.admissionTimeout" . | float64 -}}
{{- if and $checked (ge (addf (float64 $m.checkBudget) (float64 .Values.server.ensureTimeout)) $backstop) -}}
{{- fail (printf "mirrors.checkBudget (%v) + server.ensureTimeout (%v) must be lower than the admission backstop (%v s: server.ensureTimeout + 1, at most halfway to webhook.timeoutSeconds): a Pod whose checked mirror is slow would be admitted unchanged" $m.checkBudget .Values.server.ensureTimeout $backstop) -}}
{{- end -}}
{{- end -}}

{{/* Whether a mirror CA bundle is configured ("true" or empty). */}}
{{- define "pullsecret-injector.mirrorCaConfigured" -}}
{{- if or .Values.mirrors.caBundle .Values.mirrors.existingCaConfigMap -}}true{{- end -}}
{{- end -}}

{{/* Name of the ConfigMap the bundle is mounted from: yours, else the chart's. */}}
{{- define "pullsecret-injector.mirrorCaConfigMapName" -}}
{{- .Values.mirrors.existingCaConfigMap | default (printf "%s-mirror-ca" (include "pullsecret-injector.fullname" .)) -}}
{{- end -}}

{{/* Where the bundle is mounted, and the file in it (--mirror-ca-file). */}}
{{- define "pullsecret-injector.mirrorCaDir" -}}
/mirror-ca
{{- end -}}
{{- define "pullsecret-injector.mirrorCaFile" -}}
{{- printf "%s/ca.crt" (include "pullsecret-injector.mirrorCaDir" .) -}}
{{- end -}}

{{/* Pod template annotation that rolls the Pods when the chart's own bundle changes. */}}
{{- define "pullsecret-injector.mirrorCaChecksum" -}}
{{- with .Values.mirrors.caBundle -}}
checksum/mirror-ca: {{ sha256sum . | quote }}
{{- end -}}
{{- end -}}
