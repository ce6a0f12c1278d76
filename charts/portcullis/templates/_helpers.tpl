{{/* Chart name (app.kubernetes.io/name). */}}
{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object name. */}}
{{- define "portcullis.fullname" -}}
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

{{- define "portcullis.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. Call with (dict "ctx" $ "component" "proxy"). */}}
{{- define "portcullis.labels" -}}
helm.sh/chart: {{ include "portcullis.chart" .ctx }}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: portcullis
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels: stable across upgrades. */}}
{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "portcullis.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "portcullis.operator.fullname" -}}
{{- printf "%s-operator" (include "portcullis.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "portcullis.proxy.fullname" -}}
{{- printf "%s-proxy" (include "portcullis.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "portcullis.webhook.serviceName" -}}
{{- printf "%s-webhook" (include "portcullis.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "portcullis.redis.fullname" -}}
{{- printf "%s-redis" (include "portcullis.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "portcullis.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "portcullis.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}
{{- define "portcullis.proxy.serviceAccountName" -}}
{{- if .Values.proxy.serviceAccount.create -}}
{{- default (include "portcullis.proxy.fullname" .) .Values.proxy.serviceAccount.name -}}
{{- else -}}
{{- required "proxy.serviceAccount.name is required when proxy.serviceAccount.create is false" .Values.proxy.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Names fixed by the binaries (operator/src/webhook.rs, operator/src/leader.rs): the webhook
configuration, its certificate Secret and the leader Lease. So one release per cluster.
*/}}
{{- define "portcullis.webhook.configName" -}}portcullis-validation{{- end -}}
{{- define "portcullis.webhook.certSecret" -}}portcullis-webhook-cert{{- end -}}
{{- define "portcullis.operator.leaseName" -}}portcullis-operator{{- end -}}

{{/* Redis URL for RateLimitPolicy spec.backend.redis.url, or "" when none is configured. */}}
{{- define "portcullis.redis.url" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s.%s.svc:%v" (include "portcullis.redis.fullname" .) .Release.Namespace .Values.redis.port -}}
{{- else -}}
{{- .Values.redis.externalUrl -}}
{{- end -}}
{{- end -}}

{{/* Cross-value checks a JSON schema cannot express simply. */}}
{{- define "portcullis.validate" -}}
{{- if and (not .Values.operator.leaderElection) (gt (int .Values.operator.replicas) 1) -}}
{{- fail "operator.leaderElection: false needs operator.replicas: 1 (two leaders would both publish)" -}}
{{- end -}}
{{- if le (int .Values.proxy.terminationGracePeriodSeconds) (add (int .Values.proxy.preStopSleepSeconds) (int .Values.proxy.drainTimeoutSeconds)) -}}
{{- fail "proxy.terminationGracePeriodSeconds must exceed proxy.preStopSleepSeconds + proxy.drainTimeoutSeconds, or the kubelet kills the proxy mid-drain" -}}
{{- end -}}
{{- if and .Values.redis.enabled .Values.redis.externalUrl -}}
{{- fail "set redis.enabled or redis.externalUrl, not both" -}}
{{- end -}}
{{- if and .Values.proxy.autoscaling.enabled (gt (int .Values.proxy.autoscaling.minReplicas) (int .Values.proxy.autoscaling.maxReplicas)) -}}
{{- fail "proxy.autoscaling.minReplicas must not exceed maxReplicas" -}}
{{- end -}}
{{- end -}}
