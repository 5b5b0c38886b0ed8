{{/*
Policy helpers: validation of .Values.policy and the Secret names the RBAC
rules are restricted to (resourceNames). values.schema.json checks shapes; the
checks here are the ones JSON schema cannot express (uniqueness, exclusivity
with a clear message) and they also hold with --skip-schema-validation.
*/}}

{{/* Secret names are literal DNS subdomains: RBAC resourceNames cannot hold globs. */}}
{{- define "pullsecret-injector.checkSecretName" -}}
{{- $where := index . 0 -}}
{{- $name := index . 1 -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$" (toString $name)) -}}
{{- fail (printf "%s: %q is not a valid Secret name (lowercase DNS subdomain; no wildcards, RBAC resourceNames need literal names)" $where (toString $name)) -}}
{{- end -}}
{{- end -}}

{{/* Fails on a contradictory or incomplete policy. Renders nothing. */}}
{{- define "pullsecret-injector.validatePolicy" -}}
{{- $seen := dict -}}
{{- $bySecret := dict -}}
{{- range $i, $rule := .Values.policy.rules -}}
{{- if not (kindIs "map" $rule) -}}
{{- fail (printf "policy.rules[%d] must be a mapping" $i) -}}
{{- end -}}
{{- $name := toString ($rule.name | default "") -}}
{{- if not $name -}}
{{- fail (printf "policy.rules[%d]: name is required" $i) -}}
{{- end -}}
{{- $where := printf "policy.rules[%d] (%s)" $i $name -}}
{{- if hasKey $seen $name -}}
{{- fail (printf "policy.rules: duplicate rule name %q: rule names must be unique" $name) -}}
{{- end -}}
{{- $_ := set $seen $name true -}}
{{- if not $rule.registries -}}
{{- fail (printf "%s: registries must list at least one registry" $where) -}}
{{- end -}}
{{- if not $rule.secret -}}
{{- fail (printf "%s: secret (name of the Secret created in the Pod's namespace) is required" $where) -}}
{{- end -}}
{{- include "pullsecret-injector.checkSecretName" (list (printf "%s.secret" $where) $rule.secret) -}}
{{- $src := $rule.source | default dict -}}
{{- if and $src.secret $src.credentials -}}
{{- fail (printf "%s: source.secret and source.credentials are mutually exclusive: set exactly one" $where) -}}
{{- end -}}
{{- if and (hasKey $rule "source") (not (kindIs "invalid" $rule.source)) (not (or $src.secret $src.credentials)) -}}
{{- fail (printf "%s: source needs either source.secret or source.credentials (omit source to only reference the Secret)" $where) -}}
{{- end -}}
{{- $key := toString $rule.secret -}}
{{- $srcJson := toJson $src -}}
{{- if and (hasKey $bySecret $key) (ne (get $bySecret $key) $srcJson) -}}
{{- fail (printf "%s writes Secret %q from a different source than an earlier rule: one Secret name, one source" $where (toString $rule.secret)) -}}
{{- end -}}
{{- $_ := set $bySecret $key $srcJson -}}
{{- with $src.secret -}}
{{- if not (and .namespace .name) -}}
{{- fail (printf "%s: source.secret needs namespace and name" $where) -}}
{{- end -}}
{{- include "pullsecret-injector.checkSecretName" (list (printf "%s.source.secret.name" $where) .name) -}}
{{- end -}}
{{- with $src.credentials -}}
{{- if not (and .registry .username) -}}
{{- fail (printf "%s: source.credentials needs registry and username" $where) -}}
{{- end -}}
{{- $pf := .passwordFrom | default dict -}}
{{- if not (and $pf.namespace $pf.name $pf.key) -}}
{{- fail (printf "%s: source.credentials.passwordFrom needs namespace, name and key" $where) -}}
{{- end -}}
{{- include "pullsecret-injector.checkSecretName" (list (printf "%s.source.credentials.passwordFrom.name" $where) $pf.name) -}}
{{- end -}}
{{- end -}}
{{- range $i, $name := .Values.rbac.extraSecretNames -}}
{{- include "pullsecret-injector.checkSecretName" (list (printf "rbac.extraSecretNames[%d]" $i) $name) -}}
{{- end -}}
{{- end -}}

{{/*
Names of the Secrets the webhook creates and manages in Pod namespaces
(every rule's `secret`, plus rbac.extraSecretNames). JSON list, sorted, unique.
*/}}
{{- define "pullsecret-injector.targetSecretNames" -}}
{{- $names := list -}}
{{- range .Values.policy.rules -}}
{{- if .secret -}}
{{- $names = append $names (toString .secret) -}}
{{- end -}}
{{- end -}}
{{- range .Values.rbac.extraSecretNames -}}
{{- $names = append $names (toString .) -}}
{{- end -}}
{{- $names | uniq | sortAlpha | toJson -}}
{{- end -}}

{{/*
Names of the Secrets the webhook only reads: source.secret.name and
source.credentials.passwordFrom.name of every rule. JSON list, sorted, unique.
*/}}
{{- define "pullsecret-injector.sourceSecretNames" -}}
{{- $names := list -}}
{{- range .Values.policy.rules -}}
{{- $src := .source | default dict -}}
{{- with $src.secret -}}
{{- if .name -}}
{{- $names = append $names (toString .name) -}}
{{- end -}}
{{- end -}}
{{- with $src.credentials -}}
{{- $pf := .passwordFrom | default dict -}}
{{- if $pf.name -}}
{{- $names = append $names (toString $pf.name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $names | uniq | sortAlpha | toJson -}}
{{- end -}}

{{/*
Literal namespace names of policy.excludeNamespaces (entries without glob
characters); the webhook's namespaceSelector can skip those outright.
JSON list.
*/}}
{{- define "pullsecret-injector.literalPolicyExcludes" -}}
{{- $names := list -}}
{{- range .Values.policy.excludeNamespaces -}}
{{- if not (regexMatch "[*?\\[]" (toString .)) -}}
{{- $names = append $names (toString .) -}}
{{- end -}}
{{- end -}}
{{- $names | toJson -}}
{{- end -}}
