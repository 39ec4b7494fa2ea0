import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { freePort } from "../helpers/backends.js";
import { limits, Rig, reportRecoveries } from "../helpers/fault-rig.js";
import { type ServerProcess, startServerProcess } from "../helpers/server.js";

/**
 * The fault matrix on the one-process server: under continuous traffic it is SIGKILLed three
 * times and restarted on the same data directory, and after each the delivery contract is checked
 * against the log (test/helpers/fault-rig.ts says how). The mesh is fault-matrix.test.ts.
 */

const recoveries = reportRecoveries("one-process");

describe("fault matrix: the one-process server, SIGKILLed three times under traffic", () => {
  let server: ServerProcess | undefined;
  let port = 0;
  let dataDir = "";
  let dir = "";
  let rig: Rig;
  const servers: ServerProcess[] = [];

  /** Starts the server on the same port and data directory. */
  async function start(): Promise<void> {
    server = await startServerProcess({ dataDir, port, env: limits });
    servers.push(server);
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "sb-fault-matrix-one-"));
    dataDir = join(dir, "data");
    port = await freePort();
    await start();
    const url = `http://127.0.0.1:${port}`;
    // Every incarnation's log, in order: an earlier one's stops growing when it is killed.
    const logLines = () => servers.flatMap((s) => s.logs.map((l) => `server ${l}`));
    rig = new Rig(dir, () => ({ serverUrl: url, alternateUrls: [] }), logLines, recoveries);
    await rig.populate();
  });

  after(async () => {
    await rig?.close();
    await server?.kill();
    if (dir !== "") await rm(dir, { recursive: true, force: true });
  });

  for (const n of [1, 2, 3]) {
    it(`SIGKILL ${n} of 3, restarted on the same data directory`, (t) =>
      rig.withLogs(`one-process-${n}`, async () => {
        await rig.faultPhase(
          t,
          `SIGKILL one-process server (${n}/3)`,
          () => server!.kill(),
          () => start(),
        );
      }));
  }
});
