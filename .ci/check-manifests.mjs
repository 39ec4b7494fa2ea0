// Checks what `helm template` rendered for one scenario of charts/switchboard against the rules a
// working Switchboard deployment needs, so a chart change that would break a cluster fails CI here:
//   [HELM_API_VERSIONS=<a,b>] node .ci/check-manifests.mjs <rendered.yaml> <scenario-values.yaml>
// Exits non-zero, naming every violation.
import { readFileSync } from "node:fs";
import { register } from "tsx/esm/api";
import { parse, parseAllDocuments } from "yaml";
import { checkBundled } from "./check-bundled.mjs";
import { checkMonitoring, checkSpread } from "./check-monitoring.mjs";
import { checkTurn } from "./check-turn.mjs";

// The server's own table of what each role calls, so the chart is checked against the code.
register();
const { ROLE_NEEDS } = await import("../services/common/config/mesh.ts");

const [renderedPath, scenarioPath] = process.argv.slice(2);
if (!renderedPath || !scenarioPath) {
  console.error("usage: node .ci/check-manifests.mjs <rendered.yaml> <scenario-values.yaml>");
  process.exit(2);
}

const chartDefaults = parse(
  readFileSync(new URL("../charts/switchboard/values.yaml", import.meta.url), "utf8"),
);
const values = merge(chartDefaults, parse(readFileSync(scenarioPath, "utf8")) ?? {});
const docs = [];
for (const doc of parseAllDocuments(readFileSync(renderedPath, "utf8"))) {
  if (doc.errors.length > 0) fatal(`${renderedPath}: invalid YAML: ${doc.errors[0].message}`);
  const object = doc.toJS();
  if (object !== null && object !== undefined) docs.push(object);
}

const problems = [];
const problem = (message) => problems.push(message);

/** What each role calls (services/common/config/mesh.ts), and the variable the chart names it with. */
const NEEDS = ROLE_NEEDS;
const URL_VARIABLE = {
  accounts: "SWITCHBOARD_ACCOUNTS_URL",
  presence: "SWITCHBOARD_PRESENCE_URL",
  notification: "SWITCHBOARD_NOTIFICATION_URL",
  sequencer: "SWITCHBOARD_SEQUENCER_URL_TEMPLATE",
  media: "SWITCHBOARD_MEDIA_URL",
};
const ROLES = Object.keys(NEEDS);
/** The roles this scenario must render: media only when media.enabled. */
const ENABLED = ROLES.filter((role) => role !== "media" || values.media.enabled);

const ofKind = (kind) => docs.filter((d) => d.kind === kind);
const name = (d) => `${d.kind}/${d.metadata?.name}`;
const isHook = (d) => d.metadata?.annotations?.["helm.sh/hook"] !== undefined;

// --- The ConfigMap every role reads (the Grafana dashboard's is checked with the monitoring).
const configMaps = ofKind("ConfigMap").filter(
  (c) => c.metadata.labels?.["app.kubernetes.io/component"] !== "dashboard",
);
if (configMaps.length !== 1) fatal(`expected one ConfigMap, found ${configMaps.length}`);
const config = configMaps[0].data ?? {};
const adminPort = Number(config.SWITCHBOARD_ADMIN_PORT);
const grpcPort = Number(config.SWITCHBOARD_PORT);
if (!Number.isInteger(adminPort) || adminPort < 1) problem("ConfigMap: SWITCHBOARD_ADMIN_PORT is not set");
if (!Number.isInteger(grpcPort) || grpcPort < 1) problem("ConfigMap: SWITCHBOARD_PORT is not set");
if (config.SWITCHBOARD_HOST !== "0.0.0.0") problem("ConfigMap: SWITCHBOARD_HOST must be 0.0.0.0 in a pod");
for (const secretName of [
  "SWITCHBOARD_TOKEN_KEY",
  "SCYLLA_PASSWORD",
  "SWITCHBOARD_WEBPUSH_VAPID_PRIVATE_KEY",
  "SWITCHBOARD_MINIO_ACCESS_KEY",
  "SWITCHBOARD_MINIO_SECRET_KEY",
]) {
  if (secretName in config) problem(`ConfigMap: ${secretName} must come from a Secret, not the ConfigMap`);
}
for (const required of [
  "SCYLLA_CONTACT_POINTS",
  "SWITCHBOARD_STORE",
  "SWITCHBOARD_BUS",
  "SWITCHBOARD_ROUTES",
]) {
  if (!config[required]) problem(`ConfigMap: ${required} is empty`);
}

