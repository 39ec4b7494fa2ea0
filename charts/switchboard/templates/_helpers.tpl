{{/*
switchboard.name: the chart name, or nameOverride.
*/}}
{{- define "switchboard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
switchboard.fullname: the prefix of every resource name. The release name when it already
contains the chart name, else "<release>-<chart>"; fullnameOverride wins. Kept short enough that
"<fullname>-notification-<hash>-<hash>" and "<fullname>-sequencer-<n>" stay valid names.
*/}}
{{- define "switchboard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
switchboard.labels: the standard labels of every resource.
*/}}
{{- define "switchboard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "switchboard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: switchboard
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
switchboard.selectorLabels: the labels that select every pod of this release (and only them);
NetworkPolicies use them to recognise "this release's own pods".
*/}}
{{- define "switchboard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchboard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
switchboard.roleSelectorLabels: the selector of one role's pods. Call with
(dict "root" $ "role" "gateway").
*/}}
{{- define "switchboard.roleSelectorLabels" -}}
{{ include "switchboard.selectorLabels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{/*
switchboard.roleLabels: all labels of one role's resources. Call with (dict "root" $ "role" ...).
*/}}
{{- define "switchboard.roleLabels" -}}
{{ include "switchboard.labels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{/*
switchboard.image: repository:tag, or repository@digest when a digest is given.
*/}}
{{- define "switchboard.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
switchboard.serviceAccountName: the ServiceAccount of the Switchboard pods.
*/}}
{{- define "switchboard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "switchboard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
switchboard.svcHost: the DNS name of a Service of this release, "<name>.<ns>.svc" (with the
cluster domain when clusterDomain is set). Call with (dict "root" $ "name" "<service name>").
*/}}
{{- define "switchboard.svcHost" -}}
{{- $host := printf "%s.%s.svc" .name .root.Release.Namespace -}}
{{- if .root.Values.clusterDomain -}}
{{- $host = printf "%s.%s" $host .root.Values.clusterDomain -}}
{{- end -}}
{{- $host -}}
{{- end -}}

{{/*
switchboard.roleUrl: the h2c URL of a role's internal Service. Call with (dict "root" $ "role" ...).
*/}}
{{- define "switchboard.roleUrl" -}}
{{- $name := printf "%s-%s" (include "switchboard.fullname" .root) .role -}}
{{- printf "http://%s:%v" (include "switchboard.svcHost" (dict "root" .root "name" $name)) .root.Values.ports.grpc -}}
{{- end -}}

{{/*
switchboard.sequencerUrlTemplate: SWITCHBOARD_SEQUENCER_URL_TEMPLATE, one stable DNS name per
StatefulSet pod through the headless Service; the binary expands {ordinal} 0..replicas-1.
*/}}
{{- define "switchboard.sequencerUrlTemplate" -}}
{{- $svc := printf "%s-sequencer" (include "switchboard.fullname" .) -}}
{{- printf "http://%s-{ordinal}.%s:%v" $svc (include "switchboard.svcHost" (dict "root" . "name" $svc)) .Values.ports.grpc -}}
{{- end -}}

{{/*
switchboard.secretName: the chart's own Secret (token key and inline credentials).
*/}}
{{- define "switchboard.secretName" -}}
{{- printf "%s-secrets" (include "switchboard.fullname" .) -}}
{{- end -}}

{{/*
switchboard.ownSecretNeeded: "true" when some credential is given inline or must be generated,
so the chart renders its own Secret.
*/}}
{{- define "switchboard.ownSecretNeeded" -}}
{{- if or (not .Values.auth.existingSecret) (and .Values.scylla.username (not .Values.scylla.existingSecret)) (and .Values.push.webPush.enabled .Values.push.webPush.privateKey (not .Values.push.webPush.existingSecret)) (include "switchboard.minioInlineKeys" .) (include "switchboard.turnInSecret" .) -}}
true
{{- end -}}
{{- end -}}

