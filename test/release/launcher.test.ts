import assert from "node:assert/strict";
import { copyFile, mkdir, mkdtemp, rm, symlink, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { runNode } from "../helpers/process.js";

// bin/switchboard.js chooses what to run: the build in dist/ when it is current (or when there
// are no sources, as in the image), else the sources through tsx. Checked in a copy of the layout
// whose "program" says which one ran.

const root = new URL("../..", import.meta.url).pathname;

describe("bin/switchboard.js", () => {
  let tmp: string;
  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), "switchboard-launcher-"));
  });
  after(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  /** A checkout-like tree: bin/, optionally sources, a build (with its stamp) and node_modules. */
  async function layout(
    name: string,
    parts: { sources?: boolean; build?: { sourcesAsOf: number } | "no stamp"; nodeModules?: boolean },
  ): Promise<string> {
    const dir = join(tmp, name);
    await mkdir(join(dir, "bin"), { recursive: true });
    for (const file of ["switchboard.js", "build-state.js"])
      await copyFile(join(root, "bin", file), join(dir, "bin", file));
    await writeFile(join(dir, "package.json"), JSON.stringify({ type: "module" }));
    if (parts.sources) {
      await mkdir(join(dir, "services/cli"), { recursive: true });
      // A type annotation: only tsx can run this file.
      await writeFile(
        join(dir, "services/cli/main.ts"),
        `const ran: string = "sources";\nconsole.log(ran);\n`,
      );
    }
    if (parts.build !== undefined) {
      await mkdir(join(dir, "dist/services/cli"), { recursive: true });
      await writeFile(join(dir, "dist/services/cli/main.js"), `console.log("compiled");\n`);
      if (parts.build !== "no stamp")
        await writeFile(
          join(dir, "dist/build.json"),
          JSON.stringify({ sourcesAsOf: parts.build.sourcesAsOf }),
        );
    }
    if (parts.nodeModules) await symlink(join(root, "node_modules"), join(dir, "node_modules"));
    return dir;
  }

  const launch = (dir: string) =>
    runNode([join(dir, "bin/switchboard.js")], { cwd: dir, env: { ...process.env } });
  const past = new Date(Date.now() - 3_600_000);

  it("runs the sources through tsx when there is no build", async () => {
    const dir = await layout("no-build", { sources: true, nodeModules: true });
    const r = await launch(dir);
    assert.equal(r.stdout, "sources\n", r.stderr);
  });

  it("runs the build when no source is newer than it", async () => {
    const dir = await layout("current", {
      sources: true,
      build: { sourcesAsOf: Date.now() },
      nodeModules: true,
    });
    await utimes(join(dir, "services/cli/main.ts"), past, past);
    const r = await launch(dir);
    assert.equal(r.stdout, "compiled\n", r.stderr);
  });

  it("runs the sources when one changed after the build, or the build has no stamp", async () => {
    const stale = await layout("stale", {
      sources: true,
      build: { sourcesAsOf: past.getTime() - 1000 },
      nodeModules: true,
    });
    assert.equal((await launch(stale)).stdout, "sources\n");
    const unstamped = await layout("unstamped", { sources: true, build: "no stamp", nodeModules: true });
    await utimes(join(unstamped, "services/cli/main.ts"), past, past);
    assert.equal((await launch(unstamped)).stdout, "sources\n");
  });

  it("runs the build of a release, which has no sources and no tsx", async () => {
    const dir = await layout("release", { build: "no stamp" });
    const r = await launch(dir);
    assert.equal(r.stdout, "compiled\n", r.stderr);
  });

  it("says to build when the build is missing and tsx is not installed", async () => {
    const dir = await layout("production-install", { sources: true });
    const r = await launch(dir);
    assert.equal(r.code, 1);
    assert.equal(r.stdout, "");
    assert.match(
      r.stderr,
      /there is no build in dist\/ and tsx, which runs the sources, is not installed: run `npm run build`/,
    );
  });
});
