import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createTurnClient, type TurnProtocol } from "werift";
import { CallService } from "../../gen/switchboard/v1/calls_pb.js";
import { turnPassword } from "../../services/gateway/calls/turn.js";
import { type Coturn, coturnMissing, startCoturn } from "../../services/mesh/coturn.js";
import { TestDevice, uniqueName } from "../helpers/device.js";
import { removeDir, type ServerProcess, startServerProcess } from "../helpers/server.js";

const SECRET = "relay-secret-shared-with-the-test-coturn";
const TTL_SECONDS = 600;

/** A TURN allocation on the relay with these credentials (werift's TURN client, over UDP). */
function allocate(relay: Coturn, username: string, password: string): Promise<TurnProtocol> {
  return createTurnClient({ address: ["127.0.0.1", relay.port], username, password });
}

describe("TURN credentials (CallService.GetTurnCredentials) against a real coturn", {
  skip: coturnMissing(),
}, () => {
  let relay: Coturn;
  let server: ServerProcess;
  const devices: TestDevice[] = [];
  const allocations: TurnProtocol[] = [];

  before(async () => {
    relay = await startCoturn(SECRET);
    server = await startServerProcess({
      env: {
        SWITCHBOARD_TURN_URLS: `${relay.url}, stun:127.0.0.1:${relay.port}`,
        SWITCHBOARD_TURN_SECRET: SECRET,
        SWITCHBOARD_TURN_TTL_SECONDS: String(TTL_SECONDS),
      },
    });
  });
  after(async () => {
    await Promise.all(allocations.map((a) => a.close().catch(() => {})));
    await Promise.all(devices.map((d) => d.close()));
    await server?.stop();
    if (server) await removeDir(server.dataDir);
    await relay?.stop();
  });

  const user = async (prefix: string) => {
    const d = await TestDevice.register(server.url, uniqueName(prefix));
    devices.push(d);
    return d;
  };

  it("issues expiring coturn REST API credentials that the relay accepts, and relays data with them", async () => {
    const alice = await user("alice");
    const bob = await user("bob");
    const before = Date.now();
    const issued = await createClient(CallService, alice.transport).getTurnCredentials({});
    const [turn, stun] = issued.iceServers;
    assert.deepEqual(turn?.urls, [relay.url]);
    assert.deepEqual(stun, { ...stun, urls: [`stun:127.0.0.1:${relay.port}`], username: "", credential: "" });
    const [expiry, userId] = turn!.username.split(":");
    assert.equal(userId, alice.userId);
    assert.equal(Number(issued.expiresAtMs), Number(expiry) * 1000);
    assert.ok(Number(expiry) * 1000 >= before + (TTL_SECONDS - 1) * 1000, "expires a TTL from now");
    assert.ok(Number(expiry) * 1000 <= Date.now() + TTL_SECONDS * 1000, "not later than a TTL from now");

    const a = await allocate(relay, turn!.username, turn!.credential);
    allocations.push(a);
    assert.equal(a.relayedAddress[0], "127.0.0.1");
    assert.ok(a.relayedAddress[1] > 0);

    // A second user's allocation, and data from one relayed address to the other through coturn.
    const bobCreds = (await createClient(CallService, bob.transport).getTurnCredentials({})).iceServers[0]!;
    assert.match(bobCreds.username, new RegExp(`^\\d+:${bob.userId}$`));
    const b = await allocate(relay, bobCreds.username, bobCreds.credential);
    allocations.push(b);
    await b.getPermission(a.relayedAddress);
    const received = b.onData.asPromise(10_000);
    await a.sendData(Buffer.from("hello through the relay"), b.relayedAddress);
    const [data, from] = await received;
    assert.equal(data.toString(), "hello through the relay");
    assert.deepEqual([from[0], from[1]], [a.relayedAddress[0], a.relayedAddress[1]]);
  });

  it("the relay refuses a wrong password, a forged username and expired credentials", async () => {
    const carol = await user("carol");
    const issued = (await createClient(CallService, carol.transport).getTurnCredentials({})).iceServers[0]!;
    // Another password for the same username.
    await assert.rejects(
      allocate(relay, issued.username, turnPassword("some-other-secret-entirely", issued.username)),
    );
    // The same password with a longer lifetime written into the username.
    const [expiry] = issued.username.split(":");
    await assert.rejects(allocate(relay, `${Number(expiry) + 86_400}:${carol.userId}`, issued.credential));
    // Correctly signed with the shared secret, but expired a minute ago.
    const expired = `${Math.floor(Date.now() / 1000) - 60}:${carol.userId}`;
    await assert.rejects(allocate(relay, expired, turnPassword(SECRET, expired)));
    // Signed with the secret and still valid: accepted (the refusals above are about the credentials).
    const fresh = `${Math.floor(Date.now() / 1000) + 60}:${carol.userId}`;
    allocations.push(await allocate(relay, fresh, turnPassword(SECRET, fresh)));
  });

  it("refuses an unauthenticated request", async () => {
    const anonymous = new TestDevice(server.url, "", "", "", "nobody");
    devices.push(anonymous);
    const err = await createClient(CallService, anonymous.transport)
      .getTurnCredentials({})
      .then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
    assert.equal(err?.code, Code.Unauthenticated);
  });
});

describe("TURN credentials without relays", () => {
  let server: ServerProcess;
  let device: TestDevice | undefined;
  before(async () => {
    server = await startServerProcess();
  });
  after(async () => {
    await device?.close();
    await server?.stop();
    if (server) await removeDir(server.dataDir);
  });

  it("answers an empty list when no relays are configured", async () => {
    device = await TestDevice.register(server.url, uniqueName("dave"));
    const issued = await createClient(CallService, device.transport).getTurnCredentials({});
    assert.deepEqual(issued.iceServers, []);
    assert.equal(issued.expiresAtMs, 0n);
  });
});
