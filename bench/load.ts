import { getPriority, setPriority } from "node:os";
import { monitorEventLoopDelay, performance } from "node:perf_hooks";
import { create } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { OutgoingEntrySchema } from "../gen/switchboard/v1/entry_pb.js";
import {
  AckFrameSchema,
  type ConnectResponse,
  StreamOptionsFrameSchema,
} from "../gen/switchboard/v1/gateway_pb.js";
import { SendWindow } from "../sdk/client/congestion.js";
import { Histogram, type HistogramData } from "./histogram.js";
import type { BenchConversation, BenchDevice } from "./setup.js";
import { type ClientKind, type DeviceStream, openStream } from "./stream.js";

/** What one load generator (the main thread or one worker) drives. */
export interface LoadInput {
  /** Gateways; device i (BenchDevice.index) connects to urls[i mod urls.length]. */
  urls: string[];
  client: ClientKind;
  devices: BenchDevice[];
  /** Members are indexes into `devices`. */
  conversations: BenchConversation[];
  /** Target msgs/s for this generator; 0 keeps `inflight` sends in flight per device instead. */
  rate: number;
  /** Sends one device may have unanswered. */
  inflight: number;
  payloadBytes: number;
  /** How often receivers acknowledge what they got (cumulatively). */
  ackIntervalMs: number;
  /**
   * False: every stream opens with omit_own_sends, as the SDK's do, and a device counts its own
   * entries as received at their send_ack; true: the server echoes them.
   */
  echo: boolean;
  /** Connect and hold streams, send nothing. */
  idle: boolean;
  /** Streams opened at once while connecting. */
  connectConcurrency: number;
  /**
   * The nice value of the thread this generator runs on; 0 leaves it as it is. On Linux a nice
   * value belongs to one thread, so each generator sets its own (Load's constructor).
   */
  nice: number;
}

/** When to send, on the shared clock (performance.timeOrigin + performance.now(), in ms). */
export interface RunPlan {
  startAt: number;
  warmupMs: number;
  durationMs: number;
  /** After sending stops, how long to wait for outstanding acks and deliveries. */
  drainMs: number;
}

/** Counters and histograms of one generator; merged by the parent. */
export interface LoadStats {
  /** Sends written during the measurement window. */
  sent: number;
  /** Send acks received during the window. */
  acked: number;
  /** Entries from other devices received during the window. */
  delivered: number;
  /** The sender's own entries echoed back to it during the window (the server sends to every member device). */
  echoes: number;
  /** Receipt frames received during the window. */
  receipts: number;
  /** Ack frames written during the window. */
  ackFrames: number;
  /** Sends the pacer owed but could not make because every device was at its in-flight limit. */
  skipped: number;
  /** Refused sends written again during the window (same client_msg_id, after the retry hint). */
  resent: number;
  /** Send-ack latency of sends made in the window. */
  ackLatency: HistogramData;
  /** End-to-end latency of messages sent in the window, per receiving device. */
  deliveryLatency: HistogramData;
  /**
   * The same two from the attempt the server took, for sends refused and written again: what
   * the server's queues cost, without the client's waits for retry hints. Equal to the two above
   * when nothing was refused.
   */
  acceptedAckLatency: HistogramData;
  acceptedDeliveryLatency: HistogramData;
  /**
   * From the sender's sendAck to each delivery of the same entry (conversationId, seq), on the
   * same clock: the part of send→deliver after the commit. A delivery that beats its ack counts 0.
   */
  ackToDeliveryLatency: HistogramData;
  /** Deliveries that arrived before the sender's sendAck (recorded as 0 in ackToDeliveryLatency). */
  deliveredBeforeAck: number;
  /** For those: how much later the sendAck came. */
  ackLagLatency: HistogramData;
  /** Deliveries owed for messages sent and acked in the window, and how many of those arrived. */
  expectedDeliveries: number;
  receivedDeliveries: number;
  /** Sends made in the window still unanswered after the drain. */
  unanswered: number;
  /** send_error frames by gRPC code, over the whole run. */
  sendErrors: Record<string, number>;
  /** The same by the message's words before its first colon ("server overloaded", "send held"). */
  sendErrorReasons: Record<string, number>;
  /** error frames (refused acks and such). */
  frameErrors: number;
  /** Entries that arrived twice, and jumps over a seq, per device and conversation. */
  duplicates: number;
  gaps: number;
  /**
   * The first few holes that never filled, each naming the conversation, the missing seq, and
   * whose it was: an own send never acked, or a peer's send acked to the peer but not delivered.
   */
  holes: string[];
  /**
   * The drain reached its deadline (--drain) with sends unanswered or deliveries owed: the gaps
   * and holes may be entries still on their way, not lost ones.
   */
  drainCut: boolean;
  /** Streams that ended during the run, with the first few reasons. */
  streamsEnded: number;
  endReasons: string[];
  /** Per second since startAt: sends, acks and deliveries (including warm-up and drain). */
  timeline: { sent: number[]; acked: number[]; delivered: number[] };
  /** This generator's own event loop over the measurement window. */
  eventLoop: GeneratorLoop;
}