// --- Workloads: one per role, probes on the admin port, resources, non-root.
const deployments = ofKind("Deployment");
const statefulSets = ofKind("StatefulSet");
const workloads = [...deployments, ...statefulSets];
const roleOf = new Map();
for (const w of workloads) {
  // The release's own NATS and Redis are checked by check-bundled.mjs, its coturn by check-turn.mjs.
  if (["nats", "redis", "turn"].includes(w.spec?.template?.metadata?.labels?.["app.kubernetes.io/component"]))
    continue;
  const container = w.spec?.template?.spec?.containers?.[0];
  const args = container?.args ?? [];
  const i = args.indexOf("--role");
  const role = i >= 0 ? args[i + 1] : undefined;
  if (args[0] !== "start" || !ROLES.includes(role)) {
    problem(
      `${name(w)}: args must be "start --role <one of ${ROLES.join(", ")}>", got ${JSON.stringify(args)}`,
    );
    continue;
  }
  roleOf.set(w, role);
}
for (const role of ROLES) {
  const found = [...roleOf].filter(([, r]) => r === role).map(([w]) => w);
  const kind = role === "sequencer" ? "StatefulSet" : "Deployment";
  if (!ENABLED.includes(role)) {
    if (found.length > 0) problem(`role ${role} is disabled, yet ${found.map(name).join(", ")} rendered`);
    const leftovers = docs.filter((d) => d.metadata?.labels?.["app.kubernetes.io/component"] === role);
    if (leftovers.length > 0) {
      problem(`role ${role} is disabled, yet ${leftovers.map(name).join(", ")} rendered`);
    }
  } else if (found.length !== 1 || found[0].kind !== kind) {
    problem(`role ${role}: expected exactly one ${kind}, found ${found.map(name).join(", ") || "none"}`);
  }
}

const hookPods = [...ofKind("Job"), ...ofKind("Pod")];
for (const w of [...workloads, ...hookPods]) {
  const podSpec = w.kind === "Pod" ? w.spec : w.spec?.template?.spec;
  checkSecurity(name(w), podSpec);
  for (const c of podSpec?.containers ?? []) {
    const r = c.resources ?? {};
    if (!r.requests?.cpu || !r.requests?.memory)
      problem(`${name(w)}/${c.name}: resources.requests needs cpu and memory`);
    if (!r.limits?.memory) problem(`${name(w)}/${c.name}: resources.limits needs memory`);
  }
}

