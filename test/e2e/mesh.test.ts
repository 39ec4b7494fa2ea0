import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type ClientTuning, type PresenceEvent, SwitchboardClient } from "../../sdk/index.js";
import { Mesh } from "../../services/mesh/launcher.js";
import { replicaOf } from "../../services/sequencer/router.js";
import { meshPrerequisites } from "../helpers/backends.js";
import { eventually } from "../helpers/inbox.js";
import {
  type ConversationCheck,
  checkDelivery,
  everyDeviceCaughtUp,
  type SendStream,
  TrafficGenerator,
} from "../helpers/mesh-traffic.js";
import { gatewayUrls, type MeshUser, MeshUsers, withFailureDump } from "../helpers/mesh-users.js";

/**
 * The distributed topology as Kubernetes runs it, on one machine: every service its own OS process
 * (two gateways, two sequencer replicas, two fanout workers, accounts, presence) over a real
 * nats-server with JetStream and a real redis-server, both owned by the test so they can be
 * killed. Devices are SDK clients, each user with one device on each gateway.
 */

const SHARDS = 16;
const SEQUENCERS = 2;
// Quick reconnects and a quick dead-stream verdict keep fault recovery within the deadlines;
// everything else is the SDK's default behaviour.
const tuning: ClientTuning = {
  backoffBaseMs: 50,
  backoffCapMs: 1_000,
  pingIntervalMs: 5_000,
  deadAfterMs: 15_000,
};

const { missing, skip } = meshPrerequisites();

/** A user with one device on each gateway. */
type User = MeshUser;