{{/*
switchboard.minioInlineKeys: "true" when the media role runs and its MinIO keys are given inline
(rendered into the chart's Secret) rather than through minio.existingSecret.
*/}}
{{- define "switchboard.minioInlineKeys" -}}
{{- if and .Values.media.enabled (not .Values.minio.existingSecret) .Values.minio.accessKey -}}
true
{{- end -}}
{{- end -}}

{{/*
switchboard.tokenKey: the token key for the chart's Secret: the value given, else the one already
installed (so upgrades keep every token valid), else a new random 48-byte base64url key.
*/}}
{{- define "switchboard.tokenKey" -}}
{{- if .Values.auth.tokenKey -}}
{{- .Values.auth.tokenKey -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "switchboard.secretName" .) -}}
{{- if and $existing $existing.data (index $existing.data "token-key") -}}
{{- index $existing.data "token-key" | b64dec -}}
{{- else -}}
{{- randBytes 48 | replace "+" "-" | replace "/" "_" | trimSuffix "=" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
switchboard.scyllaCredentialsSecret: the Secret holding the ScyllaDB credentials for the running
pods ("" when there are none), and switchboard.scyllaKeys: its username and password keys.
*/}}
{{- define "switchboard.scyllaCredentialsSecret" -}}
{{- if .Values.scylla.existingSecret -}}
{{- .Values.scylla.existingSecret -}}
{{- else if .Values.scylla.username -}}
{{- include "switchboard.secretName" . -}}
{{- end -}}
{{- end -}}

{{/*
switchboard.secretEnv: the credential environment of every Switchboard container, each read from
a Secret: the token key, the ScyllaDB credentials and, when kept in Secrets, the NATS and Redis
URLs. Call with the root context and (optionally) the credentials Secret of the migration Job.
*/}}
{{- define "switchboard.secretEnv" -}}
- name: SWITCHBOARD_TOKEN_KEY
  valueFrom:
    secretKeyRef:
      name: {{ default (include "switchboard.secretName" .) .Values.auth.existingSecret }}
      key: {{ ternary .Values.auth.existingSecretKey "token-key" (not (empty .Values.auth.existingSecret)) }}
{{- with include "switchboard.scyllaEnv" (dict "root" . "secret" (include "switchboard.scyllaCredentialsSecret" .)) }}
{{ trim . }}
{{- end }}
{{- if .Values.nats.existingSecret }}
- name: SWITCHBOARD_NATS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.nats.existingSecret }}
      key: {{ .Values.nats.existingSecretKey }}
{{- end }}
{{- if .Values.redis.existingSecret }}
- name: SWITCHBOARD_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.existingSecretKey }}
{{- end }}
{{- end -}}

{{/*
switchboard.scyllaEnv: SCYLLA_USERNAME and SCYLLA_PASSWORD from the given Secret (nothing when
the secret name is empty). Call with (dict "root" $ "secret" "<name>").
*/}}
{{- define "switchboard.scyllaEnv" -}}
{{- if .secret }}
{{- $own := not .root.Values.scylla.existingSecret }}
- name: SCYLLA_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ ternary "scylla-username" .root.Values.scylla.usernameKey $own }}
- name: SCYLLA_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ ternary "scylla-password" .root.Values.scylla.passwordKey $own }}
{{- end }}
{{- end -}}

