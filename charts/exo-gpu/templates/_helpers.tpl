{{/* Names, labels and shared snippets of the exo-gpu chart. */}}

{{/* The chart name, or nameOverride. */}}
{{- define "exo-gpu.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every object name: fullnameOverride, the release name when it contains the
chart name, else "<release>-<chart>". Kept short enough for the "-controller" suffixes. */}}
{{- define "exo-gpu.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Per-component names (also their ServiceAccount names). */}}
{{- define "exo-gpu.exporter.fullname" -}}
{{- printf "%s-exporter" (include "exo-gpu.fullname" .) }}
{{- end }}
{{- define "exo-gpu.controller.fullname" -}}
{{- printf "%s-controller" (include "exo-gpu.fullname" .) }}
{{- end }}
{{- define "exo-gpu.extender.fullname" -}}
{{- printf "%s-extender" (include "exo-gpu.fullname" .) }}
{{- end }}
{{- define "exo-gpu.scheduler.fullname" -}}
{{- printf "%s-scheduler" (include "exo-gpu.fullname" .) }}
{{- end }}

{{/* The exporter's ServiceAccount as the API server names its user. */}}
{{- define "exo-gpu.exporter.username" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "exo-gpu.exporter.fullname" .) }}
{{- end }}

{{- define "exo-gpu.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; call with (dict "ctx" $ "component" "exporter"). */}}
{{- define "exo-gpu.labels" -}}
helm.sh/chart: {{ include "exo-gpu.chart" .ctx }}
{{ include "exo-gpu.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: exo-gpu
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels; call with (dict "ctx" $ "component" "exporter"). */}}
{{- define "exo-gpu.selectorLabels" -}}
app.kubernetes.io/name: {{ include "exo-gpu.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{/* The exo-gpu image reference. */}}
{{- define "exo-gpu.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Scheme, host and port kube-scheduler uses to reach the extender. */}}
{{- define "exo-gpu.extender.url" -}}
{{- $scheme := ternary "https" "http" .Values.controller.extender.tls.enabled }}
{{- printf "%s://%s:%d" $scheme (include "exo-gpu.extender.host" .) (int .Values.controller.extender.port) }}
{{- end }}

{{/* The extender Service's DNS name: the name its serving certificate is valid for. */}}
{{- define "exo-gpu.extender.host" -}}
{{- printf "%s.%s.svc" (include "exo-gpu.extender.fullname" .) .Release.Namespace }}
{{- end }}

{{/* Where the extender's certificates come from: certManager, helm or secrets ("auto"
resolved: cert-manager when the cluster serves cert-manager.io/v1). */}}
{{- define "exo-gpu.tls.source" -}}
{{- $source := .Values.controller.extender.tls.source }}
{{- if eq $source "auto" }}
{{- ternary "certManager" "helm" (.Capabilities.APIVersions.Has "cert-manager.io/v1") }}
{{- else }}
{{- $source }}
{{- end }}
{{- end }}

{{/* The Secret with the extender's serving certificate, key and the client CA. */}}
{{- define "exo-gpu.extender.tlsSecret" -}}
{{- default (printf "%s-extender-tls" (include "exo-gpu.fullname" .)) .Values.controller.extender.tls.secretName }}
{{- end }}

{{/* The Secret with the second scheduler's client certificate, key and the extender's CA. */}}
{{- define "exo-gpu.scheduler.tlsSecret" -}}
{{- default (printf "%s-scheduler-tls" (include "exo-gpu.fullname" .)) .Values.controller.extender.tls.clientSecretName }}
{{- end }}

{{/* Subject common name of the second scheduler's client certificate: the only client the
extender admits. */}}
{{- define "exo-gpu.scheduler.clientName" -}}
exo-gpu-scheduler
{{- end }}

{{/* Writable scratch space for containers with a read-only root filesystem. */}}
{{- define "exo-gpu.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{/* Fails the render on value combinations the schema cannot express. */}}
{{- define "exo-gpu.validate" -}}
{{- if and (eq .Values.exporter.backend "simulated") .Values.exporter.enabled (not .Values.exporter.fleet) }}
{{- fail "exporter.fleet: required when exporter.backend is \"simulated\" (the devices to simulate)" }}
{{- end }}
{{- if and (gt (int .Values.controller.replicas) 1) (not .Values.controller.leaderElection) }}
{{- fail "controller.leaderElection: must be true when controller.replicas > 1 (only one replica may act)" }}
{{- end }}
{{- $tls := .Values.controller.extender.tls }}
{{- if and $tls.enabled (eq $tls.source "secrets") (not $tls.secretName) }}
{{- fail "controller.extender.tls.secretName: required with source secrets (the extender's Secret: tls.crt, tls.key and ca.crt)" }}
{{- end }}
{{- if and $tls.enabled (eq $tls.source "secrets") .Values.scheduler.enabled (not $tls.clientSecretName) }}
{{- fail "controller.extender.tls.clientSecretName: required with source secrets and scheduler.enabled (the scheduler's Secret: tls.crt, tls.key and ca.crt)" }}
{{- end }}
{{- if and (or $tls.secretName $tls.clientSecretName) (ne $tls.source "secrets") }}
{{- fail "controller.extender.tls.secretName, clientSecretName: only with source secrets (the chart makes its own Secrets otherwise)" }}
{{- end }}
{{- if and $tls.issuerRef.name (not (has $tls.source (list "auto" "certManager"))) }}
{{- fail "controller.extender.tls.issuerRef.name: only with source certManager or auto" }}
{{- end }}
{{- if and .Values.networkPolicy.enabled (not .Values.scheduler.enabled) (not .Values.networkPolicy.extenderPeers) }}
{{- fail "networkPolicy.extenderPeers: required when scheduler.enabled is false and networkPolicy.enabled (who may reach the extender: your kube-scheduler's pods, or ipBlocks of its nodes)" }}
{{- end }}
{{- end }}
