// The monitoring and edge resources of one rendered scenario of charts/switchboard, checked
// against docs/operations.md so the chart's alerts and dashboard cannot drift from the metrics the
// server exports and the alerts the docs suggest. Called by check-manifests.mjs.
import { readFileSync } from "node:fs";

const operations = readFileSync(new URL("../docs/operations.md", import.meta.url), "utf8");

/** The rows of the markdown table that follows `heading` in docs/operations.md, as cell arrays. */
function tableAfter(heading) {
  const from = operations.indexOf(heading);
  if (from < 0) throw new Error(`docs/operations.md has no "${heading}"`);
  const rows = [];
  let started = false;
  for (const line of operations.slice(from).split("\n").slice(1)) {
    if (line.startsWith("|")) {
      started = true;
      // Cells split on pipes that are not escaped (\|), then unescaped.
      const cells = line
        .slice(1, -1)
        .split(/(?<!\\)\|/)
        .map((c) => c.trim().replaceAll("\\|", "|"));
      if (!/^-+$/.test(cells[0]) && cells[0] !== "alert" && cells[0] !== "metric") rows.push(cells);
    } else if (started) break;
  }
  return rows;
}

/** The metric names docs/operations.md documents (brace lists expanded: `a_{x,y}_b`). */
function documentedMetrics() {
  const names = new Set(["target_info"]);
  for (const [first] of tableAfter("## Metrics")) {
    for (const [, token] of first.matchAll(/`([a-z0-9_{},]+)`/g)) {
      const brace = token.match(/^(.*)\{([^}]*)\}(.*)$/);
      if (brace) for (const part of brace[2].split(",")) names.add(`${brace[1]}${part}${brace[3]}`);
      else names.add(token);
    }
  }
  return names;
}

