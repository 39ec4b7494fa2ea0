import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Entry } from "../../gen/switchboard/v1/entry_pb.js";
import type { SwitchboardClient } from "../../sdk/index.js";
import { eventually } from "./inbox.js";

/**
 * Traffic and bookkeeping for the multi-process suite: what each device received, what each
 * sender got acknowledged, and the checks of the delivery contract against the log itself.
 */

/** One entry as a device's app saw it. */
export interface Seen {
  seq: bigint;
  clientMsgId: string;
  kind: string;
  /** When the app got it, in milliseconds since the epoch (recovery times are measured with it). */
  atMs: number;
}

/**
 * Everything one SDK device hands to its app, per conversation. The SDK promises each entry once
 * and in seq order; this records what it actually emits so that a duplicate or a reordering
 * shows up as a violation rather than being hidden by the bookkeeping.
 */
export class DeviceLog {
  readonly byConversation = new Map<string, Seen[]>();
  readonly violations: string[] = [];
  /** The device's last connection events, for failure messages. */
  readonly events: string[] = [];

  constructor(
    readonly name: string,
    client: SwitchboardClient,
  ) {
    this.attach(client);
  }

  /** Follows another client object of the same device (after a reopen). */
  attach(client: SwitchboardClient): void {
    const note = (what: string) => {
      this.events.push(`${new Date().toISOString().slice(11, 23)} ${what}`);
      if (this.events.length > 20) this.events.shift();
    };
    client.on("connected", (e) => note(`connected ${e.sessionId}`));
    client.on("disconnected", (e) =>
      note(`disconnected ${e.error?.rawMessage ?? "(closed)"} retry in ${e.retryInMs ?? "-"} ms`),
    );
    client.on("error", (e) => note(`error ${e.error.rawMessage}${e.fatal ? " (fatal)" : ""}`));
    client.on("entry", (e) => {
      let list = this.byConversation.get(e.conversationId);
      if (list === undefined) {
        list = [];
        this.byConversation.set(e.conversationId, list);
      }
      const last = list.at(-1);
      if (last !== undefined && e.seq !== last.seq + 1n) {
        this.violations.push(`${this.name} ${e.conversationId}: seq ${e.seq} after ${last.seq}`);
      }
      if (last === undefined && e.seq !== 1n) {
        this.violations.push(`${this.name} ${e.conversationId}: first entry has seq ${e.seq}`);
      }
      list.push({ seq: e.seq, clientMsgId: e.clientMsgId, kind: e.kind, atMs: Date.now() });
    });
  }

  in(conversationId: string): Seen[] {
    return this.byConversation.get(conversationId) ?? [];
  }
}

/** One stream of sends: a device writing into a conversation. */
export interface SendStream {
  label: string;
  client: SwitchboardClient;
  conversationId: string;
}

/**
 * A background generator: every stream sends a message every `intervalMs`, leaving each send to
 * the SDK (outbox, retries with the same client_msg_id, reconnects) until it is acknowledged.
 * At most `maxOutstanding` unanswered sends per stream, so an outage cannot pile up work.
 */
export class TrafficGenerator {
  /** Per conversation: acknowledged client_msg_id -> seq. */
  readonly acked = new Map<string, Map<string, bigint>>();
  /** When each acknowledged send was made and answered, in milliseconds since the epoch. */
  readonly timings: Array<{
    conversationId: string;
    clientMsgId: string;
    sentAtMs: number;
    ackedAtMs: number;
  }> = [];
  /** Seqs acknowledged more than once under different ids (a reused seq), or refusals. */
  readonly failures: string[] = [];
  private readonly outstanding = new Map<Promise<unknown>, { conversationId: string; sentAtMs: number }>();
  private readonly perStream = new Map<string, number>();
  private timers: NodeJS.Timeout[] = [];
  private counter = 0;
  sent = 0;

  constructor(
    readonly streams: readonly SendStream[],
    private readonly intervalMs = 300,
    private readonly maxOutstanding = 25,
  ) {}