for (const [w, role] of roleOf) {
  const podSpec = w.spec.template.spec;
  const c = podSpec.containers[0];
  const ports = Object.fromEntries((c.ports ?? []).map((p) => [p.name, p.containerPort]));
  if (ports.admin !== adminPort)
    problem(`${name(w)}: containerPort "admin" must be ${adminPort} (SWITCHBOARD_ADMIN_PORT)`);
  if (ports.grpc !== grpcPort)
    problem(`${name(w)}: containerPort "grpc" must be ${grpcPort} (SWITCHBOARD_PORT)`);
  for (const [probe, path] of [
    ["livenessProbe", "/healthz"],
    ["readinessProbe", "/readyz"],
    ["startupProbe", "/healthz"],
  ]) {
    const get = c[probe]?.httpGet;
    const port = get?.port === "admin" ? ports.admin : get?.port;
    if (!get || get.path !== path || port !== adminPort) {
      problem(`${name(w)}: ${probe} must be an HTTP GET of ${path} on the admin port ${adminPort}`);
    }
  }
  if (!(c.envFrom ?? []).some((e) => e.configMapRef?.name === configMaps[0].metadata.name)) {
    problem(`${name(w)}: must read the settings ConfigMap through envFrom`);
  }
  const env = Object.fromEntries((c.env ?? []).map((e) => [e.name, e]));
  const tokenKey = env.SWITCHBOARD_TOKEN_KEY?.valueFrom?.secretKeyRef;
  if (!tokenKey) {
    problem(`${name(w)}: SWITCHBOARD_TOKEN_KEY must come from a Secret (valueFrom.secretKeyRef)`);
  } else {
    checkSecretRef(`${name(w)}: SWITCHBOARD_TOKEN_KEY`, tokenKey);
  }
  for (const [variable, e] of Object.entries(env)) {
    if (/PASSWORD|PRIVATE_KEY|TOKEN_KEY|ACCESS_KEY|SECRET_KEY/.test(variable) && e.value !== undefined) {
      problem(`${name(w)}: ${variable} is a plain value; it must come from a Secret`);
    }
  }
  const grace = podSpec.terminationGracePeriodSeconds ?? 30;
  const preStop = c.lifecycle?.preStop?.exec?.command;
  const sleep = preStop?.[0] === "sleep" ? Number(preStop[1]) : 0;
  if ((role === "gateway" || role === "sequencer") && grace - sleep < 30) {
    problem(
      `${name(w)}: terminationGracePeriodSeconds leaves ${grace - sleep}s after preStop to drain; allow 30s`,
    );
  }
  const checksum = w.spec.template.metadata?.annotations?.["checksum/config"];
  if (!checksum)
    problem(
      `${name(w)}: pod template lacks the checksum/config annotation (settings changes must roll pods)`,
    );

  // Every service this role calls has an address, and the address reaches that role's pods.
  const settings = { ...config, ...Object.fromEntries(Object.entries(env).map(([k, e]) => [k, e.value])) };
  for (const need of NEEDS[role]) {
    const url = settings[URL_VARIABLE[need]];
    if (!url) {
      problem(`${name(w)}: the ${role} role calls ${need}, but ${URL_VARIABLE[need]} is not set`);
      continue;
    }
    checkUrl(`${name(w)}: ${URL_VARIABLE[need]}`, url, need);
  }
  // Gateways forward MediaService to the media role exactly when it runs.
  if (role === "gateway") {
    const url = settings.SWITCHBOARD_MEDIA_URL;
    if (values.media.enabled && !url) {
      problem(`${name(w)}: media.enabled, but gateways get no SWITCHBOARD_MEDIA_URL`);
    } else if (values.media.enabled) {
      checkUrl(`${name(w)}: SWITCHBOARD_MEDIA_URL`, url, "media");
    } else if (url) {
      problem(`${name(w)}: media.enabled is false, yet SWITCHBOARD_MEDIA_URL is "${url}"`);
    }
  }
  // Every process reads the media settings at start-up (services/common/config/media.ts): a MinIO store
  // without both keys stops it, whatever its role.
  const names = new Set([...Object.keys(config), ...Object.keys(env)]);
  const minioStore =
    settings.SWITCHBOARD_MEDIA_STORE === "minio" ||
    (!settings.SWITCHBOARD_MEDIA_STORE && names.has("SWITCHBOARD_MINIO_ENDPOINT"));
  for (const key of ["SWITCHBOARD_MINIO_ACCESS_KEY", "SWITCHBOARD_MINIO_SECRET_KEY"]) {
    if (minioStore && !names.has(key)) {
      problem(
        `${name(w)}: the media settings name a MinIO store but not ${key}; the process would not start`,
      );
    }
  }
  if (role === "media") checkMedia(w, settings, env);
}

