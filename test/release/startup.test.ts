import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { runNode } from "../helpers/process.js";

// Each CLI command starts in well under half a second (docs/benchmarks.md) because defining the
// commands loads only commander and small modules; the server, the SDK client with libsignal,
// the configuration schemas and telemetry load inside the actions that need them. This checks
// what `switchboard` loads to print help, not how long it takes: a static import of one of these
// at the top of a module on the start-up path fails it.

const root = new URL("../..", import.meta.url).pathname;
const trace = join(root, "test/helpers/module-trace.mjs");

/** Modules that only an action may load, by a part of their resolved URL. */
const HEAVY = [
  "/node_modules/@signalapp/libsignal-client/",
  "/node_modules/@opentelemetry/",
  "/node_modules/zod/",
  "/node_modules/lmdb/",
  "/node_modules/pino/",
  "/node_modules/cassandra-driver/",
  "/node_modules/ioredis/",
  "/node_modules/nats/",
  // WebRTC and the audio codecs: `call` and `answer` only.
  "/node_modules/werift/",
  "/node_modules/wavefile/",
  "/sdk/cli/call/",
  "/services/server/",
  "/services/mesh/",
  "/sdk/client.",
  "/sdk/e2ee.",
];

describe("CLI start-up loads no heavy module", () => {
  let tmp: string;
  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), "switchboard-startup-"));
  });
  after(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  const commands = [
    ["--help"],
    ["--version"],
    ["start", "--help"],
    ["send", "--help"],
    ["call", "--help"],
    ["admin", "stats", "--help"],
  ];
  for (const [i, args] of commands.entries()) {
    it(`switchboard ${args.join(" ")}`, async () => {
      const file = join(tmp, `trace-${i}`);
      const result = await runNode(["--import", trace, join(root, "bin/switchboard.js"), ...args], {
        cwd: root,
        env: { ...process.env, MODULE_TRACE_FILE: file },
      });
      assert.equal(result.code, 0, result.stderr);
      const loaded = (await readFile(file, "utf8")).split("\n").filter((url) => url.startsWith("file:"));
      // The trace sees the CLI itself, so an empty or broken trace cannot pass.
      assert.ok(
        loaded.some((url) => /\/services\/cli\/main\.(ts|js)$/.test(url)),
        "the trace did not see services/cli/main",
      );
      const heavy = loaded.filter((url) => HEAVY.some((part) => url.includes(part)));
      assert.deepEqual(
        [...new Set(heavy)],
        [],
        "loaded at start-up; import these inside the command's action",
      );
    });
  }
});