  get ackedCount(): number {
    let n = 0;
    for (const m of this.acked.values()) n += m.size;
    return n;
  }

  start(): void {
    if (this.timers.length > 0) return;
    this.streams.forEach((stream, i) => {
      // Staggered, so the streams do not all fire in the same tick.
      const timer = setInterval(() => this.tick(stream), this.intervalMs + i * 17);
      this.timers.push(timer);
    });
  }

  /**
   * Fires `n` sends on one stream at once, beyond the pace and the outstanding cap, and resolves
   * at the first acknowledgement: the rest are then in flight somewhere between the gateway and
   * the sequencer, which is the moment to kill something.
   */
  async burst(stream: SendStream, n: number): Promise<void> {
    const acked = this.ackedCount;
    for (let i = 0; i < n; i++) this.tick(stream, true);
    await eventually(
      () => this.ackedCount > acked,
      () => "no send of the burst was acknowledged",
    );
  }

  private tick(stream: SendStream, force = false): void {
    const pending = this.perStream.get(stream.label) ?? 0;
    if (pending >= this.maxOutstanding && !force) return;
    this.perStream.set(stream.label, pending + 1);
    const text = `${stream.label}#${this.counter++}`;
    this.sent += 1;
    const sentAtMs = Date.now();
    const p = stream.client
      .send(stream.conversationId, text)
      .then(
        (r) => {
          this.timings.push({
            conversationId: stream.conversationId,
            clientMsgId: r.clientMsgId,
            sentAtMs,
            ackedAtMs: Date.now(),
          });
          this.record(stream, r.clientMsgId, r.seq);
        },
        (err: unknown) => {
          const e = ConnectError.from(err);
          // Canceled only when the suite closes clients at the end; anything else is a refusal
          // the SDK considered final, which the contract does not allow for these sends.
          if (e.code !== Code.Canceled) this.failures.push(`${text}: ${Code[e.code]} ${e.rawMessage}`);
        },
      )
      .finally(() => {
        this.perStream.set(stream.label, (this.perStream.get(stream.label) ?? 1) - 1);
        this.outstanding.delete(p);
      });
    this.outstanding.set(p, { conversationId: stream.conversationId, sentAtMs });
  }

  private record(stream: SendStream, clientMsgId: string, seq: bigint): void {
    let map = this.acked.get(stream.conversationId);
    if (map === undefined) {
      map = new Map();
      this.acked.set(stream.conversationId, map);
    }
    const before = map.get(clientMsgId);
    if (before !== undefined && before !== seq) {
      this.failures.push(`${clientMsgId} acked at seq ${before} and again at ${seq}`);
    }
    map.set(clientMsgId, seq);
  }

  /** Unanswered sends to these conversations made at or after a time (ms since the epoch). */
  unansweredSince(conversationIds: ReadonlySet<string>, sinceMs: number): number {
    let n = 0;
    for (const o of this.outstanding.values()) {
      if (conversationIds.has(o.conversationId) && o.sentAtMs >= sinceMs) n++;
    }
    return n;
  }

  /** Stops sending and waits until every send made so far is answered. */
  async stop(timeoutMs = 40_000): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    await eventually(
      () => this.outstanding.size === 0,
      () => `${this.outstanding.size} sends still unanswered`,
      timeoutMs,
    );
  }
}

/** A conversation's whole log, page by page. */
export async function fullHistory(client: SwitchboardClient, conversationId: string): Promise<Entry[]> {
  const all: Entry[] = [];
  for (let after = 0n; ; ) {
    const page = await client.api.conversations.getHistory({ conversationId, afterSeq: after, limit: 500 });
    all.push(...page.entries);
    if (!page.hasMore || page.entries.length === 0) return all;
    after = page.entries.at(-1)!.seq;
  }
}

/** The log of a conversation and the devices that must hold all of it. */
export interface ConversationCheck {
  conversationId: string;
  label: string;
  /** A member device that reads the history (any gateway). */
  reader: SwitchboardClient;
  /** Every device of every member. */
  devices: readonly DeviceLog[];
}

