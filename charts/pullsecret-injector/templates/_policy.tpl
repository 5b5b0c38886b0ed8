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

{{/* Source namespaces become the metadata.namespace of a Role: DNS labels. */}}
{{- define "pullsecret-injector.checkNamespace" -}}
{{- $where := index . 0 -}}
{{- $name := index . 1 -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" (toString $name)) -}}
{{- fail (printf "%s: %q is not a valid namespace name (lowercase DNS label; no wildcards, a Role is rendered in it)" $where (toString $name)) -}}
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
{{- include "pullsecret-injector.checkNamespace" (list (printf "%s.source.secret.namespace" $where) .namespace) -}}
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
{{- include "pullsecret-injector.checkNamespace" (list (printf "%s.source.credentials.passwordFrom.namespace" $where) $pf.namespace) -}}
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
The Secrets the webhook only reads, by namespace: {"<namespace>": ["<name>", ...]}
from source.secret {namespace, name} and source.credentials.passwordFrom
{namespace, name} of every rule. Names sorted and unique; JSON object.
role-sources.yaml renders one Role per key, so a source name is readable in
the namespace the policy names for it and nowhere else.
*/}}
{{- define "pullsecret-injector.sourceSecretsByNamespace" -}}
{{- $by := dict -}}
{{- range .Values.policy.rules -}}
{{- $src := .source | default dict -}}
{{- $refs := list -}}
{{- with $src.secret -}}
{{- $refs = append $refs . -}}
{{- end -}}
{{- with $src.credentials -}}
{{- with .passwordFrom -}}
{{- $refs = append $refs . -}}
{{- end -}}
{{- end -}}
{{- range $refs -}}
{{- if and .namespace .name -}}
{{- $ns := toString .namespace -}}
{{- $names := get $by $ns | default list -}}
{{- $_ := set $by $ns (append $names (toString .name)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $out := dict -}}
{{- range $ns, $names := $by -}}
{{- $_ := set $out $ns ($names | uniq | sortAlpha) -}}
{{- end -}}
{{- $out | toJson -}}
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
