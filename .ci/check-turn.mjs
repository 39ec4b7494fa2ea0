// The release's own TURN relay (turn.coturn): rendered exactly when enabled, checking credentials
// with the very secret the gateways issue them with, listening where the URLs the gateways hand
// out point, refusing to relay into private networks, and reachable as its exposure says.
// Called by check-manifests.mjs.

const PRIVATE_RANGES = [
  "10.0.0.0-10.255.255.255",
  "172.16.0.0-172.31.255.255",
  "192.168.0.0-192.168.255.255",
];

export function checkTurn({ docs, values, problem }) {
  const c = values.turn.coturn;
  const ofKind = (kind) => docs.filter((d) => d.kind === kind);
  const component = (d) =>
    d.spec?.template?.metadata?.labels?.["app.kubernetes.io/component"] ??
    d.metadata?.labels?.["app.kubernetes.io/component"];
  const relays = [...ofKind("Deployment"), ...ofKind("StatefulSet")].filter((d) => component(d) === "turn");
  const gateway = ofKind("Deployment").find((d) => component(d) === "gateway");
  const gatewayEnv = Object.fromEntries(
    (gateway?.spec.template.spec.containers[0].env ?? []).map((e) => [e.name, e]),
  );
  if (!c.enabled) {
    const leftovers = docs.filter((d) => component(d) === "turn");
    if (leftovers.length > 0)
      problem(`turn.coturn.enabled is false, yet ${leftovers.map((d) => d.kind).join(", ")} rendered`);
    return;
  }
  if (relays.length !== 1) {
    problem(`turn.coturn.enabled: expected one coturn Deployment, found ${relays.length}`);
    return;
  }
  const [w] = relays;
  const what = `${w.kind}/${w.metadata.name}`;
  const pod = w.spec.template.spec;
  const container = pod.containers[0];
  const args = container.args ?? [];
  const arg = (flag) => args.find((a) => a.startsWith(`--${flag}=`))?.slice(flag.length + 3);
  const env = Object.fromEntries((container.env ?? []).map((e) => [e.name, e]));

  // The shared secret: one Secret key for the relay and the gateways, never a plain value.
  if (!args.includes("--use-auth-secret"))
    problem(`${what}: coturn must check credentials with --use-auth-secret`);
  const secretArg = arg("static-auth-secret");
  const variable = /^\$\((\w+)\)$/.exec(secretArg ?? "")?.[1];
  const relayRef = variable === undefined ? undefined : env[variable]?.valueFrom?.secretKeyRef;
  const gatewayRef = gatewayEnv.SWITCHBOARD_TURN_SECRET?.valueFrom?.secretKeyRef;
  if (!relayRef) problem(`${what}: --static-auth-secret must be $(VAR) of an env var from a Secret`);
  else if (!gatewayRef)
    problem("turn.coturn.enabled, but the gateways get no SWITCHBOARD_TURN_SECRET from a Secret");
  else if (relayRef.name !== gatewayRef.name || relayRef.key !== gatewayRef.key) {
    problem(
      `${what}: its secret (${relayRef.name}/${relayRef.key}) is not the gateways' (${gatewayRef.name}/${gatewayRef.key})`,
    );
  }
  if (relayRef && !values.turn.existingSecret) {
    const own = ofKind("Secret").find((s) => s.metadata.name === relayRef.name);
    if (!own?.data?.[relayRef.key]) problem(`${what}: Secret/${relayRef.name} has no key "${relayRef.key}"`);
  }

  // The URLs the gateways hand out reach this relay, unless turn.urls names others on purpose.
  const port = Number(arg("listening-port"));
  if (values.turn.urls.length === 0) {
    const urls = (gatewayEnv.SWITCHBOARD_TURN_URLS?.value ?? "").split(",");
    const expected = `turn:${c.host}:${port}?transport=udp`;
    if (!urls.includes(expected))
      problem(`the gateways hand out ${JSON.stringify(urls)}, not the relay's ${expected}`);
  }
  const ports = container.ports ?? [];
  for (const protocol of ["UDP", "TCP"]) {
    if (!ports.some((p) => p.containerPort === port && p.protocol === protocol))
      problem(`${what}: no ${protocol} containerPort ${port} (--listening-port)`);
  }

  // Not an open door into the cluster's networks.
  const denied = args.filter((a) => a.startsWith("--denied-peer-ip=")).map((a) => a.slice(17));
  for (const range of PRIVATE_RANGES) {
    if (!denied.includes(range) && values.turn.coturn.deniedPeerIps.length > 0)
      problem(`${what}: does not deny relaying to ${range}`);
  }
  if (!args.includes("--no-cli")) problem(`${what}: coturn's telnet CLI must be off (--no-cli)`);
  if (!container.readinessProbe) problem(`${what}: no readiness probe`);

  const minPort = Number(arg("min-port"));
  const maxPort = Number(arg("max-port"));
  if (!(minPort <= maxPort)) problem(`${what}: relay range ${minPort}-${maxPort}`);
  if (c.expose === "hostNetwork") {
    if (pod.hostNetwork !== true)
      problem(`${what}: expose hostNetwork, but the pod is not on the host network`);
    const anti = pod.affinity?.podAntiAffinity?.requiredDuringSchedulingIgnoredDuringExecution ?? [];
    if (w.spec.replicas > 1 && !anti.some((t) => t.topologyKey === "kubernetes.io/hostname"))
      problem(`${what}: several relays on the host network need one node each (required anti-affinity)`);
    if (w.spec.strategy?.rollingUpdate?.maxSurge !== 0 && w.spec.strategy?.type !== "Recreate")
      problem(`${what}: a surge pod would find its node's ports taken (maxSurge 0 or Recreate)`);
  } else {
    if (pod.hostNetwork === true) problem(`${what}: expose LoadBalancer, yet on the host network`);
    if (w.spec.replicas !== 1) problem(`${what}: one relay behind a balancer`);
    if (!arg("external-ip")?.startsWith(`${c.externalIp}/`))
      problem(`${what}: behind a balancer coturn must advertise ${c.externalIp} (--external-ip)`);
    const service = ofKind("Service").find((s) => component(s) === "turn" && s.spec.type === "LoadBalancer");
    if (!service) problem(`${what}: expose LoadBalancer, but no Service of that type`);
    else {
      if (service.spec.externalTrafficPolicy !== "Local")
        problem(
          `Service/${service.metadata.name}: externalTrafficPolicy must be Local (peers' real addresses)`,
        );
      const udp = new Set(service.spec.ports.filter((p) => p.protocol === "UDP").map((p) => p.port));
      const missing = [];
      for (let p = minPort; p <= maxPort; p++) if (!udp.has(p)) missing.push(p);
      if (!udp.has(port)) missing.unshift(port);
      if (missing.length > 0)
        problem(
          `Service/${service.metadata.name}: UDP ports ${missing.slice(0, 5).join(", ")}... are not exposed`,
        );
    }
    if (values.networkPolicy.enabled) {
      const policy = ofKind("NetworkPolicy").find((p) => component(p) === "turn");
      const range = policy?.spec.ingress?.some((r) =>
        r.ports?.some((p) => p.port === minPort && p.endPort === maxPort && p.protocol === "UDP"),
      );
      if (!range)
        problem(
          `networkPolicy.enabled, but no policy lets peers reach the relay range ${minPort}-${maxPort}`,
        );
    }
  }
}
