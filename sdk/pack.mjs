#!/usr/bin/env node
// Builds the SDK package (@switchboard/sdk) and packs it into a tarball an app can `npm install`:
//
//   node sdk/pack.mjs [--out <dir>]     (default: the current directory; prints the tarball's path)
//
// The package is assembled in a temporary directory, never in the working tree: the compiled SDK
// and the generated protobuf modules it imports (gen/, compiled beside it as dist/gen, so the
// tarball needs nothing of this repository), its .d.ts declarations, README.md, the LICENSE of the
// repository (AGPL-3.0-only: the SDK links @signalapp/libsignal-client) and sdk/package.json
// without its scripts. Before packing it checks that every package the compiled code imports is a
// declared dependency, so an import added to the SDK cannot ship undeclared.
import { spawnSync } from "node:child_process";
import {
  copyFileSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { builtinModules, createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const sdk = new URL(".", import.meta.url).pathname;
const root = join(sdk, "..");

/** Every bare import specifier ("pkg", "@scope/pkg/sub") in the .js and .d.ts files under dir. */
export function bareImports(dir) {
  const found = new Map();
  const pattern = /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)["']([^"'.][^"']*)["']/g;
  const walk = (d) => {
    for (const name of readdirSync(d)) {
      const path = join(d, name);
      if (statSync(path).isDirectory()) walk(path);
      else if (name.endsWith(".js") || name.endsWith(".d.ts")) {
        for (const m of readFileSync(path, "utf8").matchAll(pattern)) {
          if (!found.has(m[1])) found.set(m[1], path.slice(dir.length + 1));
        }
      }
    }
  };
  walk(dir);
  return found;
}

/** The package a specifier names, or undefined for Node's own modules. */
export function packageOf(specifier) {
  if (specifier.startsWith("node:") || builtinModules.includes(specifier)) return undefined;
  const parts = specifier.split("/");
  return specifier.startsWith("@") ? parts.slice(0, 2).join("/") : parts[0];
}

function run(command, args, cwd) {
  const result = spawnSync(command, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  if (result.status !== 0) {
    process.stderr.write(result.stdout ?? "");
    process.stderr.write(result.stderr ?? "");
    throw new Error(`${command} ${args.join(" ")} failed (exit ${result.status})`);
  }
  return result.stdout;
}

function main() {
  const args = process.argv.slice(2);
  const outAt = args.indexOf("--out");
  const out = resolve(outAt >= 0 ? args[outAt + 1] : ".");
  const manifest = JSON.parse(readFileSync(join(sdk, "package.json"), "utf8"));
  const stage = mkdtempSync(join(tmpdir(), "switchboard-sdk-pack-"));
  try {
    const tsc = createRequire(join(root, "package.json")).resolve("typescript/bin/tsc");
    run(
      process.execPath,
      [tsc, "-p", join(sdk, "tsconfig.build.json"), "--outDir", join(stage, "dist")],
      root,
    );

    const declared = new Set(Object.keys(manifest.dependencies ?? {}));
    const missing = [];
    for (const [specifier, file] of bareImports(join(stage, "dist"))) {
      const name = packageOf(specifier);
      if (name !== undefined && !declared.has(name)) missing.push(`${specifier} (${file})`);
    }
    if (missing.length > 0) {
      throw new Error(`the SDK imports packages sdk/package.json does not declare: ${missing.join(", ")}`);
    }

    delete manifest.scripts;
    delete manifest.devDependencies;
    writeFileSync(join(stage, "package.json"), `${JSON.stringify(manifest, null, 2)}\n`);
    copyFileSync(join(sdk, "README.md"), join(stage, "README.md"));
    copyFileSync(join(root, "LICENSE"), join(stage, "LICENSE"));

    const packed = JSON.parse(run("npm", ["pack", "--json", "--pack-destination", out], stage));
    console.log(join(out, packed[0].filename));
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}

if (
  process.argv[1] !== undefined &&
  resolve(process.argv[1]) === resolve(new URL(import.meta.url).pathname)
) {
  try {
    main();
  } catch (err) {
    console.error(err instanceof Error ? err.message : err);
    process.exit(1);
  }
}