// --- The sequencer StatefulSet and the shard map.
const sequencer = [...roleOf].find(([, r]) => r === "sequencer")?.[0];
if (sequencer) {
  const replicas = sequencer.spec.replicas;
  const configured = Number(config.SWITCHBOARD_SEQUENCER_REPLICAS);
  const shards = Number(config.SWITCHBOARD_SHARDS ?? 16);
  if (replicas !== configured) {
    problem(
      `${name(sequencer)}: replicas ${replicas} differ from SWITCHBOARD_SEQUENCER_REPLICAS ${configured} in the ConfigMap`,
    );
  }
  if (!(configured >= 1 && configured <= shards)) {
    problem(
      `SWITCHBOARD_SEQUENCER_REPLICAS ${configured} must be between 1 and SWITCHBOARD_SHARDS ${shards}`,
    );
  }
  if (replicas !== values.sequencer.replicaCount) {
    problem(
      `${name(sequencer)}: replicas ${replicas} differ from sequencer.replicaCount ${values.sequencer.replicaCount}`,
    );
  }
  const headless = ofKind("Service").find((s) => s.metadata.name === sequencer.spec.serviceName);
  if (headless?.spec.clusterIP !== "None") {
    problem(`${name(sequencer)}: serviceName must name a headless Service (clusterIP: None)`);
  } else if (!selects(headless.spec.selector, sequencer.spec.template.metadata.labels)) {
    problem(`Service/${headless.metadata.name}: does not select the sequencer pods`);
  }
  const template = config.SWITCHBOARD_SEQUENCER_URL_TEMPLATE ?? "";
  const expectedHost = `${sequencer.metadata.name}-{ordinal}.${sequencer.spec.serviceName}.`;
  if (!template.startsWith(`http://${expectedHost}`)) {
    problem(`SWITCHBOARD_SEQUENCER_URL_TEMPLATE must start with http://${expectedHost}, got "${template}"`);
  }
}

// --- Credentials: the Secrets the chart renders hold what the pods read.
const ownSecrets = ofKind("Secret").filter((s) => !isHook(s));
if (values.auth.existingSecret && ownSecrets.some((s) => s.data?.["token-key"])) {
  problem("auth.existingSecret is set, yet the chart renders a token key of its own");
}
for (const s of ownSecrets) {
  const key = s.data?.["token-key"];
  if (key !== undefined) {
    const bytes = Buffer.from(Buffer.from(key, "base64").toString(), "base64url");
    if (bytes.length < 32)
      problem(`Secret/${s.metadata.name}: token-key encodes ${bytes.length} bytes, needs >= 32`);
  }
}

// --- The migration hook and the test hook.
const jobs = ofKind("Job");
if (values.migration.enabled) {
  const job = jobs.find((j) => j.spec.template.spec.containers[0]?.args?.[0] === "migrate");
  const hooks = job?.metadata.annotations?.["helm.sh/hook"]?.split(",") ?? [];
  if (!job) problem("migration.enabled, but no Job runs `switchboard migrate`");
  else if (!hooks.includes("pre-install") || !hooks.includes("pre-upgrade")) {
    problem(`${name(job)}: must be a pre-install,pre-upgrade hook`);
  } else {
    const env = Object.fromEntries(job.spec.template.spec.containers[0].env.map((e) => [e.name, e]));
    if (!env.SCYLLA_CONTACT_POINTS?.value) problem(`${name(job)}: SCYLLA_CONTACT_POINTS is not set`);
    const user = env.SCYLLA_USERNAME?.valueFrom?.secretKeyRef;
    // Pre-install hooks run before the release's own resources exist.
    if (user && ownSecrets.some((s) => s.metadata.name === user.name)) {
      problem(`${name(job)}: reads Secret/${user.name}, which does not exist yet when pre-install hooks run`);
    }
  }
}
const tests = ofKind("Pod").filter((p) => p.metadata.annotations?.["helm.sh/hook"] === "test");
if (values.tests.enabled) {
  if (tests.length === 0) problem("tests.enabled, but no `helm test` Pod renders");
  for (const t of tests) {
    const env = Object.fromEntries((t.spec.containers[0].env ?? []).map((e) => [e.name, e.value]));
    if (!env.SWITCHBOARD_URL) problem(`${name(t)}: SWITCHBOARD_URL (the gateway Service) is not set`);
    else checkUrl(`${name(t)}: SWITCHBOARD_URL`, env.SWITCHBOARD_URL, "gateway");
    const script = (t.spec.containers[0].args ?? []).join("\n");
    for (const command of ["register", "send", "history"]) {
      if (!script.includes(` ${command} `)) problem(`${name(t)}: the test script never runs \`${command}\``);
    }
  }
}

