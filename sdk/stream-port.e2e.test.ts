import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type Server, type Socket, connect as tcpConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { freePort } from "../services/mesh/servers.js";
import { startServer } from "../services/server/index.js";
import { within } from "../test/helpers/expect.js";
import { eventually } from "../test/helpers/inbox.js";
import { SwitchboardClient } from "./client.js";
import type { IncomingEntry, StreamFallback } from "./types.js";

const text = (e: IncomingEntry): string => new TextDecoder().decode(e.payload ?? new Uint8Array());

/** A TCP relay to the server's stream port that counts the connections and bytes of devices through it. */
class CountingRelay {
  relayed = 0;
  connections = 0;
  readonly server: Server;
  private readonly sockets = new Set<Socket>();

  constructor(target: URL) {
    this.server = createServer((down) => {
      this.connections++;
      const up = tcpConnect(Number(target.port), target.hostname);
      for (const s of [down, up]) {
        this.sockets.add(s);
        s.on("close", () => this.sockets.delete(s));
        s.on("error", () => {});
      }
      down.on("data", (chunk: Buffer) => {
        this.relayed += chunk.length;
        up.write(chunk);
      });
      up.pipe(down);
      down.on("close", () => up.destroy());
      up.on("close", () => down.destroy());
    });
  }

  /** Listens on `port` (0: any free one) and answers the relay's URL. */
  async listen(port = 0): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(port, "127.0.0.1", resolve));
    const address = this.server.address();
    if (address === null || typeof address === "string") throw new Error("the relay has no port");
    return `http://127.0.0.1:${address.port}`;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    if (this.server.listening) await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/**
 * `streamUrl`: a client of a deployment with a stream port (SWITCHBOARD_STREAM_PORT,
 * services/server/stream-threads.ts) opens its device stream there and makes every other call on
 * the server URL. The stream port is reached through a counting TCP relay, so the test sees
 * which port the stream used; without the stream port, the stream opens on the server URL
 * (StreamFallback).
 */
