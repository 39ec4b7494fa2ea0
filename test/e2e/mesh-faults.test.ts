import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type ClientTuning, SwitchboardClient } from "../../sdk/index.js";
import { Mesh } from "../../services/mesh/launcher.js";
import { replicaOf } from "../../services/sequencer/router.js";
import { meshPrerequisites } from "../helpers/backends.js";
import { eventually } from "../helpers/inbox.js";
import { type ConversationCheck, checkDelivery, type DeviceLog } from "../helpers/mesh-traffic.js";
import { gatewayUrls, type MeshUser, MeshUsers, withFailureDump } from "../helpers/mesh-users.js";

/**
 * Faults of the services a stream depends on, on the distributed mesh (every service its own OS
 * process over a real nats-server and redis-server): the route store restarting empty, and
 * presence, accounts or a sequencer replica down while devices reconnect. Each test waits on
 * deliveries, never on a clock: the deadlines are far above what recovery takes and far below
 * what it took before (entries reached connected devices only when they reconnected).
 */

const SHARDS = 16;
const SEQUENCERS = 2;
const tuning: ClientTuning = {
  backoffBaseMs: 50,
  backoffCapMs: 1_000,
  pingIntervalMs: 5_000,
  deadAfterMs: 15_000,
};
/** How long devices may take to hold what was acknowledged, in milliseconds. */
const DELIVERY_BOUND_MS = 15_000;

const { missing, skip } = meshPrerequisites();

type User = MeshUser;

