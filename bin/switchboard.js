#!/usr/bin/env node
// The `switchboard` command. Runs the compiled build when there is one (`npm run build`, as in
// the container image); otherwise compiles the TypeScript sources on the fly with tsx.
import { existsSync } from "node:fs";

const compiled = new URL("../dist/services/cli/main.js", import.meta.url);
if (existsSync(compiled)) {
  await import(compiled.href);
} else {
  const { register } = await import("tsx/esm/api");
  register();
  await import(new URL("../services/cli/main.ts", import.meta.url).href);
}
