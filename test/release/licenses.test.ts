import assert from "node:assert/strict";
import { copyFile, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { runNode } from "../helpers/process.js";

// The license check (.ci/licenses.mjs) run as CI runs it: on this checkout's production tree, and
// on small installed trees made here whose packages declare what a real package could.

const root = new URL("../..", import.meta.url).pathname;
const checker = join(root, ".ci/licenses.mjs");

/** A project in a temporary directory with these packages installed in its node_modules. */
async function project(
  dir: string,
  own: Record<string, unknown>,
  packages: Record<string, { license?: unknown; licenses?: unknown; dev?: boolean }>,
): Promise<string> {
  const dependencies: Record<string, string> = {};
  const devDependencies: Record<string, string> = {};
  for (const [name, pkg] of Object.entries(packages)) {
    (pkg.dev ? devDependencies : dependencies)[name] = "1.0.0";
    await mkdir(join(dir, "node_modules", name), { recursive: true });
    const { dev: _dev, ...fields } = pkg;
    await writeFile(
      join(dir, "node_modules", name, "package.json"),
      JSON.stringify({ name, version: "1.0.0", ...fields }),
    );
  }
  await writeFile(
    join(dir, "package.json"),
    JSON.stringify({ name: "app", version: "1.0.0", ...own, dependencies, devDependencies }),
  );
  return dir;
}

describe("license check (.ci/licenses.mjs)", () => {
  let tmp: string;
  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), "switchboard-licenses-"));
  });
  after(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  const check = (dir: string) => runNode([checker, "--root", dir], { cwd: dir, env: process.env });

  it("passes on this checkout's production dependencies and lists each with its license", async () => {
    const result = await check(root);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /^@signalapp\/libsignal-client@\S+\s+AGPL-3\.0-only\s+allowed$/m);
    assert.match(result.stdout, /^switchboard@\S+\s+AGPL-3\.0-only\s+ours$/m);
    assert.match(result.stdout, /^web-push@\S+\s+MPL-2\.0\s+exception$/m);
    assert.match(result.stdout, /conflicts: 0$/m);
    // Development tools are not shipped, so they are not listed.
    assert.doesNotMatch(result.stdout, /^typescript@/m);
  });

  it("fails on a production dependency under a conflicting license, naming it", async () => {
    const dir = await project(
      join(tmp, "conflict"),
      { license: "AGPL-3.0-only" },
      {
        fine: { license: "(MIT OR Apache-2.0)" },
        "server-side": { license: "SSPL-1.0" },
        closed: { license: "UNLICENSED" },
        "gpl-two": { license: "GPL-2.0-only" },
        "both-needed": { license: "MIT AND SSPL-1.0" },
      },
    );
    const result = await check(dir);
    assert.equal(result.code, 1, result.stdout);
    assert.match(result.stderr, /server-side@1\.0\.0 \(node_modules\/server-side\) is under SSPL-1\.0/);
    assert.match(result.stderr, /closed@1\.0\.0 .* declares "UNLICENSED", not an SPDX expression/);
    assert.match(result.stderr, /gpl-two@1\.0\.0 .* is under GPL-2\.0-only/);
    assert.match(result.stderr, /both-needed@1\.0\.0 .* is under MIT AND SSPL-1\.0/);
    assert.doesNotMatch(result.stderr, /fine@/);
  });

  it("fails on a package that declares no license, and on a project not under AGPL-3.0-only", async () => {
    const dir = await project(join(tmp, "missing"), { license: "Apache-2.0" }, { silent: {} });
    await mkdir(join(dir, "lib"));
    await writeFile(join(dir, "lib/package.json"), JSON.stringify({ name: "lib", license: "MIT" }));
    const result = await check(dir);
    assert.equal(result.code, 1, result.stdout);
    assert.match(result.stderr, /silent@1\.0\.0 \(node_modules\/silent\) declares no license/);
    assert.match(result.stderr, /^ {2}package\.json declares Apache-2\.0, not AGPL-3\.0-only$/m);
    assert.match(result.stderr, /^ {2}lib\/package\.json declares MIT, not AGPL-3\.0-only$/m);
    assert.match(result.stderr, /LICENSE is missing or is not the GNU AGPL version 3 text/);
  });

  it("passes on allowed licenses, legacy license fields and a conflicting dev-only package", async () => {
    const dir = await project(
      join(tmp, "allowed"),
      { license: "AGPL-3.0-only" },
      {
        legacy: { licenses: [{ type: "MIT" }, { type: "Apache-2.0" }] },
        object: { license: { type: "ISC" } },
        lgpl: { license: "LGPL-2.1-or-later" },
        "gpl-plus": { license: "GPL-2.0+" },
        "test-tool": { license: "SSPL-1.0", dev: true },
      },
    );
    await copyFile(join(root, "LICENSE"), join(dir, "LICENSE"));
    const result = await check(dir);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /^legacy@1\.0\.0\s+\(MIT\) OR \(Apache-2\.0\)\s+allowed$/m);
    assert.doesNotMatch(result.stdout, /test-tool/);
  });
});
