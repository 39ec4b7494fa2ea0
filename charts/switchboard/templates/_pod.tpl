{{/*
switchboard.podTemplate: the pod template of one role; every workload of the chart uses it, so
all roles share the probes, security context, configuration and shutdown handling.
Call with (dict "root" $ "role" "<role>").
*/}}
{{- define "switchboard.podTemplate" -}}
{{- $root := .root -}}
{{- $role := .role -}}
{{- $v := index $root.Values $role -}}
{{- $pod := $root.Values.pod -}}
metadata:
  labels:
    {{- include "switchboard.roleLabels" (dict "root" $root "role" $role) | nindent 4 }}
    {{- with $pod.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # A change of settings or credentials rolls every pod; a new sequencer replica count
    # therefore reaches every role at once (the shard map is a function of it).
    checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    checksum/credentials: {{ toJson (list $root.Values.auth $root.Values.scylla $root.Values.nats $root.Values.redis $root.Values.push $root.Values.minio) | sha256sum }}
    {{- with $pod.annotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "switchboard.serviceAccountName" $root }}
  # The processes never call the Kubernetes API.
  automountServiceAccountToken: false
  # Settings come from the ConfigMap only, not from one variable per Service in the namespace.
  enableServiceLinks: false
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $pod.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml $pod.securityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ add (int $v.terminationGracePeriodSeconds) (int $v.preStopSleepSeconds) }}
  {{- with (default $pod.nodeSelector $v.nodeSelector) }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with (default $pod.tolerations $v.tolerations) }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- $affinity := default $pod.affinity $v.affinity }}
  {{- if $affinity }}
  affinity:
    {{- toYaml $affinity | nindent 4 }}
  {{- else if ne $pod.antiAffinity "none" }}
  affinity:
    podAntiAffinity:
      {{- if eq $pod.antiAffinity "hard" }}
      requiredDuringSchedulingIgnoredDuringExecution:
        - topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "switchboard.roleSelectorLabels" (dict "root" $root "role" $role) | nindent 14 }}
      {{- else }}
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            topologyKey: kubernetes.io/hostname
            labelSelector:
              matchLabels:
                {{- include "switchboard.roleSelectorLabels" (dict "root" $root "role" $role) | nindent 16 }}
      {{- end }}
  {{- end }}
  {{- $spread := default $pod.topologySpreadConstraints $v.topologySpreadConstraints }}
  {{- if $spread }}
  topologySpreadConstraints:
    {{- toYaml $spread | nindent 4 }}
  {{- else if $pod.topologySpread }}
  # Each role of this release is spread on its own: its selector names the release and the role,
  # so neither other roles nor other releases count towards its skew.
  topologySpreadConstraints:
    {{- range $pod.topologySpread }}
    - {{- toYaml . | nindent 6 }}
      labelSelector:
        matchLabels:
          {{- include "switchboard.roleSelectorLabels" (dict "root" $root "role" $role) | nindent 10 }}
      {{- if ne $role "sequencer" }}
      # A rollout's new pods are spread among themselves (Deployments label them with it).
      matchLabelKeys:
        - pod-template-hash
      {{- end }}
    {{- end }}
  {{- end }}
  containers:
    - name: switchboard
      image: {{ include "switchboard.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args: ["start", "--role", {{ $role | quote }}]
      ports:
        - name: grpc
          containerPort: {{ $root.Values.ports.grpc }}
          protocol: TCP
        - name: admin
          containerPort: {{ $root.Values.ports.admin }}
          protocol: TCP
        {{- if and (eq $role "gateway") $root.Values.ports.stream }}
        - name: stream
          containerPort: {{ $root.Values.ports.stream }}
          protocol: TCP
        {{- end }}
      envFrom:
        - configMapRef:
            name: {{ include "switchboard.fullname" $root }}
      env:
        {{- include "switchboard.secretEnv" $root | nindent 8 }}
        {{- if eq $role "notification" }}
        {{- include "switchboard.pushEnv" $root | nindent 8 }}
        {{- end }}
        {{- if eq $role "media" }}
        {{- include "switchboard.mediaEnv" $root | nindent 8 }}
        {{- end }}
        {{- if and (eq $role "gateway") $root.Values.ports.stream }}
        - name: SWITCHBOARD_STREAM_PORT
          value: {{ $root.Values.ports.stream | quote }}
        {{- with $root.Values.gateway.streamUrl }}
        - name: SWITCHBOARD_STREAM_URL
          value: {{ . | quote }}
        {{- end }}
        {{- end }}
        {{- if and (eq $role "gateway") (include "switchboard.turnUrls" $root) }}
        {{- include "switchboard.turnEnv" $root | nindent 8 }}
        {{- end }}
        {{- with $pod.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- with $v.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      startupProbe:
        httpGet:
          path: /healthz
          port: admin
        periodSeconds: {{ $root.Values.probes.startup.periodSeconds }}
        failureThreshold: {{ $root.Values.probes.startup.failureThreshold }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: admin
        periodSeconds: {{ $root.Values.probes.liveness.periodSeconds }}
        timeoutSeconds: {{ $root.Values.probes.liveness.timeoutSeconds }}
        failureThreshold: {{ $root.Values.probes.liveness.failureThreshold }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: admin
        periodSeconds: {{ $root.Values.probes.readiness.periodSeconds }}
        timeoutSeconds: {{ $root.Values.probes.readiness.timeoutSeconds }}
        failureThreshold: {{ $root.Values.probes.readiness.failureThreshold }}
      {{- if gt (int $v.preStopSleepSeconds) 0 }}
      lifecycle:
        preStop:
          # Keep serving while the endpoints controller and load balancers take the pod out of
          # rotation; SIGTERM (drain streams, finish commits) follows.
          exec:
            command: ["sleep", {{ $v.preStopSleepSeconds | toString | quote }}]
      {{- end }}
      resources:
        {{- toYaml $v.resources | nindent 8 }}
      securityContext:
        {{- toYaml $pod.containerSecurityContext | nindent 8 }}
      volumeMounts:
        - name: data
          mountPath: /data
        - name: tmp
          mountPath: /tmp
        {{- if eq $role "notification" }}
        {{- with include "switchboard.pushMounts" $root }}
        {{- trim . | nindent 8 }}
        {{- end }}
        {{- end }}
  volumes:
    # With ScyllaDB nothing is stored here; the process only needs the directory to exist.
    - name: data
      emptyDir:
        sizeLimit: 64Mi
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- if eq $role "notification" }}
    {{- with include "switchboard.pushVolumes" $root }}
    {{- trim . | nindent 4 }}
    {{- end }}
    {{- end }}
{{- end -}}

{{/*
switchboard.pushEnv: the push provider settings, only in the notification pods (the VAPID and
APNs variables must be set together or not at all in every process that reads them).
*/}}
{{- define "switchboard.pushEnv" -}}
{{- $p := .Values.push -}}
- name: SWITCHBOARD_PUSH_PER_DEVICE_PER_MINUTE
  value: {{ $p.perDevicePerMinute | toString | quote }}
- name: SWITCHBOARD_PUSH_PER_DEVICE_BURST
  value: {{ $p.perDeviceBurst | toString | quote }}
- name: SWITCHBOARD_PUSH_ALLOW_HTTP
  value: {{ $p.allowHttp | toString | quote }}
{{- if $p.webPush.enabled }}
- name: SWITCHBOARD_WEBPUSH_VAPID_PUBLIC_KEY
  value: {{ $p.webPush.publicKey | quote }}
- name: SWITCHBOARD_WEBPUSH_SUBJECT
  value: {{ $p.webPush.subject | quote }}
- name: SWITCHBOARD_WEBPUSH_VAPID_PRIVATE_KEY
  valueFrom:
    secretKeyRef:
      {{- if $p.webPush.existingSecret }}
      name: {{ $p.webPush.existingSecret }}
      key: {{ $p.webPush.existingSecretKey }}
      {{- else }}
      name: {{ include "switchboard.secretName" . }}
      key: vapid-private-key
      {{- end }}
{{- end }}
{{- if $p.fcm.enabled }}
- name: SWITCHBOARD_FCM_SERVICE_ACCOUNT_FILE
  value: /etc/switchboard/fcm/{{ $p.fcm.existingSecretKey }}
{{- with $p.fcm.endpoint }}
- name: SWITCHBOARD_FCM_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with $p.fcm.tokenUri }}
- name: SWITCHBOARD_FCM_TOKEN_URI
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- if $p.apns.enabled }}
- name: SWITCHBOARD_APNS_TEAM_ID
  value: {{ $p.apns.teamId | quote }}
