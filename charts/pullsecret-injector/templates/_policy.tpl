{{/*
Policy helpers: the Secret names the RBAC rules are restricted to
(resourceNames) and the namespaces the source Roles are rendered in.

The policy's shape is checked by values.schema.json, which
hack/gen_values_schema.py generates from the pydantic model
(webhook/policy/model.py), so the chart and the webhook accept the same
policies. The checks left here are the few that must also hold with
--skip-schema-validation or that JSON schema cannot express:
- every name the RBAC rendering uses is a literal DNS name: a copy or
  source name becomes a resourceName (which cannot hold a glob), a source
  namespace becomes the metadata.namespace of a Role;
- rule names are unique, and one Secret name has one source: checks across
  rules that the model makes too (Policy._names_are_unique) and JSON schema
  cannot state. Without them `helm upgrade` would succeed and the webhook
  would refuse the new policy at load, keeping the old one.
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

{{/* Fails on a policy the RBAC rendering cannot use. Renders nothing. */}}
{{- define "pullsecret-injector.validatePolicy" -}}
{{- $seen := dict -}}
{{- $bySecret := dict -}}
{{- range $i, $rule := .Values.policy.rules -}}
{{- $rule = $rule | default dict -}}
{{- $name := toString ($rule.name | default "") -}}
{{- $where := printf "policy.rules[%d] (%s)" $i $name -}}
{{- if hasKey $seen $name -}}
{{- fail (printf "policy.rules: duplicate rule name %q: rule names must be unique" $name) -}}
{{- end -}}
{{- $_ := set $seen $name true -}}
{{- include "pullsecret-injector.checkSecretName" (list (printf "%s.secret" $where) $rule.secret) -}}
{{- $src := $rule.source | default dict -}}
{{- $key := toString $rule.secret -}}
{{- $srcJson := toJson $src -}}
{{- if and (hasKey $bySecret $key) (ne (get $bySecret $key) $srcJson) -}}
{{- fail (printf "%s writes Secret %q from a different source than an earlier rule: one Secret name, one source" $where $key) -}}
{{- end -}}
{{- $_ := set $bySecret $key $srcJson -}}
{{- with $src.secret -}}
{{- include "pullsecret-injector.checkNamespace" (list (printf "%s.source.secret.namespace" $where) .namespace) -}}
{{- include "pullsecret-injector.checkSecretName" (list (printf "%s.source.secret.name" $where) .name) -}}
{{- end -}}
{{- with $src.credentials -}}
{{- $pf := .passwordFrom | default dict -}}
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
{{- /* issue 13: a token source reads at most its gcp.credentialsFrom */ -}}
{{- with $src.token -}}
{{- with .gcp -}}
{{- with .credentialsFrom -}}
{{- $refs = append $refs . -}}
{{- end -}}
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
