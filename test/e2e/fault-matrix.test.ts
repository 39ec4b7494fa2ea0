import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it, type TestContext } from "node:test";
import { javaProblem, startCassandra } from "../../services/mesh/cassandra.js";
import { Mesh } from "../../services/mesh/launcher.js";
import { replicaOf } from "../../services/sequencer/router.js";
import { meshPrerequisites } from "../helpers/backends.js";
import { DELIVERY_BOUND_MS, limits, OUTAGE_MS, Rig, reportRecoveries } from "../helpers/fault-rig.js";
import { eventually } from "../helpers/inbox.js";
import type { ConversationCheck } from "../helpers/mesh-traffic.js";
import { gatewayUrls } from "../helpers/mesh-users.js";

/**
 * The fault matrix on the mesh: under continuous traffic (several devices, a direct conversation
 * and groups, a steady rate), every process is SIGKILLed in turn and brought back, and after each
 * the delivery contract is checked against the log (test/helpers/fault-rig.ts says how).
 *
 * One mesh serves every fault, one after the other: on its own Apache Cassandra node
 * (`--store scylla`, services/mesh/cassandra.ts), so that the database can be killed too and a
 * dead sequencer replica's shards fail over to the live one; without Java 17 the mesh runs on
 * LMDB and the database case skips saying why (under CI=true it fails). The one-process server is
 * fault-matrix-one-process.test.ts; a full disk is storage-faults.test.ts.
 */

const SHARDS = 16;
const SEQUENCERS = 2;

const { missing, skip } = meshPrerequisites();
const noJava = javaProblem();
if (noJava !== undefined && process.env.CI === "true") {
  throw new Error(`fault matrix: CI=true needs Java 17 to kill the mesh's database: ${noJava}`);
}

const recoveries = reportRecoveries("mesh");

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
      recoveries,
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

  // On ScyllaDB the live replica takes the dead one's shards under their leases
  // (services/sequencer/ownership.ts): the conversations on them take sends again before it is
  // started again, and it gets them back after. On LMDB (no Java here) they resume when it is back.
  it("a sequencer replica: its shards move to the live replica and back (on LMDB: resume when it is back)", (t) =>
    noJava !== undefined
      ? roleProcess(t, "sequencer-1")
      : rig.withLogs("sequencer-1", async () => {
          let killedAt = 0;
          await rig.faultPhase(
            t,
            "SIGKILL sequencer-1 (failover)",
            async () => {
              killedAt = Date.now();
              await mesh!.kill("sequencer-1");
            },
            async () => {
              const itsOwn = rig.conversations.filter(
                (c) => replicaOf(c.conversationId, SEQUENCERS, SHARDS) === 1,
              );
              const ackedSince = (c: ConversationCheck) =>
                rig.traffic.timings.filter(
                  (x) => x.conversationId === c.conversationId && x.sentAtMs >= killedAt,
                ).length;
              await eventually(
                () => itsOwn.every((c) => ackedSince(c) >= 2),
                () =>
                  `the dead replica's conversations take no sends while it is down: ${itsOwn
                    .map((c) => `${c.label} ${ackedSince(c)}`)
                    .join(", ")}`,
                DELIVERY_BOUND_MS,
              );
              t.diagnostic(
                `sequencer-1 down: its conversations took sends again ${Date.now() - killedAt} ms after the kill`,
              );
              const from = logLines.length;
              await mesh!.launch("sequencer-1");
              await eventually(
                () =>
                  logLines
                    .slice(from)
                    .some((l) => l.startsWith("sequencer-1 ") && /"msg":"serving a shard"/.test(l)),
                () => "sequencer-1 did not get its shards back",
                DELIVERY_BOUND_MS,
              );
            },
          );
        }));

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
