{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "turnpike.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects. Cluster-scoped objects (ClusterRole,
ClusterRoleBinding) carry it too, so two releases never share one.
*/}}
{{- define "turnpike.fullname" -}}
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

{{- define "turnpike.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector of the operator's pods. component=operator keeps it apart from the
model servers' pods, whose name/instance labels are their ModelDeployment's name.
*/}}
{{- define "turnpike.selectorLabels" -}}
app.kubernetes.io/name: {{ include "turnpike.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "turnpike.labels" -}}
helm.sh/chart: {{ include "turnpike.chart" . }}
{{ include "turnpike.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: turnpike
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "turnpike.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "turnpike.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The leader Lease's name; the lease Role is limited to it. */}}
{{- define "turnpike.leaderElectionId" -}}
{{- default (include "turnpike.fullname" .) .Values.operator.leaderElection.id }}
{{- end }}

{{- define "turnpike.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The gateway (`turnpike gateway`, opt-in with gateway.enabled): its own full
name, labels and selector. component=gateway keeps its pods apart from the
operator's (component=operator) and the model servers' (inference-server):
the operator's --gateway-selector is exactly these selector labels.
*/}}
{{- define "turnpike.gateway.fullname" -}}
{{- printf "%s-gateway" (include "turnpike.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "turnpike.gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "turnpike.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "turnpike.gateway.labels" -}}
helm.sh/chart: {{ include "turnpike.chart" . }}
{{ include "turnpike.gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: turnpike
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The gateway pods' selector as a Kubernetes label selector string
(k=v,k=v, keys sorted), for the operator's --gateway-selector. Built from the
same helper as the gateway Deployment's matchLabels so the two cannot drift.
*/}}
{{- define "turnpike.gateway.selector" -}}
{{- $pairs := list }}
{{- range $key, $value := fromYaml (include "turnpike.gateway.selectorLabels" .) }}
{{- $pairs = append $pairs (printf "%s=%v" $key $value) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{- define "turnpike.gateway.serviceAccountName" -}}
{{- include "turnpike.gateway.fullname" . }}
{{- end }}

{{/*
The gateway's image: the operator's (same repository, tag or digest) unless
gateway.image says otherwise. A gateway repository of its own takes its own
tag (default: appVersion) or digest, never the operator's.
*/}}
{{- define "turnpike.gateway.image" -}}
{{- $g := .Values.gateway.image }}
{{- if $g.repository }}
{{- if $g.digest }}
{{- printf "%s@%s" $g.repository $g.digest }}
{{- else }}
{{- printf "%s:%s" $g.repository (default .Chart.AppVersion $g.tag) }}
{{- end }}
{{- else if $g.digest }}
{{- printf "%s@%s" .Values.image.repository $g.digest }}
{{- else if $g.tag }}
{{- printf "%s:%s" .Values.image.repository $g.tag }}
{{- else }}
{{- include "turnpike.image" . }}
{{- end }}
{{- end }}

{{/* The gateway's configuration file (gateway.config), as the ConfigMap holds it. */}}
{{- define "turnpike.gateway.configFile" -}}
{{- toYaml .Values.gateway.config }}
{{- end }}

{{/*
The gateway's RBAC rules, least privilege: exactly the "Gateway RBAC" table of
docs/install.md (tests/integration/test_chart_gateway.py compares them).
*/}}
{{- define "turnpike.gateway.rules" -}}
# Which models exist: the discovery lists ModelDeployments once per namespace
# scope, then watches them; it never reads one by name.
- apiGroups: ["turnpike.dev"]
  resources: ["modeldeployments"]
  verbs: ["list", "watch"]
# Model pods (labelled app.kubernetes.io/managed-by=turnpike, a server-side
# selector RBAC cannot narrow to) listed and watched: each ready one's IP and
# ports. Never one by name, never written.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
{{- end }}
