{{- define "converge.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "converge.labels" -}}
app.kubernetes.io/name: converge
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "converge.selector" -}}
app.kubernetes.io/name: converge
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "converge.image" -}}
{{- if .Values.image.tag -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- else -}}
{{ .Values.image.repository }}
{{- end -}}
{{- end -}}

{{/* The installation converge records on the Leases: replicas of it stand by for each other. */}}
{{- define "converge.instance" -}}
{{ .Release.Namespace }}/{{ .Release.Name }}
{{- end -}}
