import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it, type TestContext } from "node:test";
import type { ClientTuning } from "../../sdk/index.js";
import { javaProblem, startCassandra } from "../../services/mesh/cassandra.js";
import { Mesh } from "../../services/mesh/launcher.js";
import { replicaOf } from "../../services/sequencer/router.js";
import { freePort, meshPrerequisites } from "../helpers/backends.js";
import { eventually } from "../helpers/inbox.js";
import {
  type ConversationCheck,
  checkDelivery,
  type SendStream,
  TrafficGenerator,
} from "../helpers/mesh-traffic.js";
import {
  type DeviceUrls,
  gatewayUrls,
  type MeshUser,
  MeshUsers,
  withFailureDump,
} from "../helpers/mesh-users.js";
import { measureRecovery, type Recovery, recoveryTable } from "../helpers/recovery.js";
import { type ServerProcess, startServerProcess } from "../helpers/server.js";

/**
 * The fault matrix: under continuous traffic (several devices, a direct conversation and groups,
 * a steady rate), every part of the system is SIGKILLed in turn and brought back, and after each
 * the delivery contract is checked against the log: every acknowledged message reaches every
 * member device within DELIVERY_BOUND_MS, exactly once after the SDK's dedupe, in order, with no
 * seq reused and none skipped. Each fault's recovery time (from the kill to every conversation
 * having a message sent after it on every member device) is printed as a table at the end, the
 * figures in docs/architecture.md's failure table.
 *
 * One mesh serves every mesh fault, one after the other: on its own Apache Cassandra node
 * (`--store scylla`, services/mesh/cassandra.ts), so that the database can be killed too; without
 * Java 17 the mesh runs on LMDB and the database case skips saying why (under CI=true it fails).
 * Then the one-process server is SIGKILLed three times and restarted on the same data directory.
 * A full disk is test/e2e/storage-faults.test.ts. The bound is generous on purpose: this is no
 * measure of speed, and the times are printed, not asserted.
 */

const SHARDS = 16;
const SEQUENCERS = 2;
/** How long every acknowledged message may take to reach every member device after recovery. */
const DELIVERY_BOUND_MS = 30_000;
/** How long a killed process stays down before it is started again. */
const OUTAGE_MS = 2_000;
/** Each send stream's pace: with five or six streams, about ten messages a second in all. */
const SEND_INTERVAL_MS = 500;
const tuning: ClientTuning = {
  backoffBaseMs: 50,
  backoffCapMs: 1_000,
  pingIntervalMs: 5_000,
  deadAfterMs: 15_000,
};
const limits = {
  SWITCHBOARD_SENDS_PER_SECOND: "1000",
  SWITCHBOARD_SEND_BURST: "1000",
  SWITCHBOARD_FRAME_BURST: "1000",
};

const { missing, skip } = meshPrerequisites();
const noJava = javaProblem();
if (noJava !== undefined && process.env.CI === "true") {
  throw new Error(`fault matrix: CI=true needs Java 17 to kill the mesh's database: ${noJava}`);
}

const recoveries: Recovery[] = [];

