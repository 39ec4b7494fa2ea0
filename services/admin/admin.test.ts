import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type Client, Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { AdminService } from "../../gen/switchboard/internal/v1/admin_pb.js";
import type { BusEvent } from "../../gen/switchboard/internal/v1/events_pb.js";
import { Accounts } from "../accounts/accounts.js";
import { DirectDelivery, InProcessBus } from "../bus/in-process.js";
import { Tokens } from "../common/auth.js";
import { errorBoundary, toConnectError, wireCodeOf } from "../common/boundary.js";
import { defaultLimits } from "../common/config.js";
import { DomainError } from "../common/errors.js";
import { createLogger } from "../common/log.js";
import { GatewayCore } from "../gateway/gateway.js";
import { Notifier } from "../notification/notifier.js";
import { InMemoryRouteStore } from "../presence/memory.js";
import { Presence } from "../presence/presence.js";
import { Sequencer } from "../sequencer/sequencer.js";
import { type LmdbStoreEngine, openLmdbStore } from "../store/lmdb/engine.js";
import { type AdminDeps, adminService } from "./handler.js";

const log = createLogger({ level: "silent" });

function adminClient(deps: AdminDeps): Client<typeof AdminService> {
  return createClient(
    AdminService,
    // Behind the error boundary, as every process serves it: the handler throws domain errors.
    createRouterTransport((router) => router.service(AdminService, adminService(deps)), {
      router: { interceptors: [errorBoundary(log)] },
    }),
  );
}