- name: SWITCHBOARD_APNS_KEY_ID
  value: {{ $p.apns.keyId | quote }}
- name: SWITCHBOARD_APNS_KEY_FILE
  value: /etc/switchboard/apns/{{ $p.apns.existingSecretKey }}
{{- with $p.apns.productionEndpoint }}
- name: SWITCHBOARD_APNS_PRODUCTION_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with $p.apns.sandboxEndpoint }}
- name: SWITCHBOARD_APNS_SANDBOX_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
switchboard.mediaEnv: the media settings, only in the media pods. Every process validates the
media settings at start-up, and a MinIO store without its keys stops it, so the MinIO endpoint and
keys are not in the shared ConfigMap: the other roles keep the (unused) local defaults.
*/}}
{{- define "switchboard.mediaEnv" -}}
{{- $m := .Values.minio -}}
- name: SWITCHBOARD_MEDIA_STORE
  value: minio
- name: SWITCHBOARD_MINIO_ENDPOINT
  value: {{ $m.endpoint | quote }}
{{- with $m.publicEndpoint }}
- name: SWITCHBOARD_MINIO_PUBLIC_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: SWITCHBOARD_MINIO_BUCKET
  value: {{ $m.bucket | quote }}
- name: SWITCHBOARD_MINIO_REGION
  value: {{ $m.region | quote }}