// --- Optional resources render exactly when enabled.
const policies = ofKind("NetworkPolicy");
if (values.networkPolicy.enabled) {
  for (const [w, role] of roleOf) {
    const labels = w.spec.template.metadata.labels;
    const covering = policies.filter((p) => matchesSelector(p.spec.podSelector, labels));
    if (covering.length === 0) {
      problem(`networkPolicy.enabled, but no NetworkPolicy covers the ${role} pods`);
      continue;
    }
    const grpcRules = covering
      .flatMap((p) => p.spec.ingress ?? [])
      .filter((r) => hasPort(r, "grpc", grpcPort));
    const adminRules = covering
      .flatMap((p) => p.spec.ingress ?? [])
      .filter((r) => hasPort(r, "admin", adminPort));
    if (grpcRules.length === 0) problem(`NetworkPolicy: the ${role} pods' h2c port admits nothing`);
    if (role !== "gateway" && grpcRules.some((r) => !r.from || r.from.some((f) => !isReleasePeer(f)))) {
      problem(`NetworkPolicy: the ${role} pods' h2c port must admit only this release's pods`);
    }
    // Only gateways call media (they forward devices' MediaService calls).
    if (
      role === "media" &&
      grpcRules.some((r) =>
        (r.from ?? []).some((f) => f.podSelector?.matchLabels?.["app.kubernetes.io/component"] !== "gateway"),
      )
    ) {
      problem("NetworkPolicy: the media pods' h2c port must admit only this release's gateways");
    }
    if (adminRules.some((r) => !r.from))
      problem(`NetworkPolicy: the ${role} pods' admin port is open to everyone`);
    const monitoring = values.networkPolicy.monitoringNamespace;
    if (
      monitoring &&
      !adminRules.some((r) =>
        r.from.some((f) => f.namespaceSelector?.matchLabels?.["kubernetes.io/metadata.name"] === monitoring),
      )
    ) {
      problem(`NetworkPolicy: the ${role} pods' admin port does not admit the ${monitoring} namespace`);
    }
  }
} else if (policies.length > 0) {
  problem(`networkPolicy.enabled is false, yet ${policies.map(name).join(", ")} rendered`);
}

const monitors = ofKind("ServiceMonitor");
if (values.metrics.serviceMonitor.enabled) {
  if (monitors.length !== 1)
    problem(`metrics.serviceMonitor.enabled, but ${monitors.length} ServiceMonitors rendered`);
  for (const m of monitors) {
    const endpoint = m.spec.endpoints?.[0];
    if (endpoint?.path !== "/metrics" || endpoint?.port !== "admin") {
      problem(`${name(m)}: must scrape /metrics on the port named "admin"`);
    }
    const service = ofKind("Service").find((s) => matchesSelector(m.spec.selector, s.metadata.labels ?? {}));
    if (!service) problem(`${name(m)}: selects no Service`);
    else {
      const port = service.spec.ports.find((p) => p.name === "admin");
      if (port?.port !== adminPort)
        problem(`${name(m)}: Service/${service.metadata.name} has no admin port ${adminPort}`);
      for (const [w, role] of roleOf) {
        if (!selects(service.spec.selector, w.spec.template.metadata.labels)) {
          problem(`${name(m)}: Service/${service.metadata.name} does not reach the ${role} pods`);
        }
      }
    }
  }
} else if (monitors.length > 0) {
  problem("metrics.serviceMonitor.enabled is false, yet a ServiceMonitor rendered");
}

const hpas = ofKind("HorizontalPodAutoscaler");
for (const role of ["gateway", "fanout", "media"].filter((r) => ENABLED.includes(r))) {
  const w = [...roleOf].find(([, r]) => r === role)?.[0];
  const hpa = hpas.find((h) => h.spec.scaleTargetRef.name === w?.metadata.name);
  if (values[role].autoscaling.enabled) {
    if (!hpa)
      problem(`${role}.autoscaling.enabled, but no HorizontalPodAutoscaler targets ${w ? name(w) : role}`);
    if (w && w.spec.replicas !== undefined) problem(`${name(w)}: sets replicas although an HPA scales it`);
  } else if (hpa) {
    problem(`${role}.autoscaling.enabled is false, yet ${name(hpa)} rendered`);
  }
}
for (const role of ENABLED) {
  const w = [...roleOf].find(([, r]) => r === role)?.[0];
  const pdbs = ofKind("PodDisruptionBudget").filter((p) =>
    w ? matchesSelector(p.spec.selector, w.spec.template.metadata.labels) : false,
  );
  if (values[role].pdb.enabled && pdbs.length !== 1)
    problem(`${role}.pdb.enabled, but ${pdbs.length} PDBs select it`);
  if (!values[role].pdb.enabled && pdbs.length > 0)
    problem(`${role}.pdb.enabled is false, yet a PDB selects it`);
}

