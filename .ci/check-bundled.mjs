// The release's own NATS and Redis (nats.bundled, redis.bundled): rendered exactly when enabled
// and no external server is named, reached through their Service by the URL every role reads,
// and fenced by a NetworkPolicy when policies are on. Called by check-manifests.mjs.

const PORTS = { nats: 4222, redis: 6379 };
const VARIABLE = { nats: "SWITCHBOARD_NATS_URL", redis: "SWITCHBOARD_REDIS_URL" };

export function checkBundled({ docs, values, config, fullname, namespace, problem }) {
  const ofKind = (kind) => docs.filter((d) => d.kind === kind);
  for (const backend of ["nats", "redis"]) {
    const v = values[backend];
    const named = Boolean(v.existingSecret) || (backend === "nats" ? v.urls.length > 0 : Boolean(v.url));
    const wanted = v.bundled.enabled && !named;
    const workloads = ofKind("Deployment").filter(
      (d) => d.spec.template.metadata.labels?.["app.kubernetes.io/component"] === backend,
    );
    if (!wanted) {
      if (workloads.length > 0)
        problem(
          `${backend}: an external server is named (or bundled is off), yet a bundled ${backend} rendered`,
        );
      if (!named) problem(`${backend}: no server at all: bundled is off and none is named`);
      continue;
    }
    if (workloads.length !== 1) {
      problem(`${backend}: expected one bundled Deployment, found ${workloads.length}`);
      continue;
    }
    const [w] = workloads;
    if (w.spec.replicas !== 1 || w.spec.strategy?.type !== "Recreate") {
      problem(`Deployment/${w.metadata.name}: a single server replaced with Recreate (one pod on its data)`);
    }
    const container = w.spec.template.spec.containers[0];
    if (!container.readinessProbe) problem(`Deployment/${w.metadata.name}: no readiness probe`);
    const service = ofKind("Service").find((s) => s.metadata.name === `${fullname}-${backend}`);
    const expected = `${backend}://${fullname}-${backend}.${namespace}.svc${values.clusterDomain ? `.${values.clusterDomain}` : ""}:${PORTS[backend]}`;
    if (config[VARIABLE[backend]] !== expected) {
      problem(
        `ConfigMap: ${VARIABLE[backend]} is ${JSON.stringify(config[VARIABLE[backend]])}, the bundled server is ${expected}`,
      );
    }
    if (!service) problem(`${backend}: the bundled server has no Service ${fullname}-${backend}`);
    else {
      const selects = Object.entries(service.spec.selector ?? {}).every(
        ([k, val]) => w.spec.template.metadata.labels?.[k] === val,
      );
      const port = service.spec.ports.find((p) => p.port === PORTS[backend]);
      const named = container.ports.find((p) => p.name === port?.targetPort);
      if (!selects || !named)
        problem(
          `Service/${service.metadata.name}: does not reach the bundled ${backend} on ${PORTS[backend]}`,
        );
    }
    if (values.networkPolicy.enabled) {
      const policy = ofKind("NetworkPolicy").find(
        (p) =>
          Object.entries(p.spec.podSelector?.matchLabels ?? {}).every(
            ([k, val]) => w.spec.template.metadata.labels?.[k] === val,
          ) && p.spec.podSelector?.matchLabels?.["app.kubernetes.io/component"] === backend,
      );
      const from = policy?.spec.ingress?.flatMap((r) => r.from ?? []) ?? [];
      if (
        !policy ||
        from.length === 0 ||
        from.some((f) => !f.podSelector?.matchLabels?.["app.kubernetes.io/instance"])
      ) {
        problem(`networkPolicy.enabled, but the bundled ${backend} is not limited to this release's pods`);
      }
    }
  }
}
