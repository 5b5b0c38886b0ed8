{{/*
Cross-value checks. Included once at the top of deployment.yaml, so any
rendering (install, upgrade, template, lint) fails early with a message that
names the offending values. values.schema.json catches type and enum errors
first; these checks also hold with --skip-schema-validation.
*/}}
{{- define "pullsecret-injector.validate" -}}
{{- $v := .Values -}}
{{- $replicas := int $v.replicaCount -}}
{{- if lt $replicas 1 -}}
{{- fail (printf "replicaCount must be >= 1 (got %v): a webhook without replicas only times out admissions" $v.replicaCount) -}}
{{- end -}}
{{- if not (has (toString $v.webhook.failurePolicy) (list "Ignore" "Fail")) -}}
{{- fail (printf "webhook.failurePolicy must be Ignore or Fail (got %q)" (toString $v.webhook.failurePolicy)) -}}
{{- end -}}
{{- if not (has (toString $v.webhook.reinvocationPolicy) (list "IfNeeded" "Never")) -}}
{{- fail (printf "webhook.reinvocationPolicy must be IfNeeded or Never (got %q)" (toString $v.webhook.reinvocationPolicy)) -}}
{{- end -}}
{{- $timeout := float64 $v.webhook.timeoutSeconds -}}
{{- if or (lt $timeout 1.0) (gt $timeout 30.0) -}}
{{- fail (printf "webhook.timeoutSeconds must be between 1 and 30 (got %v)" $v.webhook.timeoutSeconds) -}}
{{- end -}}
{{- if ge (float64 $v.server.ensureTimeout) $timeout -}}
{{- fail (printf "server.ensureTimeout (%v) must be lower than webhook.timeoutSeconds (%v): the API server would give up on the webhook before it answers" $v.server.ensureTimeout $v.webhook.timeoutSeconds) -}}
{{- end -}}
{{- if ge (float64 $v.server.shutdownDelay) (float64 $v.terminationGracePeriodSeconds) -}}
{{- fail (printf "server.shutdownDelay (%v) must be lower than terminationGracePeriodSeconds (%v): the kubelet would kill the webhook before it stops serving cleanly" $v.server.shutdownDelay $v.terminationGracePeriodSeconds) -}}
{{- end -}}
{{- if and $v.metrics.serviceMonitor.enabled (not $v.metrics.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled requires metrics.enabled: there is no metrics port to scrape" -}}
{{- end -}}
{{- if and $v.metrics.enabled (eq (int $v.metrics.port) (int $v.server.port)) -}}
{{- fail (printf "metrics.port and server.port must differ (both %v)" $v.server.port) -}}
{{- end -}}
{{- if and $v.podDisruptionBudget.enabled (gt $replicas 1) -}}
{{- $min := $v.podDisruptionBudget.minAvailable -}}
{{- if not (kindIs "string" $min) -}}
{{- if ge (int $min) $replicas -}}
{{- fail (printf "podDisruptionBudget.minAvailable (%v) must be lower than replicaCount (%d): otherwise no webhook Pod can ever be evicted and node drains block" $min $replicas) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (not $v.serviceAccount.create) (not $v.serviceAccount.name) -}}
{{- fail "serviceAccount.name is required when serviceAccount.create is false" -}}
{{- end -}}
{{- include "pullsecret-injector.validateCerts" . -}}
{{- include "pullsecret-injector.validatePolicy" . -}}
{{- include "pullsecret-injector.validateMirrors" . -}}
{{- end -}}
