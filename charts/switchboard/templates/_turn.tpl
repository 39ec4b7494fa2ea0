{{/*
The TURN settings shared by the gateways (which issue credentials) and the release's own coturn
(turn.coturn.enabled, coturn.yaml), which must check them with the same secret (docs/calls.md).
*/}}

{{/*
switchboard.turnUrls: the relay URLs the gateways hand out, comma-separated: turn.urls as given,
else those of the release's coturn at turn.coturn.host (UDP and TCP, and TLS when it has a
certificate), else empty (calls get no relay).
*/}}
{{- define "switchboard.turnUrls" -}}
{{- $t := .Values.turn -}}
{{- if $t.urls -}}
{{- join "," $t.urls -}}
{{- else if $t.coturn.enabled -}}
{{- $h := $t.coturn.host -}}
{{- $urls := list (printf "turn:%s:%v?transport=udp" $h $t.coturn.port) (printf "turn:%s:%v?transport=tcp" $h $t.coturn.port) -}}
{{- if $t.coturn.tls.existingSecret -}}
{{- $urls = append $urls (printf "turns:%s:%v?transport=tcp" $h $t.coturn.tls.port) -}}
{{- end -}}
{{- join "," $urls -}}
{{- end -}}
{{- end -}}

{{/*
switchboard.turnInSecret: "true" when the chart's own Secret holds the shared secret (key
turn-secret): relays are in use and turn.existingSecret is not set.
*/}}
{{- define "switchboard.turnInSecret" -}}
{{- $t := .Values.turn -}}
{{- if and (not $t.existingSecret) (or $t.coturn.enabled (and $t.urls $t.secret)) -}}
true
{{- end -}}
{{- end -}}

{{/*
switchboard.turnSecretValue: the shared secret for the chart's Secret: turn.secret, else the one
already installed (upgrades keep the relay and the gateways agreeing), else a new random one.
*/}}
{{- define "switchboard.turnSecretValue" -}}
{{- if .Values.turn.secret -}}
{{- .Values.turn.secret -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "switchboard.secretName" .) -}}
{{- if and $existing $existing.data (index $existing.data "turn-secret") -}}
{{- index $existing.data "turn-secret" | b64dec -}}
{{- else -}}
{{- randAlphaNum 48 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
switchboard.turnSecretRef: the secretKeyRef name and key of the shared secret, for the gateways
and the coturn pods alike.
*/}}
{{- define "switchboard.turnSecretRef" -}}
{{- if .Values.turn.existingSecret -}}
name: {{ .Values.turn.existingSecret }}
key: {{ .Values.turn.existingSecretKey }}
{{- else -}}
name: {{ include "switchboard.secretName" . }}
key: turn-secret
{{- end -}}
{{- end -}}
