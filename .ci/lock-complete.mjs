// npm 11 writes only some of the other platforms' optional binaries into package-lock.json on
// each install (npm/cli#4828), so a lockfile can look fine here and still change on the next
// install. This fails fast, naming what is missing, instead of letting CI diff it later.
import { readFileSync } from "node:fs";

const lock = JSON.parse(readFileSync(new URL("../package-lock.json", import.meta.url), "utf8"));
const packages = lock.packages ?? {};
const missing = [];
for (const [path, entry] of Object.entries(packages)) {
  for (const dep of Object.keys(entry.optionalDependencies ?? {})) {
    // npm resolves a dependency from the nearest node_modules upwards, as Node does.
    let dir = path;
    let found = false;
    for (;;) {
      if (packages[`${dir ? `${dir}/` : ""}node_modules/${dep}`]) {
        found = true;
        break;
      }
      if (!dir) break;
      const cut = dir.lastIndexOf("/node_modules/");
      dir = cut === -1 ? "" : dir.slice(0, cut);
    }
    if (!found) missing.push(`${path || "(root)"} -> ${dep}`);
  }
}
if (missing.length > 0) {
  console.error(`package-lock.json lacks ${missing.length} optional package(s):`);
  for (const m of missing) console.error(`  ${m}`);
  console.error("Run 'rm -rf node_modules && npm install' until this passes, then commit the lockfile.");
  process.exit(1);
}
