#!/usr/bin/env node
// The license check: every package of the production dependency tree (what the server, the CLI
// and the image ship) must be under a license that may be combined with and conveyed under the
// AGPL-3.0, Switchboard's license (it links @signalapp/libsignal-client, AGPL-3.0-only; README.md
// "License"). Prints each package with its license and a summary by license, and exits 1 naming
// every package that conflicts or declares no license.
//
//   node .ci/licenses.mjs [--root <dir>]     (npm run licenses)
//
// The tree is npm's own view of what is installed (`npm query .prod`: the packages that
// `npm ci --omit=dev` keeps), read from each package's package.json. Development-only packages
// (test and build tools) are not conveyed and not checked.
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import parseSpdx from "spdx-expression-parse";

/**
 * Licenses that may be combined with AGPL-3.0 code and conveyed under it (the FSF's list of
 * GPLv3-compatible licenses; GPLv3 section 13 and AGPLv3 section 13 let the two be combined).
 */
const ALLOWED = new Map([
  ["MIT", "permissive"],
  ["MIT-0", "permissive"],
  ["ISC", "permissive"],
  ["0BSD", "permissive"],
  ["BSD-2-Clause", "permissive"],
  ["BSD-3-Clause", "permissive"],
  ["Apache-2.0", "permissive; compatible with (A)GPL-3.0, not with GPL-2.0"],
  ["BlueOak-1.0.0", "permissive"],
  ["CC0-1.0", "public domain dedication"],
  ["Unlicense", "public domain dedication"],
  ["Python-2.0", "permissive (PSF)"],
  ["Zlib", "permissive"],
  ["AGPL-3.0-only", "the project's own license"],
  ["AGPL-3.0-or-later", "the project's own license, or later"],
  ["GPL-3.0-only", "AGPLv3 section 13 allows combining with GPLv3 works"],
  ["GPL-3.0-or-later", "AGPLv3 section 13 allows combining with GPLv3 works"],
  ["GPL-2.0-or-later", "may be taken as GPL-3.0-or-later"],
  ["LGPL-3.0-only", "GPLv3 plus permissions"],
  ["LGPL-3.0-or-later", "GPLv3 plus permissions"],
  ["LGPL-2.1-only", "section 3 lets it be conveyed under GPL-2.0 or a later version (GPLv3)"],
  ["LGPL-2.1-or-later", "section 3 lets it be conveyed under GPL-2.0 or a later version (GPLv3)"],
]);

/**
 * Packages whose license is not on the list above but was checked by hand: the license string
 * the package declares must match exactly, so a package that changes its license is checked again.
 * MPL-2.0 is GPLv3-compatible (its section 3.3) unless the package marks files "Incompatible With
 * Secondary Licenses" (Exhibit B), which is why it is allowed per package, not as a whole.
 */
const EXCEPTIONS = [
  {
    name: "web-push",
    license: "MPL-2.0",
    reason:
      "MPL-2.0 without an Exhibit B notice (checked in 3.6.7's LICENSE and sources): section 3.3 allows AGPL",
  },
  {
    name: "mediabunny",
    license: "MPL-2.0",
    reason:
      "werift's media containers; MPL-2.0 without an Exhibit B notice (checked in 1.61.0's LICENSE, src and dist): section 3.3 allows AGPL",
  },
];

/** The verdict on one SPDX expression: allowed when every AND branch and some OR branch is. */
function allowed(node) {
  if (node.license !== undefined) {
    // "GPL-2.0+" is the deprecated spelling of -or-later; an exception (WITH) is a further permission.
    const id = node.plus ? `${node.license.replace(/-only$/, "")}-or-later` : node.license;
    return ALLOWED.has(id);
  }
  if (node.conjunction === "and") return allowed(node.left) && allowed(node.right);
  return allowed(node.left) || allowed(node.right);
}

/** The license a package.json declares, as one SPDX expression (the legacy forms too). */
function declared(pkg) {
  const one = (l) => (typeof l === "string" ? l : typeof l?.type === "string" ? l.type : undefined);
  if (pkg.license !== undefined) return one(pkg.license);
  if (Array.isArray(pkg.licenses) && pkg.licenses.length > 0) {
    const ids = pkg.licenses.map(one);
    // The legacy array meant "any of these" (npm's docs read it as OR).
    return ids.every((id) => id !== undefined) ? ids.map((id) => `(${id})`).join(" OR ") : undefined;
  }
  return undefined;
}

