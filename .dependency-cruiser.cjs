// The import rules of this repository, checked by `npm run lint` and CI (dependency-cruiser).
// The layers, bottom up: services/common; the storage and bus ports (services/store,
// services/bus); the services (accounts, admin, fanout, gateway, media, notification, presence,
// sequencer), which reach each other only through a service's public face (its index.ts, or its
// types.ts for a port's contract); the composition root (services/server, services/mesh,
// services/cli), which wires them. The SDK is a package of its own and never imports the server.
// docs/architecture.md ("Layout") describes the same layers.

const SERVICES = "accounts|admin|fanout|gateway|media|notification|presence|sequencer";
const TEST_FILE = "\\.test\\.ts$";

/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: "no-circular",
      comment: "An import loop, even of types only: move what both sides need into a lower module.",
      severity: "error",
      from: {},
      to: { circular: true },
    },
    {
      name: "sdk-is-its-own-package",
      comment: "The SDK ships on its own; it may use gen/ but nothing of the server, bench or tests.",
      severity: "error",
      from: { path: "^sdk/", pathNot: TEST_FILE },
      to: { path: "^(services|bench|test|examples)/" },
    },
    {
      name: "production-never-imports-tests",
      comment: "Fakes and helpers live under test/ and are used by tests only.",
      severity: "error",
      from: { path: "^(services|sdk)/", pathNot: TEST_FILE },
      to: { path: `(^test/|${TEST_FILE})` },
    },
    {
      name: "common-is-the-bottom",
      comment: "services/common serves every service and depends on none of them.",
      severity: "error",
      from: { path: "^services/common/" },
      to: { path: "^services/(?!common/)" },
    },
    {
      name: "ports-below-services",
      comment: "The storage and bus ports and their engines know nothing of the services above them.",
      severity: "error",
      from: { path: "^services/(store|bus)/" },
      to: { path: `^services/(${SERVICES}|server|mesh|cli)/` },
    },
    {
      name: "composition-root-on-top",
      comment: "Only the composition root (server, mesh, cli) wires services; nothing below imports it.",
      severity: "error",
      from: { path: `^services/(common|store|bus|${SERVICES})/`, pathNot: TEST_FILE },
      to: { path: "^services/(server|mesh|cli)/" },
    },
    {
      name: "mesh-below-cli",
      comment: "The CLI starts the mesh; the mesh never reaches back into the CLI.",
      severity: "error",
      from: { path: "^services/mesh/" },
      to: { path: "^services/cli/" },
    },
    {
      name: "services-use-public-faces",
      comment:
        "A service uses another through its index.ts (or the types.ts of a port), never its internals.",
      severity: "error",
      from: { path: `^services/(${SERVICES})/`, pathNot: TEST_FILE },
      to: {
        path: `^services/(${SERVICES})/`,
        pathNot: ["^services/$1/", "^services/[^/]+/(index|types)\\.ts$"],
      },
    },
    {
      name: "composition-root-uses-public-faces",
      comment:
        "The composition root wires services through their public faces too; only the engines it " +
        "chooses, loaded lazily with import(), are reached directly.",
      severity: "error",
      from: { path: "^services/(server|mesh|cli)/", pathNot: TEST_FILE },
      to: {
        path: `^services/(${SERVICES})/`,
        pathNot: "^services/[^/]+/(index|types)\\.ts$",
        dependencyTypesNot: ["dynamic-import"],
      },
    },
  ],
  options: {
    doNotFollow: { path: "node_modules" },
    exclude: { path: "^(gen|node_modules|dist)/" },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: "tsconfig.json" },
  },
};
