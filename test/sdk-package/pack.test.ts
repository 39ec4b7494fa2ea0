import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type Finished, runNode } from "../helpers/process.js";
import { type ServerProcess, startServerProcess } from "../helpers/server.js";

// The SDK as an app gets it: `node sdk/pack.mjs` builds the tarball, an empty project installs it
// with npm (its dependencies from the npm cache or the registry), a plain .mjs app on it registers
// two devices and exchanges an end-to-end encrypted message through a server process, once with
// profiles in directories and once in memory, and a TypeScript file type-checks against the
// package's declarations.

const root = new URL("../../", import.meta.url).pathname;
const require = createRequire(join(root, "package.json"));
// npm's own variables from an outer `npm test` describe this repository, not the package or the app.
const env = Object.fromEntries(
  Object.entries(process.env).filter(([k]) => !/^npm_(package|lifecycle)_/.test(k)),
);

/** Runs a command to its end (npm is a shell script on some systems: no shell needed on Linux). */
function run(command: string, args: string[], cwd: string): Promise<Finished> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd, env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    child.on("error", reject);
    child.on("exit", (code) => resolve({ code, stdout, stderr }));
  });
}

function ok(what: string, r: Finished): void {
  assert.equal(r.code, 0, `${what} exited ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`);
}

// A TypeScript app on the package's declarations. The @ts-expect-error lines fail the check if the
// types were missing or `any` (an error that does not happen is an error itself).
const CHECK_TS = `import {
  type IncomingEntry,
  MemoryStorage,
  type ProfileStorage,
  type SendResult,
  SwitchboardClient,
} from "@switchboard/sdk";
import { storageConformance } from "@switchboard/sdk/storage-conformance";

export async function talk(serverUrl: string, storage: ProfileStorage = new MemoryStorage()): Promise<bigint> {
  const client = await SwitchboardClient.register({ serverUrl, storage, username: "typed" });
  client.on("entry", (e: IncomingEntry) => {
    const seq: bigint = e.seq;
    void seq;
  });
  const sent: SendResult = await client.send("c_1", "hi");
  // @ts-expect-error: seqs are bigints, not numbers
  const wrong: number = sent.seq;
  void wrong;
  return sent.seq;
}

// @ts-expect-error: an option the SDK does not have
void SwitchboardClient.open({ profileDir: "/tmp/x", noSuchOption: true });

export const conformance: typeof storageConformance = storageConformance;
`;

const TSCONFIG = {
  compilerOptions: {
    target: "ES2022",
    module: "NodeNext",
    moduleResolution: "NodeNext",
    strict: true,
    noEmit: true,
    types: ["node"],
    skipLibCheck: false,
  },
  files: ["check.ts"],
};

describe("the SDK package (npm pack, installed into an empty project)", () => {
  let base: string;
  let server: ServerProcess;
  let app: string;

  before(async () => {
    base = await mkdtemp(join(tmpdir(), "switchboard-sdk-package-"));
    server = await startServerProcess({ dataDir: join(base, "server") });
    app = join(base, "app");
    await mkdir(app);
    await writeFile(join(app, "package.json"), '{ "name": "app", "private": true, "type": "module" }\n');
  });
  after(async () => {
    await server?.stop();
    if (base !== undefined) await rm(base, { recursive: true, force: true });
  });

  it("packs, installs, and a plain .mjs app exchanges encrypted messages with profiles in files and in memory", async () => {
    const packed = await runNode([join(root, "sdk/pack.mjs"), "--out", base], { cwd: root, env });
    ok("node sdk/pack.mjs", packed);
    const tarball = packed.stdout.trim().split("\n").at(-1) as string;
    assert.match(tarball, /switchboard-sdk-0\.1\.0\.tgz$/);

    // @types/node at the version this repository uses, so the npm cache already holds it.
    const typesNode = JSON.parse(await readFile(require.resolve("@types/node/package.json"), "utf8")).version;
    const installed = await run(
      "npm",
      ["install", "--prefer-offline", "--no-audit", "--no-fund", tarball, `@types/node@${typesNode}`],
      app,
    );
    ok("npm install <tarball>", installed);
    const manifest = JSON.parse(
      await readFile(join(app, "node_modules/@switchboard/sdk/package.json"), "utf8"),
    );
    assert.equal(manifest.license, "AGPL-3.0-only");
    assert.equal(manifest.scripts, undefined, "the published manifest carries no scripts");
    assert.match(await readFile(join(app, "node_modules/@switchboard/sdk/LICENSE"), "utf8"), /AFFERO/);

    await writeFile(join(app, "app.mjs"), await readFile(join(root, "test/sdk-package/app.mjs")));
    for (const mode of ["files", "memory"]) {
      const ran = await runNode(["app.mjs", server.url, mode, join(base, `profiles-${mode}`)], {
        cwd: app,
        env,
      });
      ok(`app.mjs ${mode}`, ran);
      assert.match(ran.stdout, /received: hello from the packed SDK \(encrypted\)/);
    }
  });

  it("type-checks a TypeScript app against the installed declarations", async () => {
    await writeFile(join(app, "check.ts"), CHECK_TS);
    await writeFile(join(app, "tsconfig.json"), `${JSON.stringify(TSCONFIG, null, 2)}\n`);
    const checked = await runNode([require.resolve("typescript/bin/tsc"), "-p", "tsconfig.json"], {
      cwd: app,
      env,
    });
    ok("tsc on the app", checked);
  });
});
