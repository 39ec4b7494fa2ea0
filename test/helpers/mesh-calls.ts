/**
 * The mesh the cross-gateway call suites run on: started in before(), stopped in after() with
 * every device the suite tracked. Call frames and waits are test/helpers/calls.ts.
 */
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before } from "node:test";
import { Mesh } from "../../services/mesh/launcher.js";
import type { TestDevice } from "./device.js";
import { removeDir } from "./server.js";

/**
 * A mesh of separate processes with two gateways, one sequencer and one fanout (over the test
 * NATS and Redis, on LMDB), started in before() with `env` for every process, and stopped in
 * after() with every device tracked. Each process's log lines are kept, for what the gateways do
 * that devices do not see.
 */
export function twoGatewayMesh(name: string, options: { env?: Record<string, string> } = {}) {
  let dir = "";
  let mesh: Mesh | undefined;
  const devices: TestDevice[] = [];
  const logLines: string[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), `sb-${name}-`));
    mesh = await Mesh.start({
      dir,
      gateways: 2,
      sequencers: 1,
      fanouts: 1,
      ...(options.env === undefined ? {} : { env: options.env }),
      onLog: (from, line) => {
        logLines.push(`${from} ${line}`);
      },
    });
  });
  after(async () => {
    await Promise.all(devices.map((d) => d.close()));
    await mesh?.stop();
    if (dir !== "") await removeDir(dir);
  });

  return {
    /** The two gateways' URLs (after before()). */
    get gateways(): [string, string] {
      if (mesh === undefined) throw new Error("the mesh starts in before()");
      return mesh.gatewayUrls as [string, string];
    },
    /** Closes the devices with the mesh; returns them. */
    track(...ds: TestDevice[]): TestDevice[] {
      devices.push(...ds);
      return ds;
    },
    /** Waits (30 s at most) for a process's log line that holds both `text` and `callId`. */
    async logged(text: string, callId: string): Promise<void> {
      const deadline = Date.now() + 30_000;
      while (!logLines.some((l) => l.includes(text) && l.includes(callId))) {
        if (Date.now() > deadline) throw new Error(`no log line "${text}" for ${callId}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
  };
}