/**
 * A load generator's event loop over the window. Its latencies are taken on this loop, so a
 * generator that falls behind adds its own delay to every send and delivery it times: on a
 * machine shared with the server, this says how much of what was measured may be the bench.
 */
export interface GeneratorLoop {
  /** Share of the window the loop was busy (performance.eventLoopUtilization). */
  utilization: number;
  /**
   * How late a timer due every 10 ms ran (monitorEventLoopDelay, less the 10 ms: Node records
   * the time between two samples), 99th percentile and most, in ms.
   */
  delayP99Ms: number;
  delayMaxMs: number;
  /** The nice value of the thread the loop ran on, read back at the end (--bench-nice). */
  nice: number;
}

/** Starts watching this thread's event loop; `stop` gives what it did since. */
function watchLoop(): { stop: () => GeneratorLoop } {
  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  const start = performance.eventLoopUtilization();
  const late = (ns: number) => (delay.count > 0 ? Math.max(0, ns / 1e6 - 10) : 0);
  return {
    stop: () => {
      delay.disable();
      return {
        utilization: performance.eventLoopUtilization(start).utilization,
        delayP99Ms: late(delay.percentile(99)),
        delayMaxMs: late(delay.max),
        // Linux's getpriority answers for the calling thread, the one the loop runs on.
        nice: getPriority(),
      };
    },
  };
}

export const clock = (): number => performance.timeOrigin + performance.now();

/** Own sends one device remembers as filed (Device.ownFiled). */
const OWN_FILED_MAX = 4096;

/** Moves a device's cursor over the seqs it already has past it. */
function advance(d: { lastSeq: bigint; readonly ahead: Set<bigint> }): void {
  while (d.ahead.delete(d.lastSeq + 1n)) d.lastSeq++;
}

class Device {
  stream: DeviceStream | undefined;
  conversationId = "";
  /** Other members' devices: deliveries owed per message. */
  peers = 0;
  counter = 0;
  inFlight = 0;
  readonly sendTimes = new Map<number, number>();
  /** Of sends written again: when the last attempt went (sendTimes keeps the first). */
  readonly attemptTimes = new Map<number, number>();
  lastSeq = 0n;
  /**
   * Without echo: seqs past lastSeq this device already has (its own, from send_ack, or an entry
   * that overtook the ack of an own one before it), consumed as lastSeq reaches them. What is
   * left at the end is a real gap.
   */
  readonly ahead = new Set<bigint>();
  /** Seqs of this device's sends, as acked (to name a hole's owner at the end). */
  readonly acked = new Set<bigint>();
  /**
   * Without echo: seqs of this device's own sends, filed at send_ack, that have not come on the
   * stream. The log still serves them (a catch-up, a gap filled): that first arrival is expected,
   * not a duplicate. Oldest forgotten past OWN_FILED_MAX.
   */
  readonly ownFiled = new Set<bigint>();
  /** A refusal with a retry hint pauses the device's sends until then, as the SDK does. */
  pausedUntil = 0;
  /**
   * Refused sends to write again, ascending by id, once pausedUntil has passed: as the SDK's
   * outbox does, the same client_msg_id, before any new send. The gateway holds a stream's later
   * sends until a refused one comes back ("send held"), so a client that dropped it would see
   * every later send refused until the hold lapses.
   */
  readonly retry: number[] = [];
  retryTimer: NodeJS.Timeout | undefined;
  /** The SDK's congestion window (sdk/client/congestion.ts). */
  readonly window = new SendWindow(clock);
  ackedSeq = 0n;
  ended = false;
  caughtUp: (() => void) | undefined;
  failed: ((reason: string) => void) | undefined;

