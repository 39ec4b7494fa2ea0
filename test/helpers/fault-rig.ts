/**
 * The fault matrix's rig (test/e2e/fault-matrix*.test.ts): users, conversations and traffic on a
 * deployment, and the fault phase that kills something under that traffic and checks the whole
 * delivery contract after it. Every acknowledged message must reach every member device within
 * DELIVERY_BOUND_MS, exactly once after the SDK's dedupe, in order, with no seq reused and none
 * skipped. Each fault's recovery time (from the kill to every conversation having a message sent
 * after it on every member device) is recorded and printed as a table when the file ends, the
 * figures in docs/architecture.md's failure table. The bound is generous on purpose: this is no
 * measure of speed, and the times are printed, not asserted.
 */
import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { after, type TestContext } from "node:test";
import type { ClientTuning } from "../../sdk/index.js";
import { eventually } from "./inbox.js";
import {
  type ConversationCheck,
  checkDelivery,
  everyDeviceCaughtUp,
  type SendStream,
  TrafficGenerator,
} from "./mesh-traffic.js";
import { type DeviceUrls, type MeshUser, MeshUsers, withFailureDump } from "./mesh-users.js";
import { measureRecovery, type Recovery, recoveryTable } from "./recovery.js";

/** How long every acknowledged message may take to reach every member device after recovery. */
export const DELIVERY_BOUND_MS = 30_000;
/** How long a killed process stays down before it is started again. */
export const OUTAGE_MS = 2_000;
/** Each send stream's pace: with five or six streams, about ten messages a second in all. */
const SEND_INTERVAL_MS = 500;
const tuning: ClientTuning = {
  backoffBaseMs: 50,
  backoffCapMs: 1_000,
  pingIntervalMs: 5_000,
  deadAfterMs: 15_000,
};
/** Server settings of every deployment the matrix runs: the traffic must never be rate limited. */
export const limits = {
  SWITCHBOARD_SENDS_PER_SECOND: "1000",
  SWITCHBOARD_SEND_BURST: "1000",
  SWITCHBOARD_FRAME_BURST: "1000",
};

/**
 * The recovery times of this file's fault phases, printed as a table when the file ends (and
 * written as JSON to SWITCHBOARD_FAULT_MATRIX_OUT, suffixed with `name`, when set).
 */
export function reportRecoveries(name: string): Recovery[] {
  const recoveries: Recovery[] = [];
  after(() => {
    if (recoveries.length === 0) return;
    const lines = [
      `fault matrix (${name}) recovery times (kill -> every member device holds a message sent after it; outage ${OUTAGE_MS} ms before each restart):`,
      ...recoveryTable(recoveries),
    ];
    // Plain lines: the TAP reporter shows them as comments, the spec reporter as they are.
    console.log(lines.join("\n"));
    const keep = process.env.SWITCHBOARD_FAULT_MATRIX_OUT;
    if (keep) return writeFile(`${keep}.${name}.json`, `${JSON.stringify(recoveries, null, 2)}\n`);
  });
  return recoveries;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

type User = MeshUser;

/**
 * Users, conversations and traffic on one deployment, and the fault phase that checks them.
 * `lines` gives every line the deployment's processes logged so far, in order.
 */
export class Rig {
  private readonly people: MeshUsers;
  readonly conversations: ConversationCheck[] = [];
  traffic!: TrafficGenerator;

  constructor(
    dir: string,
    urls: DeviceUrls,
    private readonly lines: () => readonly string[],
    private readonly recoveries: Recovery[],
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
    await everyDeviceCaughtUp(conversations, traffic.acked, DELIVERY_BOUND_MS);
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
    this.recoveries.push(recovery);
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
