{{/*
Names and labels. Policy-derived helpers live in _policy.tpl, certificate-mode
helpers in _certs.tpl, mirror CA helpers in _mirrors.tpl, cross-value checks in
_validate.tpl.
*/}}

{{/* Chart name, overridable with nameOverride. */}}
{{- define "pullsecret-injector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name, the prefix of every resource name. Truncated to 63 characters
(the DNS label limit of Service names).
*/}}
{{- define "pullsecret-injector.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* chart label value: name-version. */}}
{{- define "pullsecret-injector.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Labels of the chart's own resources. Note: managed-by is Helm here; the Secret
copies the webhook creates carry app.kubernetes.io/managed-by: pullsecret-injector.
*/}}
{{- define "pullsecret-injector.labels" -}}
helm.sh/chart: {{ include "pullsecret-injector.chart" . }}
{{ include "pullsecret-injector.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pullsecret-injector
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels: stable across upgrades, never add to them. */}}
{{- define "pullsecret-injector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pullsecret-injector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pullsecret-injector.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pullsecret-injector.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Image reference: digest wins over tag; tag defaults to appVersion. */}}
{{- define "pullsecret-injector.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* Service name; the API server calls <service>.<namespace>.svc:443/mutate. */}}
{{- define "pullsecret-injector.serviceName" -}}
{{- include "pullsecret-injector.fullname" . -}}
{{- end -}}

{{/* MutatingWebhookConfiguration name (cluster-scoped). */}}
{{- define "pullsecret-injector.webhookConfigName" -}}
{{- include "pullsecret-injector.fullname" . -}}
{{- end -}}

{{/* Policy ConfigMap name: policy.existingConfigMap, else the one the chart renders. */}}
{{- define "pullsecret-injector.policyConfigMapName" -}}
{{- .Values.policy.existingConfigMap | default (printf "%s-policy" (include "pullsecret-injector.fullname" .)) -}}
{{- end -}}

{{/* Ownership ledger ConfigMap name (created and kept by the webhook, see _ledger.tpl). */}}
{{- define "pullsecret-injector.ledgerName" -}}
{{- printf "%s-ledger" (include "pullsecret-injector.fullname" .) -}}
{{- end -}}

{{/* Leader-election Lease name. */}}
{{- define "pullsecret-injector.leaseName" -}}
{{- .Values.server.leaderElection.leaseName | default (printf "%s-leader" (include "pullsecret-injector.fullname" .)) -}}
{{- end -}}

{{/* ClusterRole/ClusterRoleBinding name (cluster-scoped, like the webhook configuration). */}}
{{- define "pullsecret-injector.clusterRbacName" -}}
{{- include "pullsecret-injector.fullname" . -}}
{{- end -}}

{{/*
Role/RoleBinding name, in every namespace a source Secret lives in (the release
namespace included, next to the fullname Role).
*/}}
{{- define "pullsecret-injector.sourcesRbacName" -}}
{{- printf "%s-sources" (include "pullsecret-injector.fullname" .) -}}
{{- end -}}

{{/* Name of the webhook entry inside the configuration (must be fully qualified). */}}
{{- define "pullsecret-injector.webhookName" -}}
mutate-pods.pullsecret-injector.io
{{- end -}}

{{/* The admission backstop (--admission-timeout), in seconds: one second after the ensure
timeout, at most halfway to the API server's timeoutSeconds, so that it always lies between the two. */}}
{{- define "pullsecret-injector.admissionTimeout" -}}
{{- $ensureTimeout := float64 .Values.server.ensureTimeout -}}
{{- minf (addf $ensureTimeout 1) (divf (addf $ensureTimeout .Values.webhook.timeoutSeconds) 2) -}}
{{- end -}}