/**
 * The delivery contract after a fault: the log is gapless (seqs 1..N), no seq was handed to two
 * different sends, every acknowledged send is in the log at the seq it was acknowledged with, and
 * every member device received exactly the log, in order, once. Waits (up to `timeoutMs`) for
 * devices to catch up; asserts the rest at once.
 */
export async function checkDelivery(
  conversations: readonly ConversationCheck[],
  acked: ReadonlyMap<string, ReadonlyMap<string, bigint>>,
  timeoutMs = 40_000,
): Promise<{ entries: number }> {
  let total = 0;
  for (const c of conversations) {
    const history = await fullHistory(c.reader, c.conversationId);
    total += history.length;
    assert.deepEqual(
      history.map((e) => Number(e.seq)),
      Array.from({ length: history.length }, (_, i) => i + 1),
      `${c.label}: the log has seqs 1..${history.length} with no gap`,
    );
    const ids = history.map((e) => e.clientMsgId).filter((id) => id !== "");
    assert.equal(new Set(ids).size, ids.length, `${c.label}: no client_msg_id is in the log twice`);

    const mine = acked.get(c.conversationId) ?? new Map<string, bigint>();
    const seqs = [...mine.values()];
    assert.equal(new Set(seqs).size, seqs.length, `${c.label}: no seq acknowledged to two sends`);
    for (const [clientMsgId, seq] of mine) {
      assert.equal(
        history[Number(seq) - 1]?.clientMsgId,
        clientMsgId,
        `${c.label}: acked ${clientMsgId} is in the log at seq ${seq}`,
      );
    }

    const expected = history.map((e) => `${e.seq}:${e.clientMsgId}`);
    await eventually(
      () => c.devices.every((d) => d.in(c.conversationId).length >= history.length),
      () =>
        `${c.label}: log has ${history.length} entries; devices hold ` +
        c.devices.map((d) => `${d.name}=${d.in(c.conversationId).length}`).join(" "),
      timeoutMs,
    );
    for (const d of c.devices) {
      assert.deepEqual(d.violations, [], `${d.name}: entries out of order or repeated`);
      // Traffic is stopped, so anything beyond the log read above would be an entry from nowhere.
      assert.deepEqual(
        d
          .in(c.conversationId)
          .map((e) => `${e.seq}:${e.clientMsgId}`)
          .slice(0, history.length),
        expected,
        `${d.name} received exactly ${c.label}'s log, in order, once`,
      );
      assert.equal(d.in(c.conversationId).length, history.length, `${d.name}: nothing beyond the log`);
    }
  }
  return { entries: total };
}

/** The highest acknowledged seq of a conversation (0 when none). */
function maxSeq(acked: ReadonlyMap<string, bigint> | undefined): bigint {
  let max = 0n;
  for (const s of acked?.values() ?? []) if (s > max) max = s;
  return max;
}

/**
 * Waits (up to boundMs) until every member device of every conversation holds the highest seq
 * acknowledged so far: the devices are live again after a fault. The failure names, per
 * conversation, where each device stands.
 */
export async function everyDeviceCaughtUp(
  conversations: readonly ConversationCheck[],
  acked: ReadonlyMap<string, ReadonlyMap<string, bigint>>,
  boundMs: number,
): Promise<void> {
  const mark = new Map(conversations.map((c) => [c.conversationId, maxSeq(acked.get(c.conversationId))]));
  const at = (d: DeviceLog, c: ConversationCheck) => d.in(c.conversationId).at(-1)?.seq ?? 0n;
  await eventually(
    () => conversations.every((c) => c.devices.every((d) => at(d, c) >= mark.get(c.conversationId)!)),
    () =>
      conversations
        .map(
          (c) =>
            `${c.label} (acked up to ${mark.get(c.conversationId)}): ` +
            c.devices.map((d) => `${d.name}=${at(d, c)}`).join(" "),
        )
        .join("; "),
    boundMs,
  );
}
