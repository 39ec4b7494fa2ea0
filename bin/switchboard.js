#!/usr/bin/env node
// The `switchboard` command. It runs the compiled build in dist/ (`npm run build`; the container
// image holds nothing else). In a checkout whose sources changed after that build was made, or
// that has no build, it runs the sources through tsx (a devDependency) instead: a stale dist/
// never runs, and `npm install && npm start` works on a fresh clone without a build.
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = fileURLToPath(new URL("../", import.meta.url));
const compiled = join(root, "dist/services/cli/main.js");
// What scripts/build.mjs compiles (tsconfig.build.json), and where it records when it started.
const SOURCE_DIRS = ["gen", "services", "sdk"];
const STAMP = join(root, "dist/build.json");

/** The newest modification time (ms) of the compiled sources under `dir`; tests are not compiled. */
function newestSource(dir) {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) {
      if (entry.name !== "node_modules") newest = Math.max(newest, newestSource(path));
    } else if (entry.name.endsWith(".ts") && !entry.name.endsWith(".test.ts")) {
      newest = Math.max(newest, statSync(path).mtimeMs);
    }
  }
  return newest;
}

/** True when dist/ holds a build of the sources as they are (or there are no sources: a release). */
function buildIsCurrent() {
  if (!existsSync(compiled)) return false;
  const dirs = SOURCE_DIRS.map((d) => join(root, d)).filter((d) => existsSync(d));
  if (dirs.length === 0) return true;
  let sourcesAsOf;
  try {
    sourcesAsOf = JSON.parse(readFileSync(STAMP, "utf8")).sourcesAsOf;
  } catch {
    return false;
  }
  return typeof sourcesAsOf === "number" && Math.max(...dirs.map(newestSource)) <= sourcesAsOf;
}

if (buildIsCurrent()) {
  await import(pathToFileURL(compiled).href);
} else {
  let register;
  try {
    ({ register } = await import("tsx/esm/api"));
  } catch {
    process.stderr.write(
      `switchboard: ${existsSync(compiled) ? "the build in dist/ is older than the sources" : "there is no build in dist/"}` +
        " and tsx, which runs the sources, is not installed: run `npm run build` (with the devDependencies: `npm install`)\n",
    );
    process.exit(1);
  }
  register();
  await import(pathToFileURL(join(root, "services/cli/main.ts")).href);
}