- name: SWITCHBOARD_MINIO_CREATE_BUCKET
  value: {{ $m.createBucket | toString | quote }}
- name: SWITCHBOARD_MINIO_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      {{- if $m.existingSecret }}
      name: {{ $m.existingSecret }}
      key: {{ $m.accessKeyKey }}
      {{- else }}
      name: {{ include "switchboard.secretName" . }}
      key: minio-access-key
      {{- end }}
- name: SWITCHBOARD_MINIO_SECRET_KEY
  valueFrom:
    secretKeyRef:
      {{- if $m.existingSecret }}
      name: {{ $m.existingSecret }}
      key: {{ $m.secretKeyKey }}
      {{- else }}
      name: {{ include "switchboard.secretName" . }}
      key: minio-secret-key
      {{- end }}
{{- $limitNames := dict
    "maxBytes" "SWITCHBOARD_MEDIA_MAX_BYTES"
    "urlTtlSeconds" "SWITCHBOARD_MEDIA_URL_TTL_SECONDS"
    "unclaimedTtlSeconds" "SWITCHBOARD_MEDIA_UNCLAIMED_TTL_SECONDS"
    "sweepIntervalSeconds" "SWITCHBOARD_MEDIA_SWEEP_INTERVAL_SECONDS" }}
{{- range $key, $name := $limitNames }}
{{- $value := index $.Values.media $key }}
{{- if not (kindIs "invalid" $value) }}
- name: {{ $name }}
  value: {{ $value | int64 | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
switchboard.pushMounts / switchboard.pushVolumes: the FCM service-account file and the APNs key,
mounted read-only from their Secrets into the notification pods.
*/}}
{{- define "switchboard.pushMounts" -}}
{{- if .Values.push.fcm.enabled }}
- name: fcm
  mountPath: /etc/switchboard/fcm
  readOnly: true
{{- end }}
{{- if .Values.push.apns.enabled }}
- name: apns
  mountPath: /etc/switchboard/apns
  readOnly: true
{{- end }}
{{- end -}}