async function rejectsWith(promise: Promise<unknown>, code: Code, pattern: RegExp): Promise<void> {
  await assert.rejects(promise, (thrown: unknown) => {
    // A manager called directly throws a domain error; this is what the boundary sends for it.
    const err = thrown instanceof DomainError ? toConnectError(thrown) : thrown;
    assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${String(err)}`);
    assert.equal(err.code, code, `expected ${Code[code]}, got ${Code[err.code]}: ${err.rawMessage}`);
    assert.match(err.rawMessage, pattern);
    return true;
  });
}

/**
 * A gateway whose neighbours answer from memory: enough to open streams (sessions that were
 * never started) and close them, which is all the admin service does with a gateway.
 */
function gatewayCore(bus: InProcessBus): GatewayCore {
  const ok = async () => ({});
  return new GatewayCore({
    id: "gw-test",
    sequencer: { append: async () => ({ results: [] }), updateCursors: ok } as never,
    directory: {} as never,
    presence: { registerRoutes: ok, unregisterRoutes: ok } as never,
    delivery: new DirectDelivery(),
    bus,
    tokens: new Tokens(new Uint8Array(32).fill(1), 3600),
    limits: defaultLimits,
    log,
  });
}

describe("AdminService on in-process managers", () => {
  let dir: string;
  let engine: LmdbStoreEngine;
  let bus: InProcessBus;
  let accounts: Accounts;
  let presence: Presence;
  let sequencer: Sequencer;
  let notifier: Notifier;
  const broadcasts: BusEvent[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "admin-test-"));
    engine = await openLmdbStore({ path: dir });
    bus = new InProcessBus(log);
    bus.onBroadcast((events) => broadcasts.push(...events));
    accounts = new Accounts(engine.accounts, new Tokens(new Uint8Array(32).fill(1), 3600), bus, log, {
      maxDevicesPerUser: 8,
      linkCodeTtlSeconds: 300,
    });
    presence = new Presence(new InMemoryRouteStore(), bus, log, { sweepIntervalMs: 60_000 });
    sequencer = new Sequencer(engine.conversations, bus, log, {
      shardCount: 8,
      ownedShards: [1, 3, 5],
      limits: defaultLimits,
    });
    notifier = new Notifier({} as never, [], log);
  });
  after(async () => {
    presence.close();
    await notifier.close();
    await sequencer.close();
    await engine.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("GetStats reports the process and what each of its roles knows", async () => {
    const gateway = gatewayCore(bus);
    try {
      gateway.open({
        userId: "u_00000000000000000000000001",
        deviceId: "dv_00000000000000000000000001",
        expiresAtMs: 0,
      });
      gateway.open({
        userId: "u_00000000000000000000000001",
        deviceId: "dv_00000000000000000000000002",
        expiresAtMs: 0,
      });
      gateway.open({
        userId: "u_00000000000000000000000001",
        deviceId: "dv_00000000000000000000000002",
        expiresAtMs: 0,
      });
      gateway.metrics.floodClosures = 3;
      const admin = adminClient({
        instanceId: "one",
        roles: ["gateway", "sequencer", "notification"],
        startedAtMs: 1_000,
        now: () => 61_000,
        gateway,
        sequencer,
        notifier,
      });
      const s = await admin.getStats({});
      assert.equal(s.instanceId, "one");
      assert.deepEqual(s.roles, ["gateway", "sequencer", "notification"]);
      assert.equal(s.uptimeMs, 60_000n);
      assert.ok((s.process?.rssBytes ?? 0n) > 0n);
      assert.equal(s.process?.nodeVersion, process.version);
      assert.equal(s.gateway?.streams, 3);
      assert.equal(s.gateway?.devices, 2);
      assert.equal(s.gateway?.draining, false);
      assert.equal(s.gateway?.counters.floodClosures, 3n);
      assert.equal(s.gateway?.counters.replacedStreams, 0n);
      assert.deepEqual(s.sequencer?.ownedShards, [1, 3, 5]);
      assert.equal(s.sequencer?.outboxSize, 0);
      assert.deepEqual(Object.keys(s.sequencer?.outboxCounters ?? {}).sort(), [
        "deferred",
        "dropped",
        "failures",
        "republished",
      ]);
      assert.equal(s.notifier?.pending, 0);
      assert.equal(s.notifier?.counters.delivered, 0n);
    } finally {
      await gateway.drain();
    }
    // A process without those roles says nothing about them.
    const bare = await adminClient({
      instanceId: "two",
      roles: ["fanout"],
      startedAtMs: Date.now(),
    }).getStats({});
    assert.equal(bare.gateway, undefined);
    assert.equal(bare.sequencer, undefined);
    assert.equal(bare.notifier, undefined);
    assert.deepEqual(bare.roles, ["fanout"]);
  });

  it("LookupUser lists every device and the live routes, by username or id", async () => {
    const { user, credential } = await accounts.register("admin_alice", "Alice", "phone");
    const { code } = await accounts.createLinkCode(user!.userId, credential!.deviceId);
    const laptop = await accounts.linkDevice(code, "laptop");
    await accounts.revokeDevice(user!.userId, laptop.credential.deviceId);
    await presence.register(
      [{ userId: user!.userId, deviceId: credential.deviceId, gatewayId: "gw-7", sessionId: "s-1" }],
      30_000,
    );
    const admin = adminClient({
      instanceId: "all",
      roles: ["accounts", "presence"],
      startedAtMs: 0,
      accounts,
      presence,
    });
    for (const query of ["admin_alice", user!.userId]) {
      const r = await admin.lookupUser({ user: query });
      assert.equal(r.user?.userId, user!.userId);
      assert.equal(r.user?.username, "admin_alice");
      assert.deepEqual(
        r.devices.map((d) => [d.deviceId, d.name, d.revokedAtMs > 0n]),
        [
          [credential.deviceId, "phone", false],
          [laptop.credential.deviceId, "laptop", true],
        ],
      );
      assert.equal(r.presenceKnown, true);
      assert.equal(r.online, true);
      assert.deepEqual(
        r.routes.map((x) => [x.deviceId, x.gatewayId, x.sessionId]),
        [[credential.deviceId, "gw-7", "s-1"]],
      );
      assert.deepEqual(r.missingRoles, []);
    }
    await rejectsWith(admin.lookupUser({ user: "nobody_here" }), Code.NotFound, /no user "nobody_here"/);
    await rejectsWith(admin.lookupUser({ user: "Not A Name!" }), Code.InvalidArgument, /username/);
    await rejectsWith(admin.lookupUser({ user: "" }), Code.InvalidArgument, /required/);
  });

  it("LookupUser answers the part its roles hold, and names the role to ask otherwise", async () => {
    const { user, credential } = await accounts.register("admin_bob", "", "phone");
    await presence.register(
      [{ userId: user!.userId, deviceId: credential.deviceId, gatewayId: "gw-1", sessionId: "s-9" }],
      30_000,
    );
    const onlyAccounts = adminClient({ instanceId: "acc-0", roles: ["accounts"], startedAtMs: 0, accounts });
    const a = await onlyAccounts.lookupUser({ user: "admin_bob" });
    assert.equal(a.devices.length, 1);
    assert.equal(a.presenceKnown, false);
    assert.deepEqual(a.missingRoles, ["presence"]);

    const onlyPresence = adminClient({ instanceId: "pres-0", roles: ["presence"], startedAtMs: 0, presence });
    const p = await onlyPresence.lookupUser({ user: user!.userId });
    assert.equal(p.user, undefined);
    assert.equal(p.presenceKnown, true);
    assert.equal(p.routes[0]?.sessionId, "s-9");
    assert.deepEqual(p.missingRoles, ["accounts"]);
    await rejectsWith(onlyPresence.lookupUser({ user: "admin_bob" }), Code.FailedPrecondition, /by id only/);

    const gatewayOnly = adminClient({ instanceId: "gw-3", roles: ["gateway"], startedAtMs: 0 });
    await rejectsWith(
      gatewayOnly.lookupUser({ user: "admin_bob" }),
      Code.FailedPrecondition,
      /accounts role .* or the presence role .*runs gateway/,
    );
  });

  it("RevokeDevice revokes by device id alone and broadcasts the revocation", async () => {
    const { user, credential } = await accounts.register("admin_carol", "", "phone");
    const admin = adminClient({ instanceId: "acc", roles: ["accounts"], startedAtMs: 0, accounts });
    broadcasts.length = 0;
    const r = await admin.revokeDevice({ deviceId: credential.deviceId });
    assert.equal(r.device?.deviceId, credential.deviceId);
    assert.equal(r.device?.userId, user!.userId);
    assert.ok((r.device?.revokedAtMs ?? 0n) > 0n);
    assert.equal(r.alreadyRevoked, false);
    assert.ok(
      broadcasts.some(
        (e) => e.event.case === "deviceRevoked" && e.event.value.deviceId === credential.deviceId,
      ),
      "gateways are told to close the device's streams",
    );
    const again = await admin.revokeDevice({ deviceId: credential.deviceId });
    assert.equal(again.alreadyRevoked, true);
    assert.equal(again.device?.revokedAtMs, r.device?.revokedAtMs);
    await rejectsWith(
      accounts.createToken(credential.deviceId, credential.deviceSecret),
      Code.Unauthenticated,
      /revoked/,
    );
    await rejectsWith(
      admin.revokeDevice({ deviceId: "dv_zzzzzzzzzzzzzzzzzzzzzzzzzz" }),
      Code.NotFound,
      /no device/,
    );
    await rejectsWith(admin.revokeDevice({ deviceId: "nonsense" }), Code.InvalidArgument, /device_id/);
    await rejectsWith(
      adminClient({ instanceId: "gw-1", roles: ["gateway"], startedAtMs: 0 }).revokeDevice({
        deviceId: credential.deviceId,
      }),
      Code.FailedPrecondition,
      /needs the accounts role; this process \(gw-1\) runs gateway/,
    );
  });

  it("DrainGateway marks the process not ready, closes every stream and refuses new ones", async () => {
    const gateway = gatewayCore(bus);
    let notReady = 0;
    try {
      const principal = {
        userId: "u_00000000000000000000000001",
        deviceId: "dv_00000000000000000000000001",
        expiresAtMs: 0,
      };
      const sessions = [
        gateway.open(principal),
        gateway.open({ ...principal, deviceId: "dv_00000000000000000000000003" }),
      ];
      const admin = adminClient({
        instanceId: "gw-test",
        roles: ["gateway"],
        startedAtMs: 0,
        gateway,
        markNotReady: () => notReady++,
      });
      const r = await admin.drainGateway({});
      assert.equal(r.instanceId, "gw-test");
      assert.equal(r.closedStreams, 2);
      assert.equal(r.alreadyDraining, false);
      assert.equal(notReady, 1);
      assert.ok(sessions.every((s) => s.isClosed));
      assert.equal(gateway.streamCount, 0);
      assert.equal(gateway.isDraining, true);
      assert.throws(
        () => gateway.open(principal),
        (err: unknown) => wireCodeOf(err) === Code.Unavailable,
      );
      const again = await admin.drainGateway({});
      assert.equal(again.closedStreams, 0);
      assert.equal(again.alreadyDraining, true);
      assert.equal((await admin.getStats({})).gateway?.draining, true);
      await rejectsWith(
        adminClient({ instanceId: "acc", roles: ["accounts"], startedAtMs: 0 }).drainGateway({}),
        Code.FailedPrecondition,
        /needs the gateway role/,
      );
    } finally {
      // The process's own shutdown still works after an operator's drain.
      await gateway.drain();
    }
  });

  it("GetStats counts each open stream once, through replaced streams and repeated detaches", async () => {
    const gateway = gatewayCore(bus);
    const admin = adminClient({ instanceId: "gw-test", roles: ["gateway"], startedAtMs: 0, gateway });
    const streams = async () => (await admin.getStats({})).gateway?.streams;
    try {
      const principal = {
        userId: "u_00000000000000000000000001",
        deviceId: "dv_00000000000000000000000001",
        expiresAtMs: 0,
      };
      const other = { ...principal, deviceId: "dv_00000000000000000000000003" };
      // One more than a device may hold: the oldest is replaced (closed and detached).
      const first = Array.from({ length: defaultLimits.maxConnectionsPerDevice + 1 }, () =>
        gateway.open(principal),
      );
      const second = gateway.open(other);
      assert.ok(first[0]!.isClosed);
      assert.equal(await streams(), defaultLimits.maxConnectionsPerDevice + 1);

      // A stream detached twice (its close and a late clean-up) is counted down once.
      gateway.detach(second);
      gateway.detach(second);
      gateway.detach(first[0]!);
      assert.equal(await streams(), defaultLimits.maxConnectionsPerDevice);
    } finally {
      await gateway.drain();
    }
    assert.equal(await streams(), 0);
  });
});
