// Whether dist/ holds a build of the sources as they are: bin/switchboard.js runs dist/ only
// then, and the test runner (test/run.mjs) builds before the whole suite when it does not.
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";

// What scripts/build.mjs compiles (tsconfig.build.json), and where it records when it started.
const SOURCE_DIRS = ["gen", "services", "sdk"];

/** The compiled entry point of the `switchboard` command under `root`. */
export function compiledEntry(root) {
  return join(root, "dist/services/cli/main.js");
}

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

/** True when dist/ under `root` holds a build of the sources as they are (or there are none: a release). */
export function buildIsCurrent(root) {
  if (!existsSync(compiledEntry(root))) return false;
  const dirs = SOURCE_DIRS.map((d) => join(root, d)).filter((d) => existsSync(d));
  if (dirs.length === 0) return true;
  let sourcesAsOf;
  try {
    sourcesAsOf = JSON.parse(readFileSync(join(root, "dist/build.json"), "utf8")).sourcesAsOf;
  } catch {
    return false;
  }
  return typeof sourcesAsOf === "number" && Math.max(...dirs.map(newestSource)) <= sourcesAsOf;
}
