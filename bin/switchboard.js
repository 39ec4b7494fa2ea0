#!/usr/bin/env node
// The `switchboard` command. It runs the compiled build in dist/ (`npm run build`; the container
// image holds nothing else). In a checkout whose sources changed after that build was made, or
// that has no build, it runs the sources through tsx (a devDependency) instead: a stale dist/
// never runs, and `npm install && npm start` works on a fresh clone without a build.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { buildIsCurrent, compiledEntry } from "./build-state.js";

const root = fileURLToPath(new URL("../", import.meta.url));
const compiled = compiledEntry(root);

if (buildIsCurrent(root)) {
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