{{/*
switchboard.validate: cross-field checks the JSON schema cannot express; fails the render with
the reason.
*/}}
{{- define "switchboard.validate" -}}
{{- $shards := int .Values.settings.shards -}}
{{- $replicas := int .Values.sequencer.replicaCount -}}
{{- if gt $replicas $shards -}}
{{- fail (printf "sequencer.replicaCount (%d) must be <= settings.shards (%d): every replica owns at least one shard" $replicas $shards) -}}
{{- end -}}
{{- if and (include "switchboard.bundled" (dict "root" . "backend" "nats")) (gt (int .Values.nats.streamReplicas) 1) -}}
{{- fail (printf "nats.streamReplicas is %d, but the bundled NATS is a single server: set nats.urls to a NATS cluster, or streamReplicas to 1" (int .Values.nats.streamReplicas)) -}}
{{- end -}}
{{- if and .Values.scylla.username (not .Values.scylla.password) (not .Values.scylla.existingSecret) -}}
{{- fail "scylla.username needs scylla.password (or use scylla.existingSecret)" -}}
{{- end -}}
{{- if and .Values.push.webPush.enabled (not .Values.push.webPush.privateKey) (not .Values.push.webPush.existingSecret) -}}
{{- fail "push.webPush.enabled needs push.webPush.privateKey or push.webPush.existingSecret" -}}
{{- end -}}
{{- if eq .Values.ports.grpc .Values.ports.admin -}}
{{- fail "ports.grpc and ports.admin must differ" -}}
{{- end -}}
{{- if and .Values.gateway.streamUrl (not .Values.ports.stream) -}}
{{- fail "gateway.streamUrl names the stream port: set ports.stream too" -}}
{{- end -}}
{{- if .Values.media.enabled -}}
{{- if not .Values.minio.endpoint -}}
{{- fail "media.enabled needs minio.endpoint (or set media.enabled=false)" -}}
{{- end -}}
{{- if and (not .Values.minio.existingSecret) (or (not .Values.minio.accessKey) (not .Values.minio.secretKey)) -}}
{{- fail "media.enabled needs minio.existingSecret, or both minio.accessKey and minio.secretKey" -}}
{{- end -}}
{{- /* The binary's defaults: URLs live 900 s, unclaimed uploads 86400 s. */ -}}
{{- $urlTtl := ternary 900 (int64 .Values.media.urlTtlSeconds) (kindIs "invalid" .Values.media.urlTtlSeconds) -}}
{{- $unclaimed := ternary 86400 (int64 .Values.media.unclaimedTtlSeconds) (kindIs "invalid" .Values.media.unclaimedTtlSeconds) -}}
{{- if le (int64 $unclaimed) (int64 $urlTtl) -}}
{{- fail (printf "media.unclaimedTtlSeconds (%d) must exceed media.urlTtlSeconds (%d): an upload must be claimable after its URL expires" (int64 $unclaimed) (int64 $urlTtl)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
switchboard.adminPeers: the sources allowed on the admin port: this release's pods, and
Prometheus when networkPolicy.monitoringNamespace is set.
*/}}
{{- define "switchboard.adminPeers" -}}
- podSelector:
    matchLabels:
      {{- include "switchboard.selectorLabels" . | nindent 6 }}
{{- with .Values.networkPolicy.monitoringNamespace }}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ . }}
  {{- with $.Values.networkPolicy.monitoringPodLabels }}
  podSelector:
    matchLabels:
      {{- toYaml . | nindent 6 }}
  {{- end }}
{{- end -}}
{{- end }}

{{/*
switchboard.bundled: "true" when the release runs its own single-node server for a backend
("nats" or "redis"): bundled.enabled and no external server named. Call with
(dict "root" $ "backend" "nats").
*/}}
{{- define "switchboard.bundled" -}}
{{- $v := index .root.Values .backend -}}
{{- $named := or $v.existingSecret (ternary (not (empty $v.urls)) (not (empty $v.url)) (eq .backend "nats")) -}}
{{- if and $v.bundled.enabled (not $named) -}}true{{- end -}}
{{- end -}}

{{/*
switchboard.bundledUrl: the URL of the release's own NATS or Redis. Call as switchboard.bundled.
*/}}
{{- define "switchboard.bundledUrl" -}}
{{- $name := printf "%s-%s" (include "switchboard.fullname" .root) .backend -}}
{{- $host := include "switchboard.svcHost" (dict "root" .root "name" $name) -}}
{{- ternary (printf "nats://%s:4222" $host) (printf "redis://%s:6379" $host) (eq .backend "nats") -}}
{{- end -}}
