{{/*
Naming, labels and the pod-spec pieces every workload shares.

Helpers that concern one component take a dict:
  root       the top-level context ($)
  component  the values key: frontend, backend, postgres (or migrations)
  values     .Values.<component>
*/}}

{{- define "todo-chatbot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified release name, truncated to 63 characters (DNS-1123 label).
*/}}
{{- define "todo-chatbot.fullname" -}}
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
Name of a component's objects: <fullname>-<component>. The fullname part is cut
to 40 characters so that StatefulSet pod names and controller-revision-hash
labels (name + 11 characters) stay within 63.
*/}}
{{- define "todo-chatbot.componentName" -}}
{{- printf "%s-%s" (include "todo-chatbot.fullname" .root | trunc 40 | trimSuffix "-") .component }}
{{- end }}

{{- define "todo-chatbot.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable for the life of a release (Deployment and StatefulSet
selectors are immutable). app.kubernetes.io/component is what converge uses to
map an object to its component.
*/}}
{{- define "todo-chatbot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "todo-chatbot.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Standard labels for every object the chart renders.
*/}}
{{- define "todo-chatbot.labels" -}}
helm.sh/chart: {{ include "todo-chatbot.chart" .root }}
{{ include "todo-chatbot.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | replace "+" "_" | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: {{ include "todo-chatbot.name" .root }}
{{- end }}

{{/*
Pod template labels: the standard labels plus the component's podLabels (which
may not override the standard ones).
*/}}
{{- define "todo-chatbot.podLabels" -}}
{{- $std := include "todo-chatbot.labels" . | fromYaml }}
{{- $labels := dict }}
{{- range $k, $v := (.values.podLabels | default dict) }}
{{- $_ := set $labels $k ($v | toString) }}
{{- end }}
{{- range $k, $v := $std }}
{{- $_ := set $labels $k ($v | toString) }}
{{- end }}
{{- toYaml $labels }}
{{- end }}

{{/*
Image reference: repository@digest when a digest is set, else repository:tag
(tag defaults to the chart's appVersion).
*/}}
{{- define "todo-chatbot.image" -}}
{{- $img := .values.image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default .root.Chart.AppVersion $img.tag | toString) }}
{{- end }}
{{- end }}

{{/*
Checksum of the component's ConfigMap: a change of config rolls the pods.
*/}}
{{- define "todo-chatbot.configChecksum" -}}
{{- include "todo-chatbot.configData" .root | sha256sum }}
{{- end }}

{{/*
The ConfigMap data: computed defaults, overridden by .Values.config.
*/}}
{{- define "todo-chatbot.configData" -}}
{{- $data := dict }}
{{- $_ := set $data "BACKEND_URL" (printf "http://%s:%v" (include "todo-chatbot.componentName" (dict "root" . "component" "backend")) .Values.backend.service.port) }}
{{- $_ := set $data "DB_HOST" (include "todo-chatbot.componentName" (dict "root" . "component" "postgres")) }}
{{- $_ := set $data "DB_PORT" (.Values.postgres.service.port | toString) }}
{{- range $k, $v := (.Values.config | default dict) }}
{{- $_ := set $data $k ($v | toString) }}
{{- end }}
{{- toYaml $data }}
{{- end }}

{{/*
Pod-level securityContext: non-root, RuntimeDefault seccomp.
*/}}
{{- define "todo-chatbot.podSecurityContext" -}}
{{- $sc := .values.securityContext | default dict -}}
runAsNonRoot: true
runAsUser: {{ $sc.runAsUser | default 10001 }}
runAsGroup: {{ $sc.runAsGroup | default ($sc.runAsUser | default 10001) }}
fsGroup: {{ $sc.fsGroup | default ($sc.runAsGroup | default ($sc.runAsUser | default 10001)) }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Container-level securityContext: no privilege escalation, no capabilities,
read-only root filesystem unless the component turns it off.
*/}}
{{- define "todo-chatbot.containerSecurityContext" -}}
{{- $sc := .values.securityContext | default dict -}}
runAsNonRoot: true
runAsUser: {{ $sc.runAsUser | default 10001 }}
runAsGroup: {{ $sc.runAsGroup | default ($sc.runAsUser | default 10001) }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: {{ dig "readOnlyRootFilesystem" true $sc }}
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Container env: plain env (computed defaults in .base, overridden by
.values.env) then Secret references from .values.secretEnv. A name in both
comes from the Secret. Duplicate secretEnv names fail the render, since the
apiserver would reject the list under server-side apply.
*/}}
{{- define "todo-chatbot.env" -}}
{{- $secretNames := dict }}
{{- range .values.secretEnv }}
{{- if hasKey $secretNames .name }}
{{- fail (printf "%s.secretEnv: %s is listed twice" $.component .name) }}
{{- end }}
{{- $_ := set $secretNames .name true }}
{{- end }}
{{- $env := dict }}
{{- range $k, $v := (.base | default dict) }}
{{- $_ := set $env $k $v }}
{{- end }}
{{- range $k, $v := (.values.env | default dict) }}
{{- $_ := set $env $k $v }}
{{- end }}
{{- range $k := keys $env | sortAlpha }}
{{- if not (hasKey $secretNames $k) }}
- name: {{ $k }}
  value: {{ get $env $k | toString | quote }}
{{- end }}
{{- end }}
{{- range .values.secretEnv }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .key }}
      optional: {{ .optional | default false }}
{{- end }}
{{- end }}