/** The metric names a PromQL expression reads, without the histogram and counter suffixes. */
function metricsIn(expr) {
  const out = new Set();
  for (const [, name] of expr.matchAll(/\b([a-z][a-z0-9_]*)(?=\{|\[)/g)) {
    out.add(name.replace(/_(bucket|sum|count)$/, ""));
  }
  return out;
}

const EXTERNAL = new Set(["kube_pod_status_ready"]);

export function checkMonitoring({ docs, values, problem, namespace, fullname, apiVersions = [] }) {
  const ofKind = (kind) => docs.filter((d) => d.kind === kind);
  const name = (d) => `${d.kind}/${d.metadata?.name}`;
  const documented = documentedMetrics();
  const knownMetric = (m) => documented.has(m) || EXTERNAL.has(m);

  // --- PrometheusRule: the docs' alerts, each scoped to the release.
  const rules = ofKind("PrometheusRule");
  const pr = values.metrics.prometheusRule;
  // A plain render has no cluster capabilities, so "auto" renders nothing there; helm-check.sh
  // renders once more with the CRD's API version (--api-versions, passed on here).
  const wanted =
    pr.enabled === true ||
    (pr.enabled === "auto" && apiVersions.includes("monitoring.coreos.com/v1/PrometheusRule"));
  if (!wanted && rules.length > 0)
    problem(`metrics.prometheusRule.enabled is ${pr.enabled}, yet a PrometheusRule rendered`);
  if (wanted && rules.length !== 1)
    problem(`metrics.prometheusRule.enabled, but ${rules.length} PrometheusRules rendered`);
  for (const rule of rules) {
    const alerts = rule.spec.groups.flatMap((g) => g.rules ?? []);
    const selector = pr.selector || `namespace="${namespace}",job="${fullname}-metrics"`;
    const podSelector = `namespace="${namespace}",pod=~"${fullname}-.*"`;
    const docRows = tableAfter("### Suggested alerts");
    if (docRows.length < 10) problem(`docs/operations.md: only ${docRows.length} suggested alerts found`);
    const expected = new Map();
    for (const [alert, expr, forDuration, severity] of docRows) {
      const code = alert.match(/`(Switchboard[A-Za-z]+)`/)?.[1];
      if (!code) {
        problem(`docs/operations.md: the alert "${alert}" has no (\`Switchboard...\`) name`);
        continue;
      }
      expected.set(code, { expr: expr.replace(/^`|`$/g, ""), for: forDuration, severity });
    }
    for (const disabled of pr.disabled ?? []) expected.delete(disabled);
    const seen = new Set();
    for (const a of alerts) {
      seen.add(a.alert);
      const doc = expected.get(a.alert);
      if (!doc) {
        problem(`${name(rule)}: alert ${a.alert} is not in docs/operations.md (or is disabled)`);
        continue;
      }
      // Every series selector carries the release's matchers.
      for (const [, matchers] of a.expr.matchAll(/[a-z_]+\{([^}]*)\}/g)) {
        if (!matchers.includes(selector) && !matchers.includes(podSelector)) {
          problem(`${name(rule)}: ${a.alert} reads series outside the release: {${matchers}}`);
        }
      }
      const unscoped = a.expr
        .replaceAll(`{${selector}}`, "")
        .replaceAll(`,${selector}`, "")
        .replaceAll(podSelector, 'pod=~"<release>-.*"');
      if (unscoped !== doc.expr)
        problem(`${name(rule)}: ${a.alert} is\n    ${unscoped}\n  but the docs say\n    ${doc.expr}`);
      if (a.for !== doc.for)
        problem(`${name(rule)}: ${a.alert} fires after ${a.for}, the docs say ${doc.for}`);
      if (a.labels?.severity !== doc.severity)
        problem(`${name(rule)}: ${a.alert} has severity ${a.labels?.severity}, the docs say ${doc.severity}`);
      for (const [k, v] of Object.entries(pr.alertLabels ?? {})) {
        if (a.labels?.[k] !== v) problem(`${name(rule)}: ${a.alert} lacks the alert label ${k}=${v}`);
      }
      for (const m of metricsIn(a.expr))
        if (!knownMetric(m))
          problem(`${name(rule)}: ${a.alert} reads ${m}, which docs/operations.md does not list`);
    }
    for (const code of expected.keys())
      if (!seen.has(code)) problem(`${name(rule)}: the docs' alert ${code} is missing`);
  }

  // --- The Grafana dashboard: a ConfigMap the sidecar finds, valid JSON, documented metrics.
  const dashboards = ofKind("ConfigMap").filter(
    (c) => c.metadata.labels?.["app.kubernetes.io/component"] === "dashboard",
  );
  const gd = values.metrics.grafanaDashboard;
  if (!gd.enabled && dashboards.length > 0)
    problem("metrics.grafanaDashboard.enabled is false, yet a dashboard rendered");
  if (gd.enabled && dashboards.length !== 1)
    problem(`metrics.grafanaDashboard.enabled, but ${dashboards.length} dashboards rendered`);
  for (const cm of dashboards) {
    for (const [k, v] of Object.entries(gd.labels ?? {})) {
      if (cm.metadata.labels?.[k] !== v) problem(`${name(cm)}: lacks the sidecar label ${k}: "${v}"`);
    }
    const files = Object.entries(cm.data ?? {});
    if (files.length !== 1) problem(`${name(cm)}: expected one dashboard file, found ${files.length}`);
    for (const [file, text] of files) {
      let dashboard;
      try {
        dashboard = JSON.parse(text);
      } catch (err) {
        problem(`${name(cm)}: ${file} is not JSON: ${err.message}`);
        continue;
      }
      const panels = (dashboard.panels ?? []).filter((p) => p.type !== "row");
      const titles = panels.map((p) => p.title.toLowerCase()).join(" | ");
      // The key panels the issue asks for.
      for (const key of [
        "message rate",
        "delivery latency",
        "rpc errors",
        "event loop delay",
        "heap",
        "store write",
        "readiness",
      ]) {
        if (!titles.includes(key)) problem(`${name(cm)}: no "${key}" panel (panels: ${titles})`);
      }
      const ids = new Set();
      for (const p of panels) {
        if (ids.has(p.id)) problem(`${name(cm)}: panel id ${p.id} used twice`);
        ids.add(p.id);
        if (!p.targets?.length) problem(`${name(cm)}: panel "${p.title}" has no query`);
        for (const t of p.targets ?? []) {
          for (const m of metricsIn(t.expr))
            if (!knownMetric(m))
              problem(`${name(cm)}: panel "${p.title}" reads ${m}, which docs/operations.md does not list`);
        }
      }
    }
  }

  // --- Ingress and Gateway API routes: to the gateway Service's port, rendered when enabled.
  const gatewayService = ofKind("Service").find((s) => s.metadata.name === `${fullname}-gateway`);
  const port = gatewayService?.spec.ports.find((p) => p.name === "grpc")?.port;
  const ingresses = ofKind("Ingress");
  if (values.gateway.ingress.enabled !== (ingresses.length === 1))
    problem(
      `gateway.ingress.enabled is ${values.gateway.ingress.enabled}, ${ingresses.length} Ingresses rendered`,
    );
  for (const ing of ingresses) {
    for (const rule of ing.spec.rules ?? []) {
      for (const path of rule.http?.paths ?? []) {
        const backend = path.backend?.service;
        if (backend?.name !== gatewayService?.metadata.name || backend?.port?.number !== port) {
          problem(`${name(ing)}: ${rule.host}${path.path} must lead to the gateway Service's port ${port}`);
        }
      }
    }
  }
  for (const [kind, key] of [
    ["GRPCRoute", "grpc"],
    ["HTTPRoute", "http"],
  ]) {
    const routes = ofKind(kind);
    if (values.gateway.route[key].enabled !== (routes.length === 1))
      problem(
        `gateway.route.${key}.enabled is ${values.gateway.route[key].enabled}, ${routes.length} ${kind}s rendered`,
      );
    for (const r of routes) {
      if (r.apiVersion !== "gateway.networking.k8s.io/v1")
        problem(`${name(r)}: apiVersion must be gateway.networking.k8s.io/v1`);
      if (!r.spec.parentRefs?.length) problem(`${name(r)}: attaches to no Gateway (parentRefs)`);
      const refs = (r.spec.rules ?? []).flatMap((rule) => rule.backendRefs ?? []);
      if (
        refs.length === 0 ||
        refs.some((b) => b.name !== gatewayService?.metadata.name || b.port !== port)
      ) {
        problem(`${name(r)}: every backendRef must be the gateway Service's port ${port}`);
      }
    }
  }
}

/**
 * The default topology spread: each workload spread on its own, its labelSelector the role's
 * pods of this release. Explicit constraints (pod.topologySpreadConstraints or the role's) win.
 */
export function checkSpread({ workload, role, values, problem }) {
  const spec = workload.spec.template.spec;
  const explicit =
    values[role].topologySpreadConstraints?.length || values.pod.topologySpreadConstraints?.length;
  if (explicit || !values.pod.topologySpread?.length) return;
  const constraints = spec.topologySpreadConstraints ?? [];
  const label = `${workload.kind}/${workload.metadata.name}`;
  if (constraints.length !== values.pod.topologySpread.length) {
    problem(
      `${label}: ${constraints.length} topology spread constraints, pod.topologySpread has ${values.pod.topologySpread.length}`,
    );
  }
  const podLabels = workload.spec.template.metadata.labels;
  for (const c of constraints) {
    const match = c.labelSelector?.matchLabels ?? {};
    for (const key of [
      "app.kubernetes.io/name",
      "app.kubernetes.io/instance",
      "app.kubernetes.io/component",
    ]) {
      if (!match[key] || match[key] !== podLabels[key])
        problem(`${label}: spread over ${c.topologyKey} must select by ${key} (per role and release)`);
    }
  }
}
