#!/usr/bin/env node
// Removes from a node_modules tree the native builds that cannot load on this machine, as the
// image's deps stage does (Dockerfile) after `npm ci --omit=dev`:
// - prebuilds/<platform>-<arch>/ folders of other platforms or architectures (node-gyp-build's
//   layout: @signalapp/libsignal-client ships six, about 25 MB each);
// - *.musl.node files on a glibc system and *.glibc.node on a musl one (lmdb, msgpackr-extract).
// npm already installs only this platform's optional packages (@lmdb/lmdb-linux-x64 and the like).
//
//   node scripts/prune-native.mjs <node_modules> [--platform linux] [--arch x64] [--libc glibc]
//
// The defaults are this process's own platform, architecture and C library; it prints what it
// removed and how much.
import { readdirSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const at = args.indexOf(`--${name}`);
  return at === -1 ? fallback : args[at + 1];
};
const tree = args.find((a, i) => !a.startsWith("--") && !args[i - 1]?.startsWith("--"));
if (tree === undefined) {
  console.error(
    "usage: node scripts/prune-native.mjs <node_modules> [--platform p] [--arch a] [--libc glibc|musl]",
  );
  process.exit(2);
}
const platform = option("platform", process.platform);
const arch = option("arch", process.arch);
// Node reports the glibc version it runs on; there is none on musl (Alpine).
const libc = option("libc", process.report.getReport().header.glibcVersionRuntime ? "glibc" : "musl");
const foreignLibc = libc === "glibc" ? ".musl." : ".glibc.";

/** Whether a prebuilds/ folder name (node-gyp-build: "linux-x64", "darwin-x64+arm64") is this platform's. */
function ours(name) {
  const [p, archs = ""] = name.split("-");
  return p === platform && archs.split("+").includes(arch);
}

function size(path) {
  const s = statSync(path);
  if (!s.isDirectory()) return s.size;
  let total = 0;
  for (const e of readdirSync(path)) total += size(join(path, e));
  return total;
}

const removed = [];
function remove(path) {
  removed.push({ path, bytes: size(path) });
  rmSync(path, { recursive: true, force: true });
}

function walk(dir) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isSymbolicLink()) continue;
    if (entry.isDirectory()) {
      if (entry.name === "prebuilds") {
        for (const build of readdirSync(path, { withFileTypes: true })) {
          if (build.isDirectory() && !ours(build.name)) remove(join(path, build.name));
        }
      }
      walk(path);
    } else if (entry.name.endsWith(".node") && entry.name.includes(foreignLibc)) {
      remove(path);
    }
  }
}

walk(tree);
for (const r of removed) console.log(`removed ${r.path} (${(r.bytes / 1048576).toFixed(1)} MiB)`);
const total = removed.reduce((sum, r) => sum + r.bytes, 0);
console.log(
  `prune-native: kept ${platform}-${arch} (${libc}) builds; removed ${removed.length} (${(total / 1048576).toFixed(1)} MiB)`,
);
