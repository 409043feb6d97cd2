{{- define "bertserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bertserve.fullname" -}}
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

{{- define "bertserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bertserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "bertserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "bertserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "bertserve.image" -}}
{{- $tag := .Values.image.tag | default (ternary (printf "%s-cuda" .Chart.AppVersion) .Chart.AppVersion (eq .Values.image.variant "cuda")) }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{- define "bertserve.modelsClaim" -}}
{{- .Values.models.pvc.existingClaim | default (printf "%s-models" (include "bertserve.fullname" .)) }}
{{- end }}

{{/* A setting as an env value: whole numbers without Helm's float formatting (1048576, not 1.048576e+06). */}}
{{- define "bertserve.envValue" -}}
{{- if kindIs "bool" . }}{{ ternary "true" "false" . }}
{{- else if and (kindIs "float64" .) (eq . (float64 (int64 .))) }}{{ int64 . }}
{{- else }}{{ . }}
{{- end }}
{{- end }}
