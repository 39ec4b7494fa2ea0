import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { Mesh } from "../../services/mesh/launcher.js";
import { freePort, meshPrerequisites } from "../helpers/backends.js";

/**
 * The mesh picks its services' ports free and the processes bind them a moment later; a port
 * another program takes in between (a test running beside this one) must not fail the start.
 * Here the first port picked is one this test already listens on, as if taken in that moment.
 */

const { skip } = meshPrerequisites();

describe("the mesh when a picked port is taken before its process listens", { skip }, () => {
  let dir = "";
  let mesh: Mesh | undefined;
  let held: Server | undefined;

  after(async () => {
    await mesh?.stop();
    await new Promise<void>((resolve) => (held ? held.close(() => resolve()) : resolve()));
    if (dir !== "") await rm(dir, { recursive: true, force: true });
  });

  it("starts the services again on new ports, and every process listens", async () => {
    dir = await mkdtemp(join(tmpdir(), "sb-mesh-ports-"));
    const taken = await freePort();
    const server = createServer();
    held = server;
    await new Promise<void>((resolve) => server.listen(taken, "127.0.0.1", resolve));
    let picks = 0;
    const events: string[] = [];
    mesh = await Mesh.start({
      dir,
      gateways: 1,
      sequencers: 1,
      fanouts: 1,
      relay: false,
      // The gateway's stream port is picked too, and must listen as well.
      gatewayStreamPorts: true,
      // The first pick is the sequencer's port: the one held above.
      pickPort: async () => (picks++ === 0 ? taken : freePort()),
      onEvent: (line) => events.push(line),
    });
    assert.ok(
      events.some((l) => l.includes("starting the services on new ports")),
      `said so: ${events.join(" | ")}`,
    );
    const urls = [...mesh.processes.values()].map((p) => p.url);
    assert.equal(urls.length, 5, `accounts, presence, a sequencer, a fanout and a gateway: ${urls}`);
    assert.ok(!urls.includes(`http://127.0.0.1:${taken}`), "no process on the taken port");
    const health = await fetch(`${mesh.gatewayUrls[0]}/healthz`);
    assert.equal(health.status, 200);
    // The stream port serves device streams only: anything else is sent to the main port.
    assert.equal(mesh.gatewayStreamUrls.length, 1);
    const elsewhere = await fetch(`${mesh.gatewayStreamUrls[0]}/healthz`);
    assert.equal(elsewhere.status, 404);
    assert.match(await elsewhere.text(), /this port serves only/);
  });
});
