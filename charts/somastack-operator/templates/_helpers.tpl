{{/*
Chart name, truncated to the 63 characters a label value may hold.
*/}}
{{- define "somastack-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the release name, prefixed to the chart name unless
it already contains it. Truncated to 63 characters (DNS label). Every object of
the release is named after it, and the operator is told these names (--lease-name,
--webhook-service, --webhook-secret, --webhook-configuration).
*/}}
{{- define "somastack-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "somastack-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object of the release.
*/}}
{{- define "somastack-operator.labels" -}}
helm.sh/chart: {{ include "somastack-operator.chart" . }}
{{ include "somastack-operator.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: somastack
{{- end }}

{{/*
Selector labels: stable across upgrades (a Deployment's selector is immutable).
*/}}
{{- define "somastack-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "somastack-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the ServiceAccount the operator runs as.
*/}}
{{- define "somastack-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "somastack-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Container image: repository@digest when a digest is set, else repository:tag
(tag defaults to the chart's appVersion).
*/}}
{{- define "somastack-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Names shared by the templates and the operator's flags.
*/}}
{{- define "somastack-operator.leaseName" -}}
{{- default (include "somastack-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "somastack-operator.webhookServiceName" -}}
{{- printf "%s-webhook" (include "somastack-operator.fullname" .) }}
{{- end }}

{{- define "somastack-operator.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "somastack-operator.fullname" .) }}
{{- end }}

{{- define "somastack-operator.webhookCertificateName" -}}
{{- printf "%s-webhook" (include "somastack-operator.fullname" .) }}
{{- end }}

{{/*
How the webhook's serving certificate is managed: by the operator itself
(self-managed: it creates the Secret and patches caBundle into the webhook
configurations) or by cert-manager (external).
*/}}
{{- define "somastack-operator.webhookCertMode" -}}
{{- if .Values.webhook.certManager.enabled }}external{{ else }}self-managed{{ end }}
{{- end }}

{{/*
clientConfig of a webhook; call with (dict "root" $ "path" "/validate/...").
A non-empty webhook.url points the API server at an operator running outside
the cluster (development). caBundle is never rendered: the operator (or
cert-manager's CA injector) fills it in.
*/}}
{{- define "somastack-operator.webhookClientConfig" -}}
{{- $root := .root }}
{{- if $root.Values.webhook.url }}
url: {{ printf "%s%s" (trimSuffix "/" $root.Values.webhook.url) .path | quote }}
{{- else }}
service:
  name: {{ include "somastack-operator.webhookServiceName" $root }}
  namespace: {{ $root.Release.Namespace }}
  path: {{ .path | quote }}
  port: 443
{{- end }}
{{- end }}

{{/*
Series selector of the alerting rules: the release namespace, which Prometheus
(through the ServiceMonitor) attaches to every scraped series.
*/}}
{{- define "somastack-operator.alertSelector" -}}
namespace="{{ .Release.Namespace }}"
{{- end }}

{{/*
The namespaces a namespaced webhook judges: all but kube-system, the
release's own and webhook.excludedNamespaces.
*/}}
{{- define "somastack-operator.webhookNamespaceSelector" -}}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values:
      - kube-system
      {{- if ne .Release.Namespace "kube-system" }}
      - {{ .Release.Namespace }}
      {{- end }}
      {{- range .Values.webhook.excludedNamespaces }}
      {{- if and (ne . "kube-system") (ne . $.Release.Namespace) }}
      - {{ . }}
      {{- end }}
      {{- end }}
{{- end }}

{{/*
The API server's addresses and ports for the NetworkPolicy, as YAML
{cidrs: [...], ports: [...]}: networkPolicy.apiServer's values, else those of
the default/kubernetes EndpointSlice (looked up at install and upgrade; the
API server keeps it), else no address restriction (cidrs empty: any) and
ports 443 and 6443.
*/}}
{{- define "somastack-operator.apiServer" -}}
{{- $cidrs := .Values.networkPolicy.apiServer.cidrs }}
{{- $ports := .Values.networkPolicy.apiServer.ports }}
{{- $slice := lookup "discovery.k8s.io/v1" "EndpointSlice" "default" "kubernetes" }}
{{- if and (not $cidrs) $slice }}
{{- $found := list }}
{{- range $slice.endpoints }}
{{- range .addresses }}
{{- $found = append $found (printf "%s/%s" . (ternary "128" "32" (contains ":" .))) }}
{{- end }}
{{- end }}
{{- $cidrs = $found }}
{{- end }}
{{- if and (not $ports) $slice }}
{{- $found := list }}
{{- range $slice.ports }}
{{- $found = append $found (int .port) }}
{{- end }}
{{- $ports = $found }}
{{- end }}
{{- if not $ports }}
{{- $ports = list 443 6443 }}
{{- end }}
cidrs: {{ if $cidrs }}{{ toJson $cidrs }}{{ else }}[]{{ end }}
ports: {{ toJson $ports }}
{{- end }}

{{/*
The container port the probes call: the plain-HTTP health port when /metrics
is served over HTTPS (metrics.secure), else the metrics port.
*/}}
{{- define "somastack-operator.probePort" -}}
{{- if .Values.metrics.secure }}health{{ else }}metrics{{ end }}
{{- end }}