{{/*
Container ports; the first one is the component's main port.
*/}}
{{- define "todo-chatbot.ports" -}}
{{- range .values.ports }}
- name: {{ .name }}
  containerPort: {{ .containerPort }}
  protocol: {{ .protocol | default "TCP" }}
{{- end }}
{{- end }}

{{/*
One HTTP probe: .defaults overridden key by key by .override (so 0 is a valid
override). Port defaults to the first port's name.
*/}}
{{- define "todo-chatbot.httpProbe" -}}
{{- $o := .override | default dict -}}
{{- $d := .defaults -}}
httpGet:
  path: {{ dig "path" $d.path $o }}
  port: {{ dig "port" $d.port $o }}
  scheme: HTTP
initialDelaySeconds: {{ dig "initialDelaySeconds" $d.initialDelaySeconds $o }}
periodSeconds: {{ dig "periodSeconds" $d.periodSeconds $o }}
timeoutSeconds: {{ dig "timeoutSeconds" $d.timeoutSeconds $o }}
failureThreshold: {{ dig "failureThreshold" $d.failureThreshold $o }}
successThreshold: 1
{{- end }}

{{/*
One exec probe (postgres): timing from .defaults overridden by .override.
*/}}
{{- define "todo-chatbot.execProbe" -}}
{{- $o := .override | default dict -}}
{{- $d := .defaults -}}
exec:
  command:
    {{- toYaml .command | nindent 4 }}
initialDelaySeconds: {{ dig "initialDelaySeconds" $d.initialDelaySeconds $o }}
periodSeconds: {{ dig "periodSeconds" $d.periodSeconds $o }}
timeoutSeconds: {{ dig "timeoutSeconds" $d.timeoutSeconds $o }}
failureThreshold: {{ dig "failureThreshold" $d.failureThreshold $o }}
successThreshold: 1
{{- end }}

{{/*
The preStop hook that gives endpoint controllers time to remove the pod
before the process receives SIGTERM.
*/}}
{{- define "todo-chatbot.preStopSleep" -}}
{{- $s := dig "preStopSleepSeconds" 5 .values | int }}
{{- if gt $s 0 }}
lifecycle:
  preStop:
    exec:
      command: ["sh", "-c", "sleep {{ $s }}"]
{{- end }}
{{- end }}

{{/*
PodDisruptionBudget for a component with more than one replica.
*/}}
{{- define "todo-chatbot.pdb" -}}
{{- if and .values.enabled (gt (int .values.replicas) 1) }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "todo-chatbot.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "todo-chatbot.labels" . | nindent 4 }}
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      {{- include "todo-chatbot.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end }}

{{/*
ServiceAccount for a workload: no API token, no RBAC.
*/}}
{{- define "todo-chatbot.serviceAccount" -}}
{{- if .values.enabled }}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "todo-chatbot.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "todo-chatbot.labels" . | nindent 4 }}
automountServiceAccountToken: false
{{- end }}
{{- end }}