after(() => {
  if (recoveries.length === 0) return;
  const lines = [
    `fault matrix recovery times (kill -> every member device holds a message sent after it; outage ${OUTAGE_MS} ms before each restart):`,
    ...recoveryTable(recoveries),
  ];
  // Plain lines: the TAP reporter shows them as comments, the spec reporter as they are.
  console.log(lines.join("\n"));
  const keep = process.env.SWITCHBOARD_FAULT_MATRIX_OUT;
  if (keep) return writeFile(keep, `${JSON.stringify(recoveries, null, 2)}\n`);
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

type User = MeshUser;

/**
 * Users, conversations and traffic on one deployment, and the fault phase that checks them.
 * `lines` gives every line the deployment's processes logged so far, in order.
 */
class Rig {
  private readonly people: MeshUsers;
  readonly conversations: ConversationCheck[] = [];
  traffic!: TrafficGenerator;

  constructor(
    dir: string,
    urls: DeviceUrls,
    private readonly lines: () => readonly string[],
  ) {
    this.people = new MeshUsers(dir, urls, tuning);
  }

  /** The users registered so far. */
  get users(): readonly User[] {
    return this.people.all;
  }

  /**
   * Three users, a direct conversation between two of them and groups of all three (until
   * `enough` holds for the conversations), each with two send streams from different devices.
   */
  async populate(enough: (ids: string[]) => boolean = () => true): Promise<void> {
    const [p, q, r] = await Promise.all(["pat", "quinn", "ria"].map((n) => this.people.add(n)));
    const check = (label: string, conversationId: string, members: User[]): ConversationCheck => ({
      label,
      conversationId,
      reader: members[0]!.devices[1]!,
      devices: members.flatMap((m) => m.logs),
    });
    const streams: SendStream[] = [];
    const direct = (await p!.devices[0]!.openDirect(q!.userId)).conversationId;
    this.conversations.push(check("direct", direct, [p!, q!]));
    streams.push(
      { label: "pat/0>quinn", client: p!.devices[0]!, conversationId: direct },
      { label: "quinn/1>pat", client: q!.devices[1]!, conversationId: direct },
    );
    for (let g = 0; g < 1 || !enough(this.conversations.map((c) => c.conversationId)); g++) {
      assert.ok(g < 20, "twenty groups did not satisfy the rig");
      const id = (await q!.devices[0]!.createGroup(`matrix ${g}`, [p!.userId, r!.userId])).conversationId;
      this.conversations.push(check(`group ${g}`, id, [q!, p!, r!]));
      streams.push(
        { label: `g${g}:ria/0`, client: r!.devices[0]!, conversationId: id },
        { label: `g${g}:pat/1`, client: p!.devices[1]!, conversationId: id },
      );
    }
    this.traffic = new TrafficGenerator(streams, SEND_INTERVAL_MS);
  }

  close(): Promise<void> {
    return this.people.closeAll();
  }

  /**
   * One fault under traffic: traffic flows, `strike` kills something (and returns once it is
   * dead), the generator keeps sending through the outage, `recover` brings it back (and returns
   * once it answers); then the devices must be live again, and with traffic stopped the whole
   * contract is checked. Records and returns the recovery times.
   */
  async faultPhase(
    t: TestContext,
    fault: string,
    strike: () => Promise<void>,
    recover: () => Promise<void>,
  ): Promise<Recovery> {
    const { traffic, conversations } = this;
    const streams = traffic.streams.length;
    const firstLine = this.lines().length;
    const startFailures = traffic.failures.length;
    const startAcked = traffic.ackedCount;
    const startTimings = traffic.timings.length;
    traffic.start();
    await eventually(
      () => traffic.ackedCount >= startAcked + streams,
      () => `traffic does not flow before the fault: ${traffic.ackedCount - startAcked} acks`,
      DELIVERY_BOUND_MS,
    );
    const faultAt = Date.now();
    await strike();
    const sentBefore = traffic.sent;
    await sleep(OUTAGE_MS);
    await eventually(
      () => traffic.sent >= sentBefore + streams,
      () => "the generator stopped sending during the outage",
    );
    await recover();
    const backAt = Date.now();
    // Live again: every conversation takes sends made from now on, and what is acknowledged
    // reaches every device while traffic flows.
    const ackedSince = (c: ConversationCheck) =>
      traffic.timings.filter((x) => x.conversationId === c.conversationId && x.sentAtMs >= backAt).length;
    await eventually(
      () => conversations.every((c) => ackedSince(c) >= 2),
      () =>
        `sends are not acknowledged after recovery: ${conversations.map((c) => `${c.label} ${ackedSince(c)}`).join(", ")}`,
      DELIVERY_BOUND_MS,
    );
    const mark = new Map(
      conversations.map((c) => [c.conversationId, maxSeq(traffic.acked.get(c.conversationId))]),
    );
    await eventually(
      () =>
        conversations.every((c) =>
          c.devices.every((d) => (d.in(c.conversationId).at(-1)?.seq ?? 0n) >= mark.get(c.conversationId)!),
        ),
      () =>
        conversations
          .map(
            (c) =>
              `${c.label} (acked up to ${mark.get(c.conversationId)}): ` +
              c.devices.map((d) => `${d.name}=${d.in(c.conversationId).at(-1)?.seq ?? 0n}`).join(" "),
          )
          .join("; "),
      DELIVERY_BOUND_MS,
    );
    await traffic.stop(DELIVERY_BOUND_MS);
    const refused = traffic.failures.slice(startFailures);
    const { entries } = await checkDelivery(conversations, traffic.acked, DELIVERY_BOUND_MS);
    const { firstMs, allMs, never } = measureRecovery(
      faultAt,
      conversations,
      traffic.timings.slice(startTimings),
    );
    const errors = this.lines()
      .slice(firstLine)
      .filter((l) => /"level":(50|60)/.test(l)).length;
    const recovery: Recovery = {
      fault,
      backMs: backAt - faultAt,
      firstMs,
      allMs,
      entries,
      acked: traffic.ackedCount - startAcked,
      errorsLogged: errors,
      refused: refused.length,
    };
    recoveries.push(recovery);
    t.diagnostic(
      `${fault}: back after ${recovery.backMs} ms, first conversation live after ${firstMs} ms, ` +
        `every conversation after ${allMs} ms; ${entries} entries checked; ${errors} error lines ` +
        `logged; ${refused.length} sends refused for good`,
    );
    // Asserted last, so that the recovery is measured and shown even when this fails.
    assert.deepEqual(refused.slice(0, 10), [], `no send was refused for good (${refused.length} were)`);
    assert.deepEqual(never, [], "every member device received a message sent after the fault");
    return recovery;
  }

  /** Runs a body; on failure, appends the warnings logged and the devices' connection events. */
  withLogs(name: string, body: () => Promise<void>): Promise<void> {
    return withFailureDump(
      { lines: this.lines, users: this.people, name: `fault-matrix-${name}`, warnings: 80 },
      body,
    );
  }
}

describe("fault matrix: the mesh, every process SIGKILLed in turn under traffic", { skip }, () => {
  let dir = "";
  let mesh: Mesh | undefined;
  let rig: Rig;
  const logLines: string[] = [];

  before(async () => {
    if (missing.length > 0) {
      throw new Error(
        `CI=true and ${missing.join(" and ")} missing: apt-get install nats-server redis-server`,
      );
    }
    dir = await mkdtemp(join(tmpdir(), "sb-fault-matrix-"));
    const started = Date.now();
    mesh = await Mesh.start({
      dir,
      gateways: 2,
      sequencers: SEQUENCERS,
      fanouts: 2,
      shards: SHARDS,
      // Its own Cassandra node (the runner's shared one must not be killed), in dir/cassandra.
      store: noJava === undefined ? "scylla" : "lmdb",
      env: limits,
      onLog: (name, line) => {
        logLines.push(`${name} ${line}`);
      },
      onEvent: (line) => {
        logLines.push(`mesh ${line}`);
      },
    });
    const meshUp = Date.now();
    const running = mesh;
    rig = new Rig(
      dir,
      gatewayUrls(() => running.gatewayUrls),
      () => logLines,
    );
    // Both sequencer replicas own a conversation, so killing either hits live traffic.
    await rig.populate(
      (ids) => new Set(ids.map((id) => replicaOf(id, SEQUENCERS, SHARDS))).size === SEQUENCERS,
    );
    console.log(
      `fault matrix mesh (${noJava === undefined ? "on its own Cassandra node" : "on LMDB"}): up in ` +
        `${meshUp - started} ms, users and conversations in ${Date.now() - meshUp} ms`,
    );
  });

  after(async () => {
    await rig?.close();
    await mesh?.stop();
    if (dir !== "") await rm(dir, { recursive: true, force: true });
  });

  /** Kills a role process, keeps it down for the outage, starts it again. */
  const roleProcess = (t: TestContext, name: string, recover?: () => Promise<void>) =>
    rig.withLogs(name, async () => {
      await rig.faultPhase(
        t,
        `SIGKILL ${name}`,
        () => mesh!.kill(name),
        async () => {
          await recover?.();
          await mesh!.launch(name);
        },
      );
    });

  it("a gateway: its devices move to the other gateway", (t) =>
    roleProcess(t, "gateway-0", () =>
      eventually(
        () => rig.users.every((u) => u.devices.every((d) => d.connected)),
        () => "devices did not reconnect through gateway-1",
        DELIVERY_BOUND_MS,
      ),
    ));

  it("a sequencer replica: its shards resume when it is back", (t) => roleProcess(t, "sequencer-1"));

  it("a fanout worker: the other worker and the log cover its batches", (t) => roleProcess(t, "fanout-0"));

  it("nats-server, restarted on the same port and JetStream store", (t) =>
    rig.withLogs("nats", async () => {
      let down: Promise<void> = Promise.resolve();
      await rig.faultPhase(
        t,
        "SIGKILL nats-server",
        async () => {
          // restartNats kills at once and starts again after the outage.
          down = mesh!.restartNats(OUTAGE_MS);
        },
        () => down,
      );
    }));

  it("redis-server, restarted empty", (t) =>
    rig.withLogs("redis", async () => {
      let down: Promise<void> = Promise.resolve();
      await rig.faultPhase(
        t,
        "SIGKILL redis-server (empty)",
        async () => {
          down = mesh!.restartRedis(OUTAGE_MS);
        },
        () => down,
      );
    }));

  it("presence", (t) => roleProcess(t, "presence"));

  it("accounts", (t) => roleProcess(t, "accounts"));

  // While the node is down every store call fails; the engine refuses them UNAVAILABLE
  // (services/store/scylla/outage.ts), which the SDK retries, so nothing is refused for good.
  it("the database (the mesh's own Cassandra node), restarted on its files", async (t) => {
    if (noJava !== undefined) {
      t.skip(`the mesh runs on LMDB here: ${noJava}`);
      return;
    }
    await rig.withLogs("database", async () => {
      const node = mesh!.cassandra;
      assert.ok(node, "the mesh started its own Cassandra node");
      await rig.faultPhase(
        t,
        "SIGKILL cassandra",
        () => node.stop("SIGKILL"),
        async () => {
          mesh!.cassandra = await startCassandra({
            dir: node.dir,
            port: node.port,
            storagePort: node.storagePort,
          });
        },
      );
    });
  });
});

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
    rig = new Rig(dir, () => ({ serverUrl: url, alternateUrls: [] }), logLines);
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

function maxSeq(acked: ReadonlyMap<string, bigint> | undefined): bigint {
  let max = 0n;
  for (const s of acked?.values() ?? []) if (s > max) max = s;
  return max;
}
