import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rename, rm } from "node:fs/promises";
import { homedir } from "node:os";
import { delimiter, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * Servers the tests and the one-machine mesh run that are built from source with `go install`,
 * the way their projects document it, into a per-version cache directory. Pinned here, in one
 * place, so the tests, the mesh and `.ci/run` run the same build; bumping a version is an edit
 * of this table (`go list -m <module>@latest` names the newest the Go module proxy serves).
 *
 * `go install module@version` verifies every module it downloads against the Go checksum
 * database (sum.golang.org) and the module's own go.sum, so a cached binary is what that version's
 * source builds to; the install below refuses to run with those checks turned off.
 */
export const GO_TOOLS = {
  /** A current NATS release (Debian's package is 2.9), what a platform team deploys. */
  "nats-server": { module: "github.com/nats-io/nats-server/v2", version: "v2.15.3" },
  /**
   * MinIO publishes no tagged Go module versions; the proxy serves `@latest` as this
   * pseudo-version (commit 7aac2a2c5b7c of 2026-02-12).
   */
  minio: { module: "github.com/minio/minio", version: "v0.0.0-20260212201848-7aac2a2c5b7c" },
} as const;

/** The name of a pinned tool. */
export type GoTool = keyof typeof GO_TOOLS;

/** The cache the tools are built into: $SWITCHBOARD_CACHE_DIR, else ~/.cache/switchboard. */
export function toolCacheDir(): string {
  return process.env.SWITCHBOARD_CACHE_DIR ?? join(homedir(), ".cache", "switchboard");
}

/** Where the pinned version of a tool lives once built: <cache>/bin/<tool>-<version>/<tool>. */
export function cachedToolPath(tool: GoTool): string {
  return join(toolCacheDir(), "bin", `${tool}-${GO_TOOLS[tool].version}`, tool);
}

/** The first `binary` on PATH, or undefined. */
export function onPath(binary: string): string | undefined {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    if (dir === "") continue;
    const candidate = join(dir, binary);
    if (existsSync(candidate)) return candidate;
  }
  return undefined;
}

/** How to build a tool, for messages that say what is missing. */
export function installHint(tool: GoTool): string {
  return `npx tsx services/mesh/go-tools.ts install ${tool} (needs Go; builds ${GO_TOOLS[tool].module}@${GO_TOOLS[tool].version} into the cache)`;
}

function run(command: string, args: string[], env: NodeJS.ProcessEnv): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env, stdio: ["ignore", "inherit", "inherit"] });
    child.once("error", (err) => reject(new Error(`cannot run ${command}: ${err.message}`, { cause: err })));
    child.once("exit", (code, signal) =>
      code === 0 ? resolve() : reject(new Error(`${command} ${args.join(" ")} failed (${code ?? signal})`)),
    );
  });
}

/**
 * Builds the pinned version of a tool into the cache unless it is there; returns its path and how
 * long the build took (0 when cached). The build goes to a fresh directory renamed into place at
 * the end, so an interrupted build never looks installed.
 */
export async function installGoTool(tool: GoTool): Promise<{ path: string; buildMs: number }> {
  const path = cachedToolPath(tool);
  if (existsSync(path)) return { path, buildMs: 0 };
  const { module, version } = GO_TOOLS[tool];
  const dir = dirname(path);
  await mkdir(dirname(dir), { recursive: true });
  const building = await mkdtemp(`${dir}.building-`);
  // Whatever the environment says, every download is checked against the checksum database.
  const env: NodeJS.ProcessEnv = { ...process.env, GOBIN: building, GOSUMDB: "sum.golang.org" };
  for (const exempt of ["GONOSUMDB", "GOPRIVATE", "GOINSECURE"]) delete env[exempt];
  const started = Date.now();
  try {
    await run("go", ["install", `${module}@${version}`], env);
    await rm(dir, { recursive: true, force: true });
    await rename(building, dir);
  } finally {
    await rm(building, { recursive: true, force: true });
  }
  return { path, buildMs: Date.now() - started };
}

// `npx tsx services/mesh/go-tools.ts install [tool...]`: what .ci/run and a newcomer run.
if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  const [command, ...names] = process.argv.slice(2);
  const tools = (names.length > 0 ? names : Object.keys(GO_TOOLS)) as GoTool[];
  if (command !== "install" || tools.some((t) => !(t in GO_TOOLS))) {
    console.error(`usage: go-tools.ts install [${Object.keys(GO_TOOLS).join("|")}]...`);
    process.exit(2);
  }
  for (const tool of tools) {
    const { path, buildMs } = await installGoTool(tool);
    const how = buildMs === 0 ? "cached" : `built in ${Math.round(buildMs / 1000)} s`;
    console.log(`${tool} ${GO_TOOLS[tool].version}: ${path} (${how})`);
  }
}