describe("SwitchboardClient with a stream port", () => {
  let base: string;
  let server: Awaited<ReturnType<typeof startServer>>;
  const relays: CountingRelay[] = [];
  const silentSockets = new Set<Socket>();
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
  });

  after(async () => {
    for (const c of clients) await c.close();
    for (const r of relays) await r.close();
    await server.close();
    await rm(base, { recursive: true, force: true });
  });

  function relay(): CountingRelay {
    const r = new CountingRelay(new URL(server.streamUrl!));
    relays.push(r);
    return r;
  }

  async function user(
    name: string,
    streamUrl?: string,
    streamFallback?: StreamFallback,
    more: { serverUrl?: string; learnStreamUrl?: boolean } = {},
  ): Promise<SwitchboardClient> {
    const client = await SwitchboardClient.register({
      serverUrl: more.serverUrl ?? server.url,
      ...(streamUrl !== undefined && { streamUrl }),
      ...(streamFallback !== undefined && { streamFallback }),
      ...(more.learnStreamUrl !== undefined && { learnStreamUrl: more.learnStreamUrl }),
      profileDir: join(base, `profile-${name}`),
      username: `${name}_${clients.length}`,
      encryption: false,
      backoffBaseMs: 20,
      backoffCapMs: 200,
    });
    clients.push(client);
    return client;
  }

  /** Sends `texts` from `from` to `to` and waits for them to arrive, in order. */
  async function talk(from: SwitchboardClient, to: SwitchboardClient, texts: string[]): Promise<void> {
    const { conversationId } = await from.openDirect(to.userId);
    const got: string[] = [];
    const listener = (e: IncomingEntry) => {
      if (e.kind === "message" && e.conversationId === conversationId) got.push(text(e));
    };
    to.on("entry", listener);
    for (const t of texts) await from.send(conversationId, t);
    await eventually(
      () => got.length === texts.length,
      () => `${got.length} of ${texts.length} arrived`,
    );
    to.off("entry", listener);
    assert.deepEqual(got, texts);
  }

  it("opens the stream on the stream port and talks to a client on the main port, in order", async () => {
    const r = relay();
    const alice = await user("alice", await r.listen());
    const bob = await user("bob");
    await alice.openDirect(bob.userId);
    // Registration, the conversation and key calls went to the main port: nothing relayed yet.
    assert.equal(r.relayed, 0);
    await Promise.all([alice.connect(), bob.connect()]);
    assert.ok(r.relayed > 0, "alice's stream did not go through the stream port");
    await talk(
      alice,
      bob,
      Array.from({ length: 10 }, (_, i) => `m${i}`),
    );
  });

  it("gives up on a stream port that leaves its opening unanswered, and opens on the main port", async () => {
    // A port that takes connections and never answers, as one behind a firewall that drops
    // packets looks to a client: the opening would wait for ever without its own deadline.
    const silent = createServer((socket) => {
      socket.on("error", () => {});
      silentSockets.add(socket);
    });
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    const address = silent.address();
    if (address === null || typeof address === "string") throw new Error("no port");
    try {
      const erin = await user("erin", `http://127.0.0.1:${address.port}`, {
        afterMs: 500,
        openTimeoutMs: 300,
      });
      const frank = await user("frank");
      await within(
        Promise.all([erin.connect(), frank.connect()]),
        10_000,
        "erin's stream did not open on the main port",
      );
      assert.ok(silentSockets.size > 0, "erin never tried the stream port");
      await talk(erin, frank, ["past a silent stream port"]);
    } finally {
      for (const socket of silentSockets) socket.destroy();
      await new Promise<void>((resolve) => silent.close(() => resolve()));
    }
  });

  it("opens the stream on the main port while the stream port cannot be reached, and goes back once it can", async () => {
    // The stream port's address refuses connections: nothing listens there yet.
    const r = relay();
    const port = await freePort();
    const carol = await user("carol", `http://127.0.0.1:${port}`, { afterMs: 300, retryMs: 1_500 });
    const dave = await user("dave");
    // Bounded: a client that never falls back would wait for the stream port for ever.
    await within(
      Promise.all([carol.connect(), dave.connect()]),
      10_000,
      "carol's stream did not open on the main port",
    );
    await talk(carol, dave, ["while the stream port is down"]);
    await talk(dave, carol, ["to carol on the main port"]);
    assert.equal(r.relayed, 0);

    // The port answers again; the next stream opened retryMs after its last failure goes there.
    await r.listen(port);
    await new Promise((resolve) => setTimeout(resolve, 1_600));
    carol.reconnect();
    await eventually(
      () => r.relayed > 0,
      () => "carol's stream did not go back to the stream port",
    );
    await talk(carol, dave, ["back on the stream port"]);
    await talk(dave, carol, ["to carol on the stream port"]);
  });

  it("opens its next stream on the stream port the gateway names (SWITCHBOARD_STREAM_URL)", async () => {
    // A second server whose gateway names its stream port, reached through a relay, in every
    // ready frame. The port is chosen first so that the relay and the URL exist before it starts.
    const port = await freePort();
    const r = new CountingRelay(new URL(`http://127.0.0.1:${port}`));
    relays.push(r);
    const named = await startServer({
      dataDir: join(base, "named-server"),
      port: 0,
      streamPort: port,
      streamUrl: await r.listen(),
      logLevel: "silent",
      accountLimits: { registrationsPerAddressPerHour: 0, registrationsPerHour: 0 },
      env: { ...process.env, SWITCHBOARD_MEDIA_PORT: "0" },
    });
    const ours = clients.length;
    try {
      const gina = await user("gina", undefined, undefined, { serverUrl: named.url });
      const hank = await user("hank", undefined, undefined, { serverUrl: named.url, learnStreamUrl: false });
      await Promise.all([gina.connect(), hank.connect()]);
      // Neither was told of the port before its first stream: both opened on the server URL.
      assert.equal(r.connections, 0);

      const connected = (c: SwitchboardClient) =>
        new Promise<void>((resolve) => {
          const listener = () => {
            c.off("connected", listener);
            resolve();
          };
          c.on("connected", listener);
        });
      const ginaAgain = connected(gina);
      gina.reconnect();
      await within(ginaAgain, 10_000, "gina's stream did not open again");
      assert.ok(r.connections > 0 && r.relayed > 0, "gina's stream did not go through the stream port");
      // hank turned learning off: his stream opens on the server URL again.
      const through = r.connections;
      const hankAgain = connected(hank);
      hank.reconnect();
      await within(hankAgain, 10_000, "hank's stream did not open again");
      assert.equal(r.connections, through);
      await talk(gina, hank, ["over the named stream port"]);
      await talk(hank, gina, ["to gina on the named stream port"]);

      // The app restarts: the profile kept the port, so the first stream opens there.
      await gina.close();
      const beforeRestart = r.connections;
      const ginaLater = await SwitchboardClient.open({
        profileDir: gina.profileDir,
        backoffBaseMs: 20,
        backoffCapMs: 200,
      });
      clients.push(ginaLater);
      await ginaLater.connect();
      assert.ok(
        r.connections > beforeRestart,
        "the first stream after a restart did not open on the stream port",
      );
      await talk(hank, ginaLater, ["to gina after her restart"]);
    } finally {
      for (const c of clients.splice(ours)) await c.close();
      await named.close();
    }
  });
});
