{{/*
Names, labels and image references shared by every template.

Chart resources carry the standard labels, including app.kubernetes.io/instance.
Objects the operator creates (children of Workers, Pipelines, RouterPolicies and
Schedules) never carry app.kubernetes.io/instance: Argo CD tracks an application's
resources by that label and would prune children it did not render. The selectors
below therefore always include instance and component, so they never match children.
*/}}

{{- define "loom.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "loom.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "loom.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Standard labels; call with (dict "ctx" $ "component" "operator"). */}}
{{- define "loom.labels" -}}
helm.sh/chart: {{ include "loom.chart" .ctx }}
{{ include "loom.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: loom
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "loom.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loom.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "loom.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "loom.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository@digest when a digest is set, repository:tag otherwise; call with (dict "image" .Values.image "default" "0.1.0"). */}}
{{- define "loom.imageRef" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- if eq (toString .image.tag) "latest" -}}
{{- fail (printf "%s.tag=latest: a moving tag makes every rollout and rollback unpredictable; pin a version (unset, it defaults to %s) or set %s.digest" .path .default .path) -}}
{{- end -}}
{{- printf "%s:%s" .image.repository (default .default .image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{- define "loom.image" -}}
{{- include "loom.imageRef" (dict "image" .Values.image "default" .Chart.AppVersion "path" "image") -}}
{{- end -}}

{{/* The image the operator gives to the pods it renders. */}}
{{- define "loom.workloadImage" -}}
{{- if .Values.workloads.image -}}
{{- .Values.workloads.image -}}
{{- else -}}
{{- include "loom.image" . -}}
{{- end -}}
{{- end -}}

{{- define "loom.natsFullname" -}}
{{- printf "%s-nats" (include "loom.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Client URL of NATS: the bundled server (fully qualified, children run in other namespaces) or nats.url. */}}
{{- define "loom.natsUrl" -}}
{{- if .Values.nats.bundled.enabled -}}
{{- printf "nats://%s.%s.svc:4222" (include "loom.natsFullname" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.nats.url -}}
{{- end -}}
{{- end -}}

{{- define "loom.natsMonitorUrl" -}}
{{- if .Values.nats.bundled.enabled -}}
{{- printf "http://%s.%s.svc:8222" (include "loom.natsFullname" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.nats.monitorUrl -}}
{{- end -}}
{{- end -}}

{{/* The Kopf peering object name used for hot standby. */}}
{{- define "loom.peeringName" -}}
{{- default (include "loom.fullname" .) .Values.operator.standby.peeringName -}}
{{- end -}}

{{/* The Secret the operator writes the NATS server's users to (generated mode); the bundled NATS includes it. */}}
{{- define "loom.natsAuthSecret" -}}
{{- printf "%s-nats-auth" (include "loom.fullname" .) -}}
{{- end -}}

{{/* The Secret (key `key`) generated NATS passwords derive from. */}}
{{- define "loom.natsAuthKeySecret" -}}
{{- default (printf "%s-nats-auth-key" (include "loom.fullname" .)) .Values.nats.auth.keySecret -}}
{{- end -}}

{{/* Refuse combinations of NATS settings that cannot work, saying what to do. */}}
{{- define "loom.natsAuthCheck" -}}
{{- if and .Values.nats.credentialsSecret (ne .Values.nats.auth.mode "none") -}}
{{- fail (printf "nats.credentialsSecret gives every pod one shared identity, but nats.auth.mode is %s (an identity per resource): set nats.auth.mode=none to share it, or unset nats.credentialsSecret" .Values.nats.auth.mode) -}}
{{- end -}}
{{- if and .Values.nats.auth.tenants (ne .Values.nats.auth.mode "generated") -}}
{{- fail "nats.auth.tenants get generated credentials: they need nats.auth.mode=generated (with your own NATS accounts, make tenant users with nsc)" -}}
{{- end -}}
{{- end -}}
