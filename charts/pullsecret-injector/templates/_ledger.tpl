{{/*
The webhook's ownership ledger (webhook/secrets/ledger.py): a ConfigMap it creates in the
release namespace, listing the copies it made and the ones it owes. Its `names` key is
read here with `lookup` so the RBAC keeps covering names whose copies still await
cleanup after their rule was removed (from the chart values or by editing the ConfigMap).
`helm template` and `--dry-run` see no cluster: `lookup` is empty, and
rbac.extraSecretNames is the fallback.
*/}}
{{- define "pullsecret-injector.ledgerSecretNames" -}}
{{- $names := list -}}
{{- $ledger := lookup "v1" "ConfigMap" .Release.Namespace (include "pullsecret-injector.ledgerName" .) -}}
{{- with $ledger -}}
{{- with .data -}}
{{- with (index . "names") -}}
{{- range (fromJsonArray .) -}}
{{- if regexMatch "^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$" (toString .) -}}
{{- $names = append $names (toString .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $names | uniq | sortAlpha | toJson -}}
{{- end -}}

{{/* Copy names RBAC covers: the policy's, rbac.extraSecretNames and the ledger's. JSON list. */}}
{{- define "pullsecret-injector.coveredSecretNames" -}}
{{- $names := concat (fromJsonArray (include "pullsecret-injector.targetSecretNames" .)) (fromJsonArray (include "pullsecret-injector.ledgerSecretNames" .)) -}}
{{- $names | uniq | sortAlpha | toJson -}}
{{- end -}}

{{/*
Source Secrets by namespace: the policy's (sourceSecretsByNamespace) plus
rbac.extraSourceSecrets. JSON object {"<namespace>": ["<name>", ...]}.
*/}}
{{- define "pullsecret-injector.coveredSourcesByNamespace" -}}
{{- $by := fromJson (include "pullsecret-injector.sourceSecretsByNamespace" .) -}}
{{- range $i, $src := .Values.rbac.extraSourceSecrets -}}
{{- include "pullsecret-injector.checkNamespace" (list (printf "rbac.extraSourceSecrets[%d].namespace" $i) $src.namespace) -}}
{{- include "pullsecret-injector.checkSecretName" (list (printf "rbac.extraSourceSecrets[%d].name" $i) $src.name) -}}
{{- $ns := toString $src.namespace -}}
{{- $_ := set $by $ns (append (get $by $ns | default list) (toString $src.name)) -}}
{{- end -}}
{{- $out := dict -}}
{{- range $ns, $names := $by -}}
{{- $_ := set $out $ns ($names | uniq | sortAlpha) -}}
{{- end -}}
{{- $out | toJson -}}
{{- end -}}