/** Checks the production tree under `root`; returns the rows and the problems found. */
function checkLicenses(root) {
  const out = execFileSync("npm", ["query", ".prod"], {
    cwd: root,
    encoding: "utf8",
    maxBuffer: 64 * 1024 * 1024,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const nodes = JSON.parse(out);
  const rows = [];
  const problems = [];
  const seen = new Set();
  for (const node of nodes) {
    // The root and workspace packages are this project (checkProject checks their license).
    const ours = node.location === "" || !node.location.includes("node_modules/");
    const key = `${node.name}@${node.version}`;
    if (seen.has(key)) continue;
    seen.add(key);
    const license = declared(node);
    let verdict;
    if (ours) {
      verdict = license === "AGPL-3.0-only" ? "ours" : undefined;
    } else if (license === undefined) {
      problems.push(`${key} (${node.location}) declares no license`);
    } else {
      const exception = EXCEPTIONS.find((e) => e.name === node.name && e.license === license);
      if (exception !== undefined) verdict = "exception";
      else {
        let parsed;
        try {
          parsed = parseSpdx(license);
        } catch {
          problems.push(`${key} (${node.location}) declares "${license}", not an SPDX expression`);
        }
        if (parsed !== undefined) {
          if (allowed(parsed)) verdict = "allowed";
          else problems.push(`${key} (${node.location}) is under ${license}, which conflicts with AGPL-3.0`);
        }
      }
    }
    rows.push({
      name: node.name,
      version: node.version,
      license: license ?? "(none)",
      verdict: verdict ?? "CONFLICT",
    });
  }
  return { rows, problems };
}

/**
 * The project's own side: LICENSE holds the AGPL-3.0 text, and every package.json of the project
 * outside node_modules (the root's, sdk/'s) declares AGPL-3.0-only, so that metadata, the license
 * file and the README agree.
 */
function checkProject(root) {
  const problems = [];
  const license = join(root, "LICENSE");
  const text = existsSync(license) ? readFileSync(license, "utf8") : "";
  if (!/GNU AFFERO GENERAL PUBLIC LICENSE\s+Version 3, 19 November 2007/.test(text))
    problems.push("LICENSE is missing or is not the GNU AGPL version 3 text");
  const manifests = [];
  const walk = (dir, depth) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      if (
        e.isDirectory() &&
        depth < 2 &&
        !["node_modules", "dist", ".git"].includes(e.name) &&
        !e.name.startsWith(".")
      )
        walk(join(dir, e.name), depth + 1);
      else if (e.name === "package.json") manifests.push(join(dir, e.name));
    }
  };
  walk(root, 0);
  for (const path of manifests) {
    const declared = JSON.parse(readFileSync(path, "utf8")).license;
    if (declared !== "AGPL-3.0-only")
      problems.push(`${relative(root, path)} declares ${declared ?? "no license"}, not AGPL-3.0-only`);
  }
  return problems;
}

function main() {
  const args = process.argv.slice(2);
  const at = args.indexOf("--root");
  const root = resolve(at === -1 ? new URL("..", import.meta.url).pathname : (args[at + 1] ?? "."));
  if (!existsSync(join(root, "node_modules"))) {
    console.error(`licenses: no node_modules in ${root}: run npm ci first`);
    process.exit(1);
  }
  const { rows, problems } = checkLicenses(root);
  problems.push(...checkProject(root));
  rows.sort((a, b) => a.name.localeCompare(b.name));
  const width = Math.max(...rows.map((r) => r.name.length + r.version.length + 1));
  for (const r of rows) console.log(`${`${r.name}@${r.version}`.padEnd(width)}  ${r.license}  ${r.verdict}`);
  const byLicense = new Map();
  for (const r of rows) byLicense.set(r.license, (byLicense.get(r.license) ?? 0) + 1);
  console.log(`\n${"license".padEnd(32)} packages`);
  for (const [license, n] of [...byLicense].sort((a, b) => b[1] - a[1]))
    console.log(`${license.padEnd(32)} ${n}`);
  const project = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
  console.log(`\n${rows.length} production packages of ${project.name}; conflicts: ${problems.length}`);
  if (problems.length > 0) {
    console.error("\nlicenses: what cannot be conveyed under AGPL-3.0-only, or does not say it is:");
    for (const p of problems) console.error(`  ${p}`);
    console.error(
      "Replace the package, or, after checking its license by hand, add it to EXCEPTIONS in .ci/licenses.mjs with the reason.",
    );
    process.exit(1);
  }
}

main();