describe("the mesh when a service a stream depends on fails", { skip }, () => {
  let dir = "";
  let mesh: Mesh | undefined;
  const logLines: string[] = [];
  let users: MeshUsers | undefined;
  let alice: User;
  let bob: User;
  /** Conversations of alice and bob, at least one on each sequencer replica. */
  const conversations: ConversationCheck[] = [];
  /** What was acknowledged, per conversation: client_msg_id to seq. */
  const acked = new Map<string, Map<string, bigint>>();

  before(async () => {
    if (missing.length > 0) {
      throw new Error(
        `CI=true and ${missing.join(" and ")} missing: apt-get install nats-server redis-server`,
      );
    }
    dir = await mkdtemp(join(tmpdir(), "sb-mesh-faults-"));
    users = new MeshUsers(dir, urls, tuning);
    mesh = await Mesh.start({
      dir,
      gateways: 2,
      sequencers: SEQUENCERS,
      fanouts: 1,
      shards: SHARDS,
      env: {
        SWITCHBOARD_SENDS_PER_SECOND: "1000",
        SWITCHBOARD_SEND_BURST: "1000",
        SWITCHBOARD_FRAME_BURST: "1000",
      },
      onLog: (name, line) => {
        logLines.push(`${name} ${line}`);
      },
    });
    [alice, bob] = await Promise.all([newUser("alice"), newUser("bob")]);
    const direct = (await alice.devices[0]!.openDirect(bob.userId)).conversationId;
    conversations.push(check("direct", direct));
    const owners = () => new Set(conversations.map((c) => replicaOf(c.conversationId, SEQUENCERS, SHARDS)));
    for (let g = 0; owners().size < SEQUENCERS; g++) {
      assert.ok(g < 20, "twenty groups all landed on one sequencer replica");
      const id = (await bob.devices[1]!.createGroup(`faults ${g}`, [alice.userId])).conversationId;
      conversations.push(check(`group ${g}`, id));
    }
    for (const c of conversations) acked.set(c.conversationId, new Map());
  });

  after(async () => {
    const keep = process.env.SWITCHBOARD_MESH_TEST_LOG;
    if (keep) await writeFile(keep, `${logLines.join("\n")}\n`);
    await users?.closeAll();
    await mesh?.stop();
    if (dir !== "") await rm(dir, { recursive: true, force: true });
  });

  /** Runs a test body; on failure, appends the processes' warnings and the devices' events. */
  const withLogs = (body: () => Promise<void>) =>
    withFailureDump(
      { lines: () => logLines, users: users!, name: "mesh-faults-failure", warnings: 60 },
      body,
    );

  const urls = gatewayUrls(() => mesh!.gatewayUrls);
  const newUser = (prefix: string) => users!.add(prefix);

  /** Closes a device's client and opens its profile again, on `gateway` (the others as alternates). */
  async function reopen(user: User, index: number, gateway: number): Promise<SwitchboardClient> {
    const old = user.devices[index]!;
    await old.close();
    const client = await SwitchboardClient.open({ profileDir: old.profileDir, ...urls(gateway), ...tuning });
    user.logs[index]!.attach(client);
    user.devices[index] = client;
    void client.connect().catch(() => {});
    return client;
  }

  function check(label: string, conversationId: string): ConversationCheck {
    return {
      label,
      conversationId,
      reader: bob.devices[1]!,
      devices: [...alice.logs, ...bob.logs],
    };
  }

  async function send(from: SwitchboardClient, c: ConversationCheck, text: string): Promise<void> {
    const r = await from.send(c.conversationId, text);
    acked.get(c.conversationId)!.set(r.clientMsgId, r.seq);
  }

  /** The devices among `logs` that do not hold every entry acknowledged in `among`. */
  function missingAt(logs: readonly DeviceLog[], among: readonly ConversationCheck[]): string[] {
    const out: string[] = [];
    for (const c of among) {
      const ids = new Set(acked.get(c.conversationId)!.keys());
      for (const log of logs) {
        const held = new Set(log.in(c.conversationId).map((s) => s.clientMsgId));
        const lacking = [...ids].filter((id) => !held.has(id)).length;
        if (lacking > 0) out.push(`${log.name} lacks ${lacking} in ${c.label}`);
      }
    }
    return out;
  }

  const streamOpens = () => logLines.filter((l) => l.includes('"stream opened"')).length;
  const onReplica = (r: number) =>
    conversations.filter((c) => replicaOf(c.conversationId, SEQUENCERS, SHARDS) === r);

  it("routes survive redis-server restarting empty: connected devices get every entry without reconnecting", async () => {
    await withLogs(async () => {
      for (const c of conversations) await send(alice.devices[0]!, c, `before ${c.label}`);
      const everyone = [...alice.logs, ...bob.logs];
      await eventually(
        () => missingAt(everyone, conversations).length === 0,
        () => `before the fault: ${missingAt(everyone, conversations).join(", ")}`,
      );
      const opensBefore = streamOpens();
      // Sends while Redis is down (they wait in the SDK's outbox) and right after it is back
      // empty, long before a route heartbeat: fanout then finds no route for anyone.
      const restarted = mesh!.restartRedis(1_500);
      const during = conversations.map((c) => send(bob.devices[1]!, c, `during ${c.label}`));
      await restarted;
      for (const c of conversations) await send(alice.devices[0]!, c, `after ${c.label}`);
      await Promise.all(during);
      const ackedAt = Date.now();
      // No send after these: a later entry in the same conversation would expose the gap and
      // hide the fault.
      await eventually(
        () => missingAt(everyone, conversations).length === 0,
        () => `${Date.now() - ackedAt} ms after the acks: ${missingAt(everyone, conversations).join(", ")}`,
        DELIVERY_BOUND_MS,
      );
      assert.equal(streamOpens(), opensBefore, "no device reconnected");
      await checkDelivery(conversations, acked);
    });
  });

  it("presence down: a device reconnects and receives what it is owed; live delivery resumes when presence is back", async () => {
    await withLogs(async () => {
      await mesh!.kill("presence");
      try {
        for (const c of conversations) await send(alice.devices[0]!, c, `presence down ${c.label}`);
        // Today's failure: ready, then the stream ends with "could not read the device's pending
        // entries" because its route cannot be registered, again at every retry.
        await reopen(bob, 0, 0);
        await eventually(
          () => missingAt([bob.logs[0]!], conversations).length === 0,
          () => `with presence down: ${missingAt([bob.logs[0]!], conversations).join(", ")}`,
          DELIVERY_BOUND_MS,
        );
      } finally {
        await mesh!.launch("presence");
      }
      // Back: the reopened stream's route is registered by the gateway's route check, and entries
      // committed while presence was down reach the devices that stayed connected.
      for (const c of conversations) await send(alice.devices[1]!, c, `presence back ${c.label}`);
      await checkDelivery(conversations, acked, DELIVERY_BOUND_MS);
    });
  });

  it("accounts down: devices whose gateway dies move to a gateway that never saw them and receive what they are owed", async () => {
    await withLogs(async () => {
      await mesh!.kill("accounts");
      try {
        // alice's and bob's first devices keep their tokens and fail over to gateway-1, which
        // must ask accounts whether they are still active.
        await mesh!.kill("gateway-0");
        for (const c of conversations) await send(bob.devices[1]!, c, `accounts down ${c.label}`);
        const moved = [alice.logs[0]!, bob.logs[0]!];
        await eventually(
          () => missingAt(moved, conversations).length === 0,
          () => `with accounts down: ${missingAt(moved, conversations).join(", ")}`,
          DELIVERY_BOUND_MS,
        );
      } finally {
        await mesh!.launch("accounts");
        await mesh!.launch("gateway-0");
      }
      for (const c of conversations) await send(alice.devices[1]!, c, `accounts back ${c.label}`);
      await checkDelivery(conversations, acked, DELIVERY_BOUND_MS);
    });
  });

  // The sharded sequencer client answers getSyncState in part when a replica does not answer
  // (GetSyncStateResponse.unanswered_replicas), and the gateway pushes what it has meanwhile.
  it("a sequencer replica down: a device reconnects and receives the live replica's conversations; the others resume when it returns", async () => {
    await withLogs(async () => {
      const live = onReplica(0);
      const dead = onReplica(1);
      await mesh!.kill("sequencer-1");
      let relaunched = false;
      try {
        for (const c of live) await send(alice.devices[1]!, c, `replica down ${c.label}`);
        await reopen(bob, 1, 1);
        await eventually(
          () => missingAt([bob.logs[1]!], live).length === 0,
          () => `with sequencer-1 down: ${missingAt([bob.logs[1]!], live).join(", ")}`,
          DELIVERY_BOUND_MS,
        );
        await mesh!.launch("sequencer-1");
        relaunched = true;
      } finally {
        if (!relaunched) await mesh!.launch("sequencer-1");
      }
      // The reopened stream did not reconnect: the dead replica's conversations resume on it.
      const opens = streamOpens();
      for (const c of dead) await send(alice.devices[1]!, c, `replica back ${c.label}`);
      await checkDelivery(conversations, acked, DELIVERY_BOUND_MS);
      assert.equal(streamOpens(), opens, "no device reconnected");
    });
  });
});
