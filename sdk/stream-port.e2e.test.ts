import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type Server, type Socket, connect as tcpConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { startServer } from "../services/server/index.js";
import { eventually } from "../test/helpers/inbox.js";
import { SwitchboardClient } from "./client.js";
import type { IncomingEntry } from "./types.js";

const text = (e: IncomingEntry): string => new TextDecoder().decode(e.payload ?? new Uint8Array());

/**
 * `streamUrl`: a client of a deployment with a stream port (SWITCHBOARD_STREAM_PORT,
 * services/server/stream-threads.ts) opens its device stream there and makes every other call on
 * the server URL. The stream port is reached through a counting TCP relay, so the test sees
 * which port the stream used.
 */
describe("SwitchboardClient with a stream port", () => {
  let base: string;
  let server: Awaited<ReturnType<typeof startServer>>;
  let relay: Server;
  let relayUrl: string;
  let relayed = 0;
  const sockets = new Set<Socket>();
  const clients: SwitchboardClient[] = [];

  before(async () => {
    base = await mkdtemp(join(tmpdir(), "sb-sdk-stream-port-"));
    server = await startServer({
      dataDir: join(base, "server"),
      port: 0,
      streamPort: 0,
      logLevel: "silent",
      accountLimits: { registrationsPerAddressPerHour: 0, registrationsPerHour: 0 },
      env: { ...process.env, SWITCHBOARD_MEDIA_PORT: "0" },
    });
    const target = new URL(server.streamUrl!);
    relay = createServer((down) => {
      const up = tcpConnect(Number(target.port), target.hostname);
      for (const s of [down, up]) {
        sockets.add(s);
        s.on("close", () => sockets.delete(s));
        s.on("error", () => {});
      }
      down.on("data", (chunk: Buffer) => {
        relayed += chunk.length;
        up.write(chunk);
      });
      up.pipe(down);
      down.on("close", () => up.destroy());
      up.on("close", () => down.destroy());
    });
    await new Promise<void>((resolve) => relay.listen(0, "127.0.0.1", resolve));
    const address = relay.address();
    if (address === null || typeof address === "string") throw new Error("the relay has no port");
    relayUrl = `http://127.0.0.1:${address.port}`;
  });

  after(async () => {
    for (const c of clients) await c.close();
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => relay.close(() => resolve()));
    await server.close();
    await rm(base, { recursive: true, force: true });
  });

  async function user(name: string, streamUrl?: string): Promise<SwitchboardClient> {
    const client = await SwitchboardClient.register({
      serverUrl: server.url,
      ...(streamUrl !== undefined && { streamUrl }),
      profileDir: join(base, `profile-${name}`),
      username: `${name}_${clients.length}`,
      encryption: false,
      backoffBaseMs: 20,
      backoffCapMs: 200,
    });
    clients.push(client);
    return client;
  }

  it("opens the stream on the stream port and talks to a client on the main port, in order", async () => {
    const alice = await user("alice", relayUrl);
    const bob = await user("bob");
    const { conversationId } = await alice.openDirect(bob.userId);
    // Registration, the conversation and key calls went to the main port: nothing relayed yet.
    assert.equal(relayed, 0);
    const got: string[] = [];
    bob.on("entry", (e) => {
      if (e.kind === "message") got.push(text(e));
    });
    await Promise.all([alice.connect(), bob.connect()]);
    assert.ok(relayed > 0, "alice's stream did not go through the stream port");
    for (let i = 0; i < 10; i++) await alice.send(conversationId, `m${i}`);
    await eventually(
      () => got.length === 10,
      () => `bob has ${got.length}`,
    );
    assert.deepEqual(
      got,
      Array.from({ length: 10 }, (_, i) => `m${i}`),
    );
  });
});
