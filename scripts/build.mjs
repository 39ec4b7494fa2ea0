#!/usr/bin/env node
// `npm run build`: compiles gen/, services/ and sdk/ to JavaScript in dist/ (tsconfig.build.json),
// into an emptied dist/ so that a deleted source leaves nothing behind, and records in
// dist/build.json when the sources were read: bin/switchboard.js runs the build only while no
// source is newer (a checkout), and always when there are no sources (the image).
//
// Nothing but the compiled modules is read at run time from beside the sources (the CQL schema
// and other assets are TypeScript constants), so nothing else is copied; an asset read with
// readFile next to its module would have to be copied here (and the image check would catch it
// missing only if a command used it).
import { spawnSync } from "node:child_process";
import { rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const dist = join(root, "dist");
// Taken before tsc reads anything: a source saved during the build counts as newer than it.
const sourcesAsOf = Date.now();

rmSync(dist, { recursive: true, force: true });
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
const result = spawnSync(process.execPath, [tsc, "-p", "tsconfig.build.json"], {
  cwd: root,
  stdio: "inherit",
});
if (result.status !== 0) {
  // tsc emits even with type errors; a build that failed must not look current.
  rmSync(dist, { recursive: true, force: true });
  process.exit(result.status ?? 1);
}
writeFileSync(join(dist, "build.json"), `${JSON.stringify({ sourcesAsOf, node: process.version })}\n`);
