{{/*
Certificate-mode helpers (certificates.mode):

  self          The webhook, at start-up, ensures a CA and serving certificate in
                Secret <tlsSecretName> (release namespace) and PATCHES the caBundle
                of the chart's MutatingWebhookConfiguration. The chart renders no
                Secret; the caBundle is filled at runtime (see selfCaBundle for how
                upgrades keep it).
  cert-manager  cert-manager issues the serving certificate into <tlsSecretName>;
                its cainjector fills the caBundle (cert-manager.io/inject-ca-from).
  manual        An existing TLS Secret and its CA (certificates.manual.*).

In files modes (cert-manager, manual) the Secret is mounted at /tls and the
server reloads it when the kubelet updates the files.
*/}}

{{- define "pullsecret-injector.certMode" -}}
{{- .Values.certificates.mode -}}
{{- end -}}

{{/* Fails on incomplete or contradictory certificate values. Renders nothing. */}}
{{- define "pullsecret-injector.validateCerts" -}}
{{- $mode := .Values.certificates.mode -}}
{{- if not (has $mode (list "self" "cert-manager" "manual")) -}}
{{- fail (printf "certificates.mode must be one of self, cert-manager, manual (got %q)" (toString $mode)) -}}
{{- end -}}
{{- if eq $mode "manual" -}}
{{- $m := .Values.certificates.manual -}}
{{- if not $m.secretName -}}
{{- fail "certificates.mode=manual requires certificates.manual.secretName (an existing kubernetes.io/tls Secret in the release namespace)" -}}
{{- end -}}
{{- if not $m.caBundle -}}
{{- fail "certificates.mode=manual requires certificates.manual.caBundle (base64-encoded PEM of the CA that signed the serving certificate)" -}}
{{- end -}}
{{- if not (contains "-----BEGIN CERTIFICATE-----" (b64dec $m.caBundle)) -}}
{{- fail "certificates.manual.caBundle must be the base64 encoding of a PEM certificate (base64 -w0 ca.crt)" -}}
{{- end -}}
{{- end -}}
{{- if eq $mode "cert-manager" -}}
{{- with .Values.certificates.certManager.issuerRef -}}
{{- if not .name -}}
{{- fail "certificates.certManager.issuerRef needs a name (or leave it empty to let the chart create a self-signed CA chain)" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of the Secret holding the serving certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "pullsecret-injector.tlsSecretName" -}}
{{- $mode := .Values.certificates.mode -}}
{{- if eq $mode "manual" -}}
{{- .Values.certificates.manual.secretName -}}
{{- else if eq $mode "self" -}}
{{- .Values.certificates.self.secretName | default (printf "%s-tls" (include "pullsecret-injector.fullname" .)) -}}
{{- else -}}
{{- printf "%s-tls" (include "pullsecret-injector.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Whether the server reads its certificate from files mounted at /tls. */}}
{{- define "pullsecret-injector.certFromFiles" -}}
{{- if ne .Values.certificates.mode "self" -}}true{{- end -}}
{{- end -}}

{{/* Command-line flags selecting the certificate mode. YAML list items. */}}
{{- define "pullsecret-injector.certArgs" -}}
{{- if include "pullsecret-injector.certFromFiles" . }}
- --cert-mode=files
- --tls-cert=/tls/tls.crt
- --tls-key=/tls/tls.key
{{- else }}
- --cert-mode=self
- --cert-secret={{ include "pullsecret-injector.tlsSecretName" . }}
- --service={{ include "pullsecret-injector.serviceName" . }}
- --webhook-config={{ include "pullsecret-injector.webhookConfigName" . }}
{{- end }}
{{- end -}}

{{/* cert-manager object names. */}}
{{- define "pullsecret-injector.servingCertificateName" -}}
{{- printf "%s-serving" (include "pullsecret-injector.fullname" .) -}}
{{- end -}}
{{- define "pullsecret-injector.selfSignedIssuerName" -}}
{{- printf "%s-selfsigned" (include "pullsecret-injector.fullname" .) -}}
{{- end -}}
{{- define "pullsecret-injector.caCertificateName" -}}
{{- printf "%s-ca" (include "pullsecret-injector.fullname" .) -}}
{{- end -}}
{{- define "pullsecret-injector.caIssuerName" -}}
{{- printf "%s-ca" (include "pullsecret-injector.fullname" .) -}}
{{- end -}}

{{/* DNS names the API server may use for the Service. JSON list. */}}
{{- define "pullsecret-injector.serviceDnsNames" -}}
{{- $svc := include "pullsecret-injector.serviceName" . -}}
{{- $ns := .Release.Namespace -}}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) | toJson -}}
{{- end -}}

{{/*
caBundle of the webhook configuration, base64 PEM, or "" to leave it out.

self mode: the webhook patches caBundle at runtime. A template that rendered no
caBundle would let some upgrade paths wipe it (e.g. --force replaces the
object, server-side apply with a different field manager, Argo CD sync), so the
chart looks up the live MutatingWebhookConfiguration and re-renders the
caBundle it finds. lookup returns nothing under `helm template`, --dry-run and
GitOps renderers: there the caBundle stays empty until the webhook patches it
again (it does so at every start-up).
*/}}
{{- define "pullsecret-injector.caBundle" -}}
{{- $mode := .Values.certificates.mode -}}
{{- if eq $mode "manual" -}}
{{- .Values.certificates.manual.caBundle -}}
{{- else if eq $mode "self" -}}
{{- $live := lookup "admissionregistration.k8s.io/v1" "MutatingWebhookConfiguration" "" (include "pullsecret-injector.webhookConfigName" .) -}}
{{- $found := "" -}}
{{- range (dig "webhooks" list ($live | default dict)) -}}
{{- if and (not $found) (eq (toString .name) (include "pullsecret-injector.webhookName" $)) -}}
{{- $found = dig "clientConfig" "caBundle" "" . -}}
{{- end -}}
{{- end -}}
{{- $found -}}
{{- end -}}
{{- end -}}

{{/* Annotations of the webhook configuration that depend on the certificate mode. */}}
{{- define "pullsecret-injector.certAnnotations" -}}
{{- if eq .Values.certificates.mode "cert-manager" -}}
cert-manager.io/inject-ca-from: {{ printf "%s/%s" .Release.Namespace (include "pullsecret-injector.servingCertificateName" .) }}
{{- end -}}
{{- end -}}