// --- Alerts, dashboard, Ingress and routes (check-monitoring.mjs); topology spread per role.
const fullname = configMaps[0].metadata.name;
checkMonitoring({
  docs,
  values,
  problem,
  namespace: configMaps[0].metadata.namespace,
  fullname,
  // The --api-versions the render was given (helm-check.sh), comma-separated.
  apiVersions: (process.env.HELM_API_VERSIONS ?? "").split(",").filter(Boolean),
});
for (const [workload, role] of roleOf) checkSpread({ workload, role, values, problem });
checkBundled({ docs, values, config, fullname, namespace: configMaps[0].metadata.namespace, problem });
checkTurn({ docs, values, problem });

for (const d of docs) {
  const limit = d.kind === "Service" ? 63 : 253;
  if ((d.metadata?.name ?? "").length > limit) problem(`${name(d)}: name longer than ${limit} characters`);
}

if (problems.length > 0) {
  console.error(`${renderedPath} (${scenarioPath}): ${problems.length} problem(s):`);
  for (const p of problems) console.error(`  - ${p}`);
  process.exit(1);
}
console.log(`${scenarioPath}: ${docs.length} manifests, all checks pass`);

// --- Helpers.

function fatal(message) {
  console.error(message);
  process.exit(1);
}

function merge(base, over) {
  if (!isObject(base) || !isObject(over)) return over === undefined ? base : over;
  const out = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = merge(base[k], v);
  return out;
}

