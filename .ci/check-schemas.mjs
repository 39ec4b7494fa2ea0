// Validates every manifest `helm template` rendered against the Kubernetes OpenAPI schemas, and
// the Prometheus Operator's and Gateway API's CRD schemas, offline: the JSON schemas ship in the
// kubernetes-models packages (kubernetes-models, @kubernetes-models/prometheus-operator,
// @kubernetes-models/gateway-api), so no schema is fetched at check time.
//   node .ci/check-schemas.mjs <rendered.yaml>
// Exits non-zero, naming every manifest that does not validate. Like the API server's own
// validation, the schemas catch wrong types, enums and missing required fields, not unknown
// fields.
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";

/**
 * The model module of an apiVersion. GRPCRoute v1 has no model in the Gateway API package
 * releases that run on Node 20; its v1alpha2 schema, from which v1 was promoted unchanged, stands in.
 */
function moduleOf(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  if (group === "monitoring.coreos.com")
    return [`@kubernetes-models/prometheus-operator/${apiVersion}`, kind];
  if (group === "gateway.networking.k8s.io") {
    if (kind === "GRPCRoute" && version === "v1")
      return ["@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1alpha2", kind];
    return [`@kubernetes-models/gateway-api/${apiVersion}`, kind];
  }
  return [group ? `kubernetes-models/${apiVersion}` : `kubernetes-models/${version}`, kind];
}

const [renderedPath] = process.argv.slice(2);
if (!renderedPath) {
  console.error("usage: node .ci/check-schemas.mjs <rendered.yaml>");
  process.exit(2);
}
const problems = [];
let checked = 0;
for (const doc of parseAllDocuments(readFileSync(renderedPath, "utf8"))) {
  const object = doc.toJS();
  if (object === null || object === undefined) continue;
  const label = `${object.kind}/${object.metadata?.name}`;
  const [path, kind] = moduleOf(object.apiVersion ?? "", object.kind ?? "");
  let Model;
  try {
    Model = (await import(path))[kind];
  } catch {
    Model = undefined;
  }
  if (Model === undefined) {
    problems.push(`${label}: no schema for ${object.apiVersion} ${object.kind}`);
    continue;
  }
  try {
    // The stand-in model checks the apiVersion it was made for.
    new Model({
      ...object,
      apiVersion: path.endsWith("v1alpha2") ? "gateway.networking.k8s.io/v1alpha2" : object.apiVersion,
    }).validate();
    checked++;
  } catch (err) {
    problems.push(`${label}: ${err instanceof Error ? err.message : String(err)}`);
  }
}
if (problems.length > 0) {
  console.error(`${renderedPath}: ${problems.length} manifest(s) fail their schema:`);
  for (const p of problems) console.error(`  - ${p}`);
  process.exit(1);
}
console.log(`${renderedPath}: ${checked} manifests valid against their schemas`);