  constructor(readonly info: BenchDevice) {}
}

/**
 * Drives a set of devices: opens their streams, paces sends across them, acknowledges what
 * they receive as a client would, and measures send-ack and end-to-end latency. Every sender
 * and receiver of a conversation lives in the same generator, so both timestamps come from the
 * same clock.
 */
export class Load {
  private readonly devices: Device[];
  private readonly ackDirty = new Set<Device>();
  private readonly ackLatency = new Histogram();
  private readonly deliveryLatency = new Histogram();
  private readonly ackToDeliveryLatency = new Histogram();
  private readonly ackLagLatency = new Histogram();
  private readonly acceptedAckLatency = new Histogram();
  private readonly acceptedDeliveryLatency = new Histogram();
  /**
   * Acked entries sent in the window whose deliveries are still owed, by "conversationId:seq":
   * when the ack came and how many deliveries remain; and deliveries that came first.
   */
  private readonly ackedAt = new Map<string, { at: number; owed: number }>();
  private readonly earlyDeliveries = new Map<string, number[]>();
  private windowStart = Number.POSITIVE_INFINITY;
  private windowEnd = Number.POSITIVE_INFINITY;
  private startAt = 0;
  private sending = false;
  private ackTimer: NodeJS.Timeout | undefined;
  private readonly payloadBytes: number;
  private stats = Load.emptyStats();
  private timelineSlots = 0;

  constructor(private readonly input: LoadInput) {
    if (input.nice !== 0) {
      try {
        setPriority(input.nice);
      } catch (err) {
        throw new Error(
          `--bench-nice=${input.nice}: ${(err as Error).message} (below 0 needs root or CAP_SYS_NICE)`,
        );
      }
    }
    this.devices = input.devices.map((d) => new Device(d));
    for (const c of input.conversations) {
      for (const m of c.members) {
        const d = this.devices[m]!;
        d.conversationId = c.conversationId;
        d.peers = c.members.length - 1;
      }
    }
    this.payloadBytes = Math.max(16, input.payloadBytes);
  }

  private static emptyStats(): Omit<
    LoadStats,
    | "ackLatency"
    | "deliveryLatency"
    | "ackToDeliveryLatency"
    | "ackLagLatency"
    | "acceptedAckLatency"
    | "acceptedDeliveryLatency"
    | "eventLoop"
  > {
    return {
      sent: 0,
      acked: 0,
      delivered: 0,
      echoes: 0,
      receipts: 0,
      ackFrames: 0,
      skipped: 0,
      resent: 0,
      deliveredBeforeAck: 0,
      expectedDeliveries: 0,
      receivedDeliveries: 0,
      unanswered: 0,
      sendErrors: {},
      sendErrorReasons: {},
      frameErrors: 0,
      duplicates: 0,
      gaps: 0,
      holes: [],
      drainCut: false,
      streamsEnded: 0,
      endReasons: [],
      timeline: { sent: [], acked: [], delivered: [] },
    };
  }

  /** Opens every stream and waits for each to be caught up; returns streams that failed. */
  async connect(): Promise<{ failed: number; reasons: string[] }> {
    const reasons: string[] = [];
    let failed = 0;
    const step = Math.max(1, this.input.connectConcurrency);
    for (let i = 0; i < this.devices.length; i += step) {
      await Promise.all(
        this.devices.slice(i, i + step).map(async (d) => {
          try {
            await this.open(d);
          } catch (err) {
            failed++;
            if (reasons.length < 5) reasons.push(err instanceof Error ? err.message : String(err));
          }
        }),
      );
    }
    this.ackTimer = setInterval(() => this.flushAcks(), this.input.ackIntervalMs);
    return { failed, reasons };
  }