describe("the distributed mesh, one OS process per service", { skip }, () => {
  let dir = "";
  let mesh: Mesh | undefined;
  // Every line every process logged, prefixed with its name, printed when a test fails.
  const logLines: string[] = [];
  let users: MeshUsers | undefined;
  // How many send streams the fault phases run; progress is measured in rounds of it.
  let streamCount = 0;

  before(async () => {
    if (missing.length > 0) {
      throw new Error(
        `CI=true and ${missing.join(" and ")} missing: apt-get install nats-server redis-server`,
      );
    }
    dir = await mkdtemp(join(tmpdir(), "sb-mesh-"));
    users = new MeshUsers(dir, urls, tuning);
    mesh = await Mesh.start({
      dir,
      gateways: 2,
      sequencers: SEQUENCERS,
      fanouts: 2,
      shards: SHARDS,
      env: {
        // The generator's pace is far below these; they are here so that a retry storm after an
        // outage is not mistaken for flooding.
        SWITCHBOARD_SENDS_PER_SECOND: "1000",
        SWITCHBOARD_SEND_BURST: "1000",
        SWITCHBOARD_FRAME_BURST: "1000",
      },
      onLog: (name, line) => {
        logLines.push(`${name} ${line}`);
      },
    });
  });

  after(async () => {
    // For a look at a passing run: SWITCHBOARD_MESH_TEST_LOG=/path keeps every process's log there.
    const keep = process.env.SWITCHBOARD_MESH_TEST_LOG;
    if (keep) await writeFile(keep, `${logLines.join("\n")}\n`);
    await users?.closeAll();
    await mesh?.stop();
    if (dir !== "") await rm(dir, { recursive: true, force: true });
  });

  /** Runs a test body; on failure, appends the processes' warnings and their last lines. */
  const withLogs = (body: () => Promise<void>) =>
    withFailureDump(
      {
        lines: () => logLines,
        users: users!,
        name: "mesh-failure",
        warnings: 150,
        tailsOf: mesh?.processes.keys() ?? [],
      },
      body,
    );

  const urls = gatewayUrls(() => mesh!.gatewayUrls);
  const newUser = (prefix: string) => users!.add(prefix);

  /** Closes a device's client and opens its profile again on the same gateway. */
  async function reopen(user: User, index: number): Promise<void> {
    const old = user.devices[index]!;
    const client = await SwitchboardClient.open({ profileDir: old.profileDir, ...urls(index), ...tuning });
    user.logs[index]!.attach(client);
    user.devices[index] = client;
    await client.connect();
  }

  function check(label: string, conversationId: string, members: readonly User[]): ConversationCheck {
    return {
      label,
      conversationId,
      reader: members[0]!.devices[1]!,
      devices: members.flatMap((m) => m.logs),
    };
  }

  const allReceipts = (c: SwitchboardClient) => {
    const seen: Array<{ userId: string; kind: string; upToSeq: bigint; conversationId: string }> = [];
    c.on("receipt", (r) => {
      seen.push(r);
    });
    return seen;
  };

  type Receipt = ReturnType<typeof allReceipts>[number];
  /** Waits until a receipt matching `wanted` was seen, naming what was seen if none comes. */
  const receiptSeen = (receipts: Receipt[], wanted: (r: Receipt) => boolean, what: string) =>
    eventually(
      () => receipts.some(wanted),
      () => `${what}: ${JSON.stringify(receipts, (_, v) => (typeof v === "bigint" ? `${v}` : v))}`,
    );

  describe("without faults", () => {
    let alice: User;
    let bob: User;
    let carol: User;

    before(async () => {
      [alice, bob, carol] = await Promise.all([newUser("alice"), newUser("bob"), newUser("carol")]);
    });

    it("delivers 1:1 and group messages across gateways to every device, with receipts and typing", async () => {
      await withLogs(async () => {
        const [a0, a1] = alice.devices as [SwitchboardClient, SwitchboardClient];
        const [b0, b1] = bob.devices as [SwitchboardClient, SwitchboardClient];
        const receiptsA0 = allReceipts(a0);
        const receiptsA1 = allReceipts(a1);
        const direct = (await a0.openDirect(bob.userId)).conversationId;
        const group = (await b1.createGroup("mesh", [alice.userId, carol.userId])).conversationId;

        // a0 is on gateway-0, bob's devices on both: each send crosses processes.
        const sent = [];
        for (let i = 0; i < 5; i++) sent.push(await a0.send(direct, `hello ${i}`));
        const reply = await b0.send(direct, "hi alice");
        const groupSent = [];
        for (const [i, d] of [a1, b0, carol.devices[1]!].entries())
          groupSent.push(await d.send(group, `group ${i}`));

        const ordered = sent.map((r) => r.seq);
        assert.deepEqual(
          ordered,
          [...ordered].sort((x, y) => Number(x - y)),
          "one device's sends commit in order",
        );
        await checkDelivery(
          [check("direct", direct, [alice, bob]), check("group", group, [bob, alice, carol])],
          new Map([
            [direct, new Map([...sent, reply].map((r) => [r.clientMsgId, r.seq]))],
            [group, new Map(groupSent.map((r) => [r.clientMsgId, r.seq]))],
          ]),
        );

        // Delivered receipts: both of alice's devices hear that bob's devices have her messages.
        const last = sent.at(-1)!.seq;
        for (const receipts of [receiptsA0, receiptsA1]) {
          await receiptSeen(
            receipts,
            (r) =>
              r.conversationId === direct &&
              r.kind === "delivered" &&
              r.userId === bob.userId &&
              r.upToSeq >= last,
            "delivered receipts",
          );
        }
        // Read on gateway-1, seen by alice on both gateways.
        b1.markRead(direct, reply.seq);
        for (const receipts of [receiptsA0, receiptsA1]) {
          await receiptSeen(
            receipts,
            (r) =>
              r.conversationId === direct &&
              r.kind === "read" &&
              r.userId === bob.userId &&
              r.upToSeq === reply.seq,
            "read receipts",
          );
        }
        // Group receipts are per member.
        const groupSeq = (await a0.send(group, "receipts please")).seq;
        for (const member of [bob, carol]) {
          await receiptSeen(
            receiptsA1,
            (r) =>
              r.conversationId === group &&
              r.kind === "delivered" &&
              r.userId === member.userId &&
              r.upToSeq >= groupSeq,
            `delivered receipt from ${member.name} in the group`,
          );
        }

        // Typing on gateway-0 reaches bob's devices on both gateways and alice's other device.
        const typing = [b0, b1, a1].map((d) =>
          d.waitFor("typing", (t) => t.conversationId === direct && t.userId === alice.userId && t.active),
        );
        const typer = setInterval(() => a0.setTyping(direct, true), 500);
        try {
          await Promise.race([
            Promise.all(typing),
            new Promise((_, reject) =>
              setTimeout(() => reject(new Error("typing not relayed in 15 s")), 15_000),
            ),
          ]);
        } finally {
          clearInterval(typer);
        }
      });
    });

    it("shows presence across gateways and delivers to offline devices when they come back", async () => {
      await withLogs(async () => {
        const [a0, a1] = alice.devices as [SwitchboardClient, SwitchboardClient];
        const direct = (await a0.openDirect(carol.userId)).conversationId;
        const group = (await alice.devices[1]!.createGroup("offline", [bob.userId, carol.userId]))
          .conversationId;
        const presence = (c: SwitchboardClient) => {
          const seen: PresenceEvent[] = [];
          c.on("presence", (p) => {
            if (p.userId === carol.userId) seen.push(p);
          });
          return seen;
        };
        const seenA0 = presence(a0);
        const seenA1 = presence(a1);
        a0.subscribePresence([carol.userId]);
        a1.subscribePresence([carol.userId]);
        for (const seen of [seenA0, seenA1]) {
          await eventually(
            () => seen.at(-1)?.online === true,
            () => `carol's presence: ${JSON.stringify(seen.map((p) => p.online))}`,
          );
        }

        // Carol goes offline on both gateways; alice sees it on both.
        await Promise.all(carol.devices.map((d) => d.close()));
        const heldAtClose = carol.logs.map((l) => l.in(direct).length);
        for (const seen of [seenA0, seenA1]) {
          await eventually(
            () => seen.at(-1)?.online === false,
            () => `carol's presence after she left: ${JSON.stringify(seen.map((p) => p.online))}`,
          );
        }

        const acked = new Map<string, Map<string, bigint>>([
          [direct, new Map()],
          [group, new Map()],
        ]);
        for (let i = 0; i < 4; i++) {
          const r = await a0.send(direct, `while away ${i}`);
          acked.get(direct)!.set(r.clientMsgId, r.seq);
          const g = await bob.devices[1]!.send(group, `group while away ${i}`);
          acked.get(group)!.set(g.clientMsgId, g.seq);
        }
        // Her devices are offline: nothing new can have reached them yet.
        for (const [i, log] of carol.logs.entries()) assert.equal(log.in(direct).length, heldAtClose[i]);

        await Promise.all([reopen(carol, 0), reopen(carol, 1)]);
        for (const seen of [seenA0, seenA1]) {
          await eventually(
            () => seen.at(-1)?.online === true,
            () => `carol's presence after she came back: ${JSON.stringify(seen.map((p) => p.online))}`,
          );
        }
        await checkDelivery(
          [
            check("direct alice-carol", direct, [alice, carol]),
            check("group offline", group, [alice, bob, carol]),
          ],
          acked,
        );
      });
    });
  });

  describe("faults under continuous traffic", () => {
    const members: User[] = [];
    const conversations: ConversationCheck[] = [];
    let traffic: TrafficGenerator;

    before(async () => {
      const [p, q, r, s] = await Promise.all(["pat", "quinn", "ria", "sam"].map((n) => newUser(n)));
      members.push(p!, q!, r!, s!);
      const streams: SendStream[] = [];
      const directs: Array<[User, User]> = [
        [p!, q!],
        [r!, s!],
        [p!, s!],
      ];
      for (const [x, y] of directs) {
        const id = (await x.devices[0]!.openDirect(y.userId)).conversationId;
        conversations.push(check(`direct ${x.name}-${y.name}`, id, [x, y]));
        streams.push(
          { label: `${x.name}/0>${y.name}`, client: x.devices[0]!, conversationId: id },
          { label: `${y.name}/1>${x.name}`, client: y.devices[1]!, conversationId: id },
        );
      }
      // Groups until both sequencer replicas own at least one conversation, so that killing
      // either one hits live traffic.
      const owners = () => new Set(conversations.map((c) => replicaOf(c.conversationId, SEQUENCERS, SHARDS)));
      for (let g = 0; g < 2 || owners().size < SEQUENCERS; g++) {
        assert.ok(g < 20, "twenty groups all landed on one sequencer replica");
        const id = (await q!.devices[1]!.createGroup(`traffic ${g}`, [p!.userId, r!.userId, s!.userId]))
          .conversationId;
        conversations.push(check(`group ${g}`, id, members));
        streams.push(
          { label: `g${g}:${p!.name}/1`, client: p!.devices[1]!, conversationId: id },
          { label: `g${g}:${r!.name}/0`, client: r!.devices[0]!, conversationId: id },
        );
      }
      // Roughly 2.5 messages/s per stream.
      traffic = new TrafficGenerator(streams, 400);
      streamCount = streams.length;
    });

    /**
     * One fault: traffic flows, the fault strikes, traffic keeps going through it, recovery, then
     * every member device must have received past what was sent after recovery (it is live
     * again), and finally, with traffic stopped, the whole contract is checked.
     */
    async function faultPhase(fault: () => Promise<void>, recover: () => Promise<void>): Promise<void> {
      const firstLine = logLines.length;
      traffic.start();
      const startAcks = traffic.ackedCount;
      const startFailures = traffic.failures.length;
      await eventually(
        () => traffic.ackedCount >= startAcks + streamCount,
        () => `traffic does not flow before the fault: ${traffic.ackedCount - startAcks} acks`,
      );
      const sentBefore = traffic.sent;
      await fault();
      // Let the generator hit the fault with a few rounds of sends.
      await eventually(
        () => traffic.sent >= sentBefore + 2 * streamCount,
        () => "the generator stopped sending",
      );
      await recover();
      const afterRecovery = traffic.ackedCount;
      await eventually(
        () => traffic.ackedCount >= afterRecovery + 2 * streamCount,
        () => `sends are not acknowledged after recovery: ${traffic.ackedCount - afterRecovery}`,
        40_000,
      );
      // Every device is live again: it receives entries committed after recovery.
      await everyDeviceCaughtUp(conversations, traffic.acked, 40_000);
      await traffic.stop();
      assert.deepEqual(traffic.failures.slice(startFailures), [], "no send was refused for good");
      // An outage is expected and handled; level 50 ("unexpected error") means a failure nobody
      // classified, which callers then see as a bare INTERNAL.
      assert.deepEqual(
        logLines.slice(firstLine).filter((l) => /"level":(50|60)/.test(l)),
        [],
        "no process logged an error",
      );
      await checkDelivery(conversations, traffic.acked, 40_000);
    }

    it("survives SIGKILL of gateway-0: its devices move to gateway-1, then it restarts", async () => {
      await withLogs(async () => {
        let killedAt = 0;
        await faultPhase(
          async () => {
            killedAt = Date.now();
            await mesh!.kill("gateway-0");
          },
          async () => {
            // Devices that were on gateway-0 carry on through gateway-1 before it is back.
            await eventually(
              () => members.every((m) => m.devices.every((d) => d.connected)),
              () => "devices did not reconnect through gateway-1",
              30_000,
            );
            await mesh!.launch("gateway-0");
          },
        );
        for (const m of members) {
          const id = m.devices[0]!.deviceId;
          assert.ok(
            logLines.some(
              (l) =>
                l.startsWith("gateway-1 ") &&
                l.includes(`"deviceId":"${id}"`) &&
                l.includes("stream opened") &&
                logTime(l) >= killedAt,
            ),
            `${m.name}'s first device reopened its stream on gateway-1`,
          );
        }
      });
    });

    it("survives SIGKILL of fanout-0: the other worker takes its partitions when its leases expire", async () => {
      await withLogs(() =>
        faultPhase(
          () => mesh!.kill("fanout-0"),
          async () => {
            await mesh!.launch("fanout-0");
          },
        ),
      );
    });

    it("survives SIGKILL of sequencer-1: its shards answer UNAVAILABLE and the SDK retries", async () => {
      await withLogs(async () => {
        let killedAt = 0;
        let relaunchedAt = 0;
        const onReplica1 = new Set(
          conversations
            .filter((c) => replicaOf(c.conversationId, SEQUENCERS, SHARDS) === 1)
            .map((c) => c.conversationId),
        );
        await faultPhase(
          async () => {
            // A burst first, so the kill lands while appends are in flight to the replica: those
            // may or may not have committed, and must be retried rather than refused.
            const target = traffic.streams.find((s) => onReplica1.has(s.conversationId))!;
            await traffic.burst(target, 200);
            killedAt = Date.now();
            await mesh!.kill("sequencer-1");
          },
          async () => {
            // Not back before some sends made during the outage are waiting on it.
            await eventually(
              () => traffic.unansweredSince(onReplica1, killedAt) >= 2,
              () => "no send to sequencer-1's conversations is waiting on it",
            );
            relaunchedAt = Date.now();
            await mesh!.launch("sequencer-1");
          },
        );
        // The outage was real: sends to the dead replica's conversations, made while it was
        // down, were answered only once it was back (after SDK retries with the same id).
        assert.ok(
          traffic.timings.some(
            (t) =>
              onReplica1.has(t.conversationId) &&
              t.sentAtMs >= killedAt &&
              t.sentAtMs < relaunchedAt &&
              t.ackedAtMs >= relaunchedAt,
          ),
          "some send to sequencer-1's shards waited through the outage",
        );
      });
    });

    it("survives a SIGKILL of nats-server, restarted on the same port and store", async () => {
      await withLogs(() =>
        faultPhase(
          () => mesh!.restartNats(2_000),
          async () => {},
        ),
      );
    });

    it("survives redis-server restarting empty: gateway heartbeats restore the routes", async () => {
      await withLogs(() =>
        faultPhase(
          () => mesh!.restartRedis(1_000),
          async () => {},
        ),
      );
    });
  });
});

/** The time field of a process's JSON log line, in milliseconds since the epoch. */
function logTime(line: string): number {
  return Number(/"time":(\d+)/.exec(line)?.[1] ?? 0);
}