{{- define "switchboard.pushVolumes" -}}
{{- if .Values.push.fcm.enabled }}
- name: fcm
  secret:
    secretName: {{ .Values.push.fcm.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.push.fcm.existingSecretKey }}
        path: {{ .Values.push.fcm.existingSecretKey }}
{{- end }}
{{- if .Values.push.apns.enabled }}
- name: apns
  secret:
    secretName: {{ .Values.push.apns.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.push.apns.existingSecretKey }}
        path: {{ .Values.push.apns.existingSecretKey }}
{{- end }}
{{- end -}}

{{/*
switchboard.deployment: the Deployment of a stateless role. Call with (dict "root" $ "role" ...).
*/}}
{{- define "switchboard.deployment" -}}
{{- $root := .root -}}
{{- $v := index $root.Values .role -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "switchboard.fullname" $root }}-{{ .role }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "switchboard.roleLabels" . | nindent 4 }}
spec:
  {{- if not (and $v.autoscaling $v.autoscaling.enabled) }}
  replicas: {{ $v.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "switchboard.roleSelectorLabels" . | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 25%
      maxUnavailable: 0
  template:
    {{- include "switchboard.podTemplate" . | nindent 4 }}
{{- end -}}

{{/*
switchboard.internalService: the ClusterIP Service of a role's h2c port, which other roles call
(SWITCHBOARD_<ROLE>_URL). Call with (dict "root" $ "role" ...).
*/}}
{{- define "switchboard.internalService" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "switchboard.fullname" .root }}-{{ .role }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "switchboard.roleLabels" . | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "switchboard.roleSelectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ .root.Values.ports.grpc }}
      targetPort: grpc
      protocol: TCP
      appProtocol: kubernetes.io/h2c
{{- end -}}

{{/*
switchboard.pdb: a role's PodDisruptionBudget, when enabled. Call with (dict "root" $ "role" ...).
*/}}
{{- define "switchboard.pdb" -}}
{{- $pdb := (index .root.Values .role).pdb -}}
{{- if $pdb.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "switchboard.fullname" .root }}-{{ .role }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "switchboard.roleLabels" . | nindent 4 }}
spec:
  {{- if not (kindIs "invalid" $pdb.minAvailable) }}
  minAvailable: {{ $pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ $pdb.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "switchboard.roleSelectorLabels" . | nindent 6 }}
{{- end }}
{{- end -}}

{{/*
switchboard.hpa: a role's HorizontalPodAutoscaler, when enabled. Call with (dict "root" $ "role" ...).
*/}}
{{- define "switchboard.hpa" -}}
{{- $a := (index .root.Values .role).autoscaling -}}
{{- if $a.enabled }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "switchboard.fullname" .root }}-{{ .role }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "switchboard.roleLabels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "switchboard.fullname" .root }}-{{ .role }}
  minReplicas: {{ $a.minReplicas }}
  maxReplicas: {{ $a.maxReplicas }}
  metrics:
    {{- with $a.targetCPUUtilizationPercentage }}
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ . }}
    {{- end }}
    {{- with $a.targetMemoryUtilizationPercentage }}
    - type: Resource
      resource:
        name: memory
        target:
          type: Utilization
          averageUtilization: {{ . }}
    {{- end }}
  {{- with $a.behavior }}
  behavior:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}

{{/*
switchboard.turnEnv: the TURN relays for calls (docs/calls.md), in the gateway pods only: they
answer CallService.GetTurnCredentials. The URLs and the shared secret's Secret are the
release's coturn's when it runs one (_turn.tpl).
*/}}
{{- define "switchboard.turnEnv" -}}
- name: SWITCHBOARD_TURN_URLS
  value: {{ include "switchboard.turnUrls" . | quote }}
- name: SWITCHBOARD_TURN_TTL_SECONDS
  value: {{ .Values.turn.ttlSeconds | quote }}
- name: SWITCHBOARD_TURN_SECRET
  valueFrom:
    secretKeyRef:
      {{- include "switchboard.turnSecretRef" . | nindent 6 }}
{{- end -}}