  private open(d: Device): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("stream not caught up within 60 s")), 60_000);
      d.caughtUp = () => {
        clearTimeout(timer);
        resolve();
      };
      d.failed = (reason) => {
        clearTimeout(timer);
        reject(new Error(reason));
      };
      const urls = this.input.urls;
      d.stream = openStream(this.input.client, urls[d.info.index % urls.length]!, d.info.token, {
        onFrame: (frame) => this.onFrame(d, frame),
        onEnd: (error) => this.onEnd(d, error),
      });
      // As the SDK's streams do: no echo (unless --echo on) and receipts in batches.
      d.stream.write({
        case: "options",
        value: create(StreamOptionsFrameSchema, { omitOwnSends: !this.input.echo, batchReceipts: true }),
      });
    });
  }

  /** Sends from plan.startAt for warm-up plus duration, then drains; resolves with the stats. */
  async run(plan: RunPlan): Promise<LoadStats> {
    this.stats = Load.emptyStats();
    this.ackedAt.clear();
    this.earlyDeliveries.clear();
    this.startAt = plan.startAt;
    this.windowStart = plan.startAt + plan.warmupMs;
    this.windowEnd = this.windowStart + plan.durationMs;
    this.timelineSlots = Math.ceil((plan.warmupMs + plan.durationMs + plan.drainMs) / 1000) + 1;
    const t = this.stats.timeline;
    t.sent = new Array(this.timelineSlots).fill(0);
    t.acked = new Array(this.timelineSlots).fill(0);
    t.delivered = new Array(this.timelineSlots).fill(0);
    const wait = plan.startAt - clock();
    if (wait > 0) await sleep(wait);
    if (!this.input.idle) {
      this.sending = true;
      if (this.input.rate > 0) this.pace();
      else for (const d of this.devices) this.pump(d);
    }
    await sleep(Math.max(0, this.windowStart - clock()));
    const loop = watchLoop();
    await sleep(Math.max(0, this.windowEnd - clock()));
    const eventLoop = loop.stop();
    this.sending = false;
    const drainUntil = clock() + plan.drainMs;
    const drained = () => {
      const inFlight = this.devices.some((d) => (d.inFlight > 0 || d.retry.length > 0) && !d.ended);
      // This worker's received count includes deliveries of other workers' sends, so reaching its
      // expected count does not mean its devices have everything: a device still waiting behind
      // a hole (a peer's entry slower than its own later send_ack) keeps the drain going.
      const behindHole = this.devices.some((d) => d.ahead.size > 0 && !d.ended);
      return !inFlight && !behindHole && this.stats.receivedDeliveries >= this.stats.expectedDeliveries;
    };
    while (clock() < drainUntil && !drained()) await sleep(20);
    this.stats.drainCut = !drained();
    this.flushAcks();
    for (const d of this.devices) {
      for (const sentAt of d.sendTimes.values())
        if (sentAt >= this.windowStart && sentAt < this.windowEnd) this.stats.unanswered++;
      // Seqs past a hole that never filled.
      this.stats.gaps += d.ahead.size;
      if (d.ahead.size > 0 && this.stats.holes.length < 5) this.stats.holes.push(this.describeHole(d));
    }
    return {
      ...this.stats,
      ackLatency: this.ackLatency.toData(),
      deliveryLatency: this.deliveryLatency.toData(),
      ackToDeliveryLatency: this.ackToDeliveryLatency.toData(),
      ackLagLatency: this.ackLagLatency.toData(),
      acceptedAckLatency: this.acceptedAckLatency.toData(),
      acceptedDeliveryLatency: this.acceptedDeliveryLatency.toData(),
      eventLoop,
    };
  }

  /** Ends every stream cleanly (or drops it after 5 s). */
  async close(): Promise<void> {
    clearInterval(this.ackTimer);
    for (const d of this.devices) clearTimeout(d.retryTimer);
    for (const d of this.devices) d.stream?.end();
    const deadline = clock() + 5000;
    while (this.devices.some((d) => !d.ended) && clock() < deadline) await sleep(20);
    for (const d of this.devices) if (!d.ended) d.stream?.destroy();
  }

  /**
   * Sends at the target rate in small ticks, round-robin over devices. A tick that runs late
   * sends what it owes at once, up to 100 ms worth; a device at its in-flight limit, or waiting
   * out a refusal's retry hint with its refused sends still to write again (as the SDK does), is
   * skipped, and sends no device could take are counted as skipped, so the achieved rate is
   * honest.
   */
  private pace(): void {
    const rate = this.input.rate;
    const maxBurst = Math.max(1, Math.ceil(rate / 10));
    let made = 0;
    let next = 0;
    const n = this.devices.length;
    const tick = () => {
      if (!this.sending) return;
      const now = clock();
      const due = Math.floor(((now - this.startAt) * rate) / 1000);
      let owed = due - made;
      if (owed > maxBurst) {
        if (now >= this.windowStart) this.stats.skipped += owed - maxBurst;
        owed = maxBurst;
      }
      made = due;
      while (owed > 0) {
        let found: Device | undefined;
        for (let k = 0; k < n; k++) {
          const d = this.devices[next]!;
          next = next + 1 === n ? 0 : next + 1;
          if (!d.ended && d.inFlight < this.limit(d) && d.pausedUntil <= now && d.retry.length === 0) {
            found = d;
            break;
          }
        }
        if (found === undefined) {
          if (now >= this.windowStart) this.stats.skipped += owed;
          break;
        }
        this.sendOne(found);
        owed--;
      }
      setTimeout(tick, 1);
    };
    tick();
  }

  /** How many sends the device may have in flight now: the cap, or its window below it. */
  private limit(d: Device): number {
    return d.window.limit(this.input.inflight);
  }

  /**
   * Puts sends on the device's stream up to its limit, as the SDK's outbox pumps: refused sends
   * first, in order, once their hint has passed; then, in max mode, new ones.
   */
  private pump(d: Device): void {
    if (d.ended || d.stream === undefined || clock() < d.pausedUntil) return;
    const now = clock();
    while (d.retry.length > 0 && d.inFlight < this.limit(d)) {
      const id = d.retry.shift()!;
      const sentAt = d.sendTimes.get(id);
      if (sentAt === undefined) continue;
      this.write(d, id, sentAt, now);
      if (this.inWindow(now)) this.stats.resent++;
    }
    if (this.input.rate === 0 && this.sending && d.retry.length === 0)
      while (d.inFlight < this.limit(d)) this.sendOne(d);
  }

  private sendOne(d: Device): void {
    if (d.ended || d.stream === undefined) return;
    const id = ++d.counter;
    const now = clock();
    d.sendTimes.set(id, now);
    this.write(d, id, now);
    this.count("sent", now);
  }

  /**
   * Writes send `id`. Its payload carries `sentAt` (the first attempt's time) and `at`, this
   * attempt's (later than sentAt on a resend).
   */
  private write(d: Device, id: number, sentAt: number, at = sentAt): void {
    // A fresh buffer per send: the connect client serialises later, from its queue.
    const payload = new Uint8Array(this.payloadBytes);
    const view = new DataView(payload.buffer);
    view.setFloat64(0, sentAt, true);
    view.setFloat64(8, at, true);
    if (at !== sentAt) d.attemptTimes.set(id, at);
    d.inFlight++;
    d.stream!.write({
      case: "send",
      value: create(OutgoingEntrySchema, {
        clientMsgId: `m${id}`,
        conversationId: d.conversationId,
        body: { case: "message", value: { payload } },
      }),
    });
  }

  /**
   * A refusal the SDK retries (UNAVAILABLE, or RESOURCE_EXHAUSTED with a hint): the same send
   * again after the hint (250 ms without one), in order with the device's other refused sends
   * and ahead of its new ones. Its latency still counts from the first attempt.
   */
  private retryLater(d: Device, id: number, retryAfterMs: number): void {
    const at = clock() + (retryAfterMs > 0 ? retryAfterMs : 250);
    d.pausedUntil = Math.max(d.pausedUntil, at);
    const i = d.retry.findIndex((x) => x > id);
    if (i < 0) d.retry.push(id);
    else d.retry.splice(i, 0, id);
    if (d.retryTimer === undefined) this.armRetry(d);
  }

  private armRetry(d: Device): void {
    d.retryTimer = setTimeout(
      () => {
        d.retryTimer = undefined;
        // A refusal that came meanwhile moved the pause on.
        if (clock() < d.pausedUntil) return this.armRetry(d);
        this.pump(d);
      },
      Math.max(0, d.pausedUntil - clock()),
    );
  }

  /** Whose the first seq a device never got was, for the report. */
  private describeHole(d: Device): string {
    const missing = d.lastSeq + 1n;
    const peers = this.devices.filter((o) => o !== d && o.conversationId === d.conversationId);
    const owner = d.acked.has(missing)
      ? "its own send, acked"
      : peers.some((o) => o.acked.has(missing))
        ? "a peer's send, acked to the peer"
        : "acked to no device of this load worker";
    return `${d.conversationId}: seq ${missing} missing (${owner}); ${d.ahead.size} past it`;
  }

  private count(what: "sent" | "acked" | "delivered", now: number): void {
    const slot = Math.floor((now - this.startAt) / 1000);
    const line = this.stats.timeline[what];
    if (slot >= 0 && slot < this.timelineSlots) line[slot] = (line[slot] ?? 0) + 1;
    if (now >= this.windowStart && now < this.windowEnd) this.stats[what]++;
  }

  private inWindow(t: number): boolean {
    return t >= this.windowStart && t < this.windowEnd;
  }

  private onFrame(d: Device, frame: ConnectResponse): void {
    const f = frame.frame;
    switch (f.case) {
      case "message": {
        const now = clock();
        for (const e of f.value.entries) {
          if (e.seq <= d.lastSeq || d.ahead.has(e.seq)) {
            // An own send served from the log after its send_ack filed it: expected once.
            if (!d.ownFiled.delete(e.seq)) this.stats.duplicates++;
            continue;
          }
          if (e.seq === d.lastSeq + 1n) {
            d.lastSeq = e.seq;
            advance(d);
          } else if (!this.input.echo) {
            d.ahead.add(e.seq); // the ack of an own send before it may still be on its way
          } else {
            this.stats.gaps++;
            d.lastSeq = e.seq;
          }
          if (e.body.case !== "message") continue;
          const p = e.body.value.payload;
          if (p.length < 16) continue;
          const view = new DataView(p.buffer, p.byteOffset, p.byteLength);
          const sentAt = view.getFloat64(0, true);
          if (e.senderDeviceId === d.info.deviceId) {
            if (now >= this.windowStart && now < this.windowEnd) this.stats.echoes++;
            continue;
          }
          this.count("delivered", now);
          if (this.inWindow(sentAt)) {
            this.deliveryLatency.recordMs(now - sentAt);
            this.acceptedDeliveryLatency.recordMs(now - view.getFloat64(8, true));
            this.stats.receivedDeliveries++;
            this.recordAfterAck(`${e.conversationId}:${e.seq}`, now);
          }
        }
        this.ackDirty.add(d);
        return;
      }
      case "sendAck": {
        const now = clock();
        const id = Number(f.value.clientMsgId.slice(1));
        const sentAt = d.sendTimes.get(id);
        const attemptAt = d.attemptTimes.get(id);
        d.sendTimes.delete(id);
        d.attemptTimes.delete(id);
        d.inFlight--;
        d.acked.add(f.value.seq);
        if (!this.input.echo) {
          d.ownFiled.add(f.value.seq);
          if (d.ownFiled.size > OWN_FILED_MAX) d.ownFiled.delete(d.ownFiled.values().next().value as bigint);
          if (f.value.seq > d.lastSeq) {
            d.ahead.add(f.value.seq);
            advance(d);
          }
        }
        this.count("acked", now);
        if (sentAt !== undefined && this.inWindow(sentAt)) {
          this.ackLatency.recordMs(now - sentAt);
          this.acceptedAckLatency.recordMs(now - (attemptAt ?? sentAt));
          this.stats.expectedDeliveries += d.peers;
          this.noteAck(`${f.value.conversationId}:${f.value.seq}`, now, d.peers);
        }
        d.window.acked(this.input.inflight);
        this.pump(d);
        return;
      }
      case "sendError": {
        const code = f.value.code;
        this.stats.sendErrors[String(code)] = (this.stats.sendErrors[String(code)] ?? 0) + 1;
        const reason = f.value.message.split(":", 1)[0]!.slice(0, 40);
        this.stats.sendErrorReasons[reason] = (this.stats.sendErrorReasons[reason] ?? 0) + 1;
        const id = Number(f.value.clientMsgId.slice(1));
        d.inFlight--;
        const retryAfterMs = f.value.retryAfterMs;
        if (code === Code.Unavailable && f.value.message.startsWith("server overloaded"))
          d.window.overloaded(d.inFlight);
        if (code === Code.Unavailable || (code === Code.ResourceExhausted && retryAfterMs > 0)) {
          // In max mode the resend takes this send's place in the window.
          if (d.sendTimes.has(id)) this.retryLater(d, id, retryAfterMs);
          return;
        }
        d.sendTimes.delete(id);
        d.attemptTimes.delete(id);
        if (retryAfterMs > 0) d.pausedUntil = Math.max(d.pausedUntil, clock() + retryAfterMs);
        if (this.input.rate === 0) {
          if (retryAfterMs > 0) setTimeout(() => this.pump(d), retryAfterMs);
          else this.pump(d);
        }
        return;
      }
      case "receipt":
        if (this.inWindow(clock())) this.stats.receipts++;
        return;
      case "receipts":
        if (this.inWindow(clock())) this.stats.receipts += f.value.receipts.length;
        return;
      case "caughtUp":
        this.ackDirty.add(d);
        d.caughtUp?.();
        d.caughtUp = undefined;
        return;
      case "error":
        this.stats.frameErrors++;
        return;
      default:
        return;
    }
  }

  private noteAck(key: string, at: number, peers: number): void {
    const early = this.earlyDeliveries.get(key) ?? [];
    this.earlyDeliveries.delete(key);
    for (const t of early) {
      this.ackToDeliveryLatency.recordMs(0);
      this.ackLagLatency.recordMs(at - t);
    }
    this.stats.deliveredBeforeAck += early.length;
    if (peers > early.length) this.ackedAt.set(key, { at, owed: peers - early.length });
  }

  private recordAfterAck(key: string, now: number): void {
    const acked = this.ackedAt.get(key);
    if (acked === undefined) {
      const early = this.earlyDeliveries.get(key);
      if (early === undefined) this.earlyDeliveries.set(key, [now]);
      else early.push(now);
      return;
    }
    this.ackToDeliveryLatency.recordMs(now - acked.at);
    if (--acked.owed === 0) this.ackedAt.delete(key);
  }

  private onEnd(d: Device, error: string | undefined): void {
    d.ended = true;
    d.failed?.(error ?? "stream ended before caught_up");
    d.failed = undefined;
    if (this.sending || error !== undefined) {
      this.stats.streamsEnded++;
      if (this.stats.endReasons.length < 5) this.stats.endReasons.push(error ?? "clean end");
    }
  }

  private flushAcks(): void {
    const now = clock();
    for (const d of this.ackDirty) {
      if (d.ended || d.stream === undefined || d.lastSeq <= d.ackedSeq) continue;
      d.ackedSeq = d.lastSeq;
      d.stream.write({
        case: "ack",
        value: create(AckFrameSchema, { cursors: [{ conversationId: d.conversationId, seq: d.lastSeq }] }),
      });
      if (this.inWindow(now)) this.stats.ackFrames++;
    }
    this.ackDirty.clear();
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