function isObject(v) {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function checkSecurity(what, podSpec) {
  const pod = podSpec?.securityContext ?? {};
  for (const c of podSpec?.containers ?? []) {
    const sc = c.securityContext ?? {};
    const nonRoot = sc.runAsNonRoot ?? pod.runAsNonRoot;
    const user = sc.runAsUser ?? pod.runAsUser;
    if (nonRoot !== true) problem(`${what}/${c.name}: runAsNonRoot must be true`);
    if (user === 0) problem(`${what}/${c.name}: runAsUser must not be 0`);
    if (sc.allowPrivilegeEscalation !== false)
      problem(`${what}/${c.name}: allowPrivilegeEscalation must be false`);
    if (sc.privileged === true) problem(`${what}/${c.name}: must not be privileged`);
  }
}

function checkSecretRef(
  what,
  ref,
  existingSecret = values.auth.existingSecret,
  setting = "auth.existingSecret",
) {
  const own = ofKind("Secret").find((s) => s.metadata.name === ref.name && !isHook(s));
  if (own && own.data?.[ref.key] === undefined && own.stringData?.[ref.key] === undefined) {
    problem(`${what}: Secret/${ref.name} has no key "${ref.key}"`);
  }
  if (!own && (!existingSecret || ref.name !== existingSecret)) {
    problem(`${what}: Secret/${ref.name} is neither rendered by the chart nor ${setting}`);
  }
}

/** The media pods: MinIO as configured, its keys from a Secret (minio.existingSecret or the chart's). */
function checkMedia(w, settings, env) {
  const m = values.minio;
  const expect = {
    SWITCHBOARD_MEDIA_STORE: "minio",
    SWITCHBOARD_MINIO_ENDPOINT: m.endpoint,
    SWITCHBOARD_MINIO_BUCKET: m.bucket,
    SWITCHBOARD_MINIO_REGION: m.region,
    SWITCHBOARD_MINIO_CREATE_BUCKET: String(m.createBucket),
  };
  if (m.publicEndpoint) expect.SWITCHBOARD_MINIO_PUBLIC_ENDPOINT = m.publicEndpoint;
  for (const [variable, value] of Object.entries(expect)) {
    if (settings[variable] !== value) {
      problem(`${name(w)}: ${variable} must be "${value}", got ${JSON.stringify(settings[variable])}`);
    }
  }
  if (!m.publicEndpoint && "SWITCHBOARD_MINIO_PUBLIC_ENDPOINT" in settings) {
    problem(`${name(w)}: minio.publicEndpoint is empty, yet SWITCHBOARD_MINIO_PUBLIC_ENDPOINT is set`);
  }
  for (const [variable, key, ownKey] of [
    ["SWITCHBOARD_MINIO_ACCESS_KEY", m.accessKeyKey, "minio-access-key"],
    ["SWITCHBOARD_MINIO_SECRET_KEY", m.secretKeyKey, "minio-secret-key"],
  ]) {
    const ref = env[variable]?.valueFrom?.secretKeyRef;
    if (!ref) {
      problem(`${name(w)}: ${variable} must come from a Secret (valueFrom.secretKeyRef)`);
      continue;
    }
    const source = m.existingSecret
      ? `Secret/${m.existingSecret}, key "${key}"`
      : `the chart's Secret, key "${ownKey}"`;
    if (m.existingSecret ? ref.name !== m.existingSecret || ref.key !== key : ref.key !== ownKey) {
      problem(`${name(w)}: ${variable} must come from ${source}`);
    }
    checkSecretRef(`${name(w)}: ${variable}`, ref, m.existingSecret, "minio.existingSecret");
  }
  if (m.existingSecret && ofKind("Secret").some((s) => s.data?.["minio-secret-key"] !== undefined)) {
    problem("minio.existingSecret is set, yet the chart renders MinIO keys of its own");
  }
}

/** The URL must name a Service of this render, on a port that leads to the role's grpc port. */
function checkUrl(what, url, role) {
  const sample = url.replaceAll("{ordinal}", "0");
  let parsed;
  try {
    parsed = new URL(sample);
  } catch {
    problem(`${what}: "${url}" is not a URL`);
    return;
  }
  const port = Number(parsed.port || 80);
  const labels = [...roleOf].find(([, r]) => r === role)?.[0]?.spec.template.metadata.labels;
  const namespace = configMaps[0].metadata.namespace;
  const parts = parsed.hostname.split(".");
  // <service>.<namespace>.svc[...] or, for a StatefulSet pod, <pod>.<service>.<namespace>.svc[...].
  const svcIndex = parts.indexOf("svc");
  const serviceName = parts[svcIndex - 2];
  if (svcIndex < 2 || parts[svcIndex - 1] !== namespace) {
    problem(`${what}: "${url}" is not a Service name in namespace ${namespace} (<name>.${namespace}.svc)`);
    return;
  }
  const service = ofKind("Service").find((s) => s.metadata.name === serviceName);
  if (!service) {
    problem(`${what}: "${url}" names Service/${serviceName}, which is not rendered`);
    return;
  }
  if (labels && !selects(service.spec.selector, labels)) {
    problem(`${what}: Service/${serviceName} does not select the ${role} pods`);
  }
  const servicePort = service.spec.ports.find((p) => p.port === port);
  if (!servicePort || (servicePort.targetPort !== "grpc" && servicePort.targetPort !== grpcPort)) {
    problem(`${what}: Service/${serviceName} has no port ${port} leading to the grpc port`);
  }
}

function selects(selector, labels) {
  return (
    selector !== undefined &&
    Object.entries(selector).every(([k, v]) => labels?.[k] === v) &&
    Object.keys(selector).length > 0
  );
}

function matchesSelector(selector, labels) {
  if (!selector) return false;
  const byLabels = Object.entries(selector.matchLabels ?? {}).every(([k, v]) => labels[k] === v);
  const byExpressions = (selector.matchExpressions ?? []).every((e) => {
    if (e.operator === "In") return e.values.includes(labels[e.key]);
    if (e.operator === "NotIn") return !e.values.includes(labels[e.key]);
    if (e.operator === "Exists") return e.key in labels;
    if (e.operator === "DoesNotExist") return !(e.key in labels);
    return false;
  });
  return byLabels && byExpressions;
}

function hasPort(rule, portName, portNumber) {
  return (rule.ports ?? []).some((p) => p.port === portName || p.port === portNumber);
}

function isReleasePeer(peer) {
  const labels = peer.podSelector?.matchLabels ?? {};
  return (
    peer.namespaceSelector === undefined &&
    peer.ipBlock === undefined &&
    labels["app.kubernetes.io/instance"] !== undefined &&
    labels["app.kubernetes.io/name"] !== undefined
  );
}
