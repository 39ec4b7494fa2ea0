import { monitorEventLoopDelay } from "node:perf_hooks";
import { UnavailableError, withoutStack } from "../common/errors.js";

/**
 * A send refused because the gateway is past its capacity: UNAVAILABLE with a retry hint on the
 * wire, like any UnavailableError. Its own class so a stream can hold back its later sends until
 * the hint has passed (session/sends.ts), which keeps a device's sends in the order it made them.
 */
export class OverloadError extends UnavailableError {}

/** Why a send was refused: the signal that tripped. */
export type RefusalSignal = "queue_standing" | "delivery_lag" | "in_flight_bound" | "answer_rate_bound";

/** How much send work one gateway process takes on before it pushes senders back. */
export interface SendAdmissionLimits {
  /** Sends queued for or awaiting the sequencer, all streams and unary calls together. */
  maxInFlight: number;
  /** The same, in bytes (the append items' size bound). */
  maxBytesInFlight: number;
  /**
   * Milliseconds every send answered over one interval may have waited, or every entry delivered
   * live over one interval may have lagged behind its commit (beyond the base lag), before the
   * gateway calls the queue standing and refuses new sends; also what the sends in flight may
   * be worth in answers (the answer-rate bound). 0 turns those three off (the fixed bounds stay).
   */
  queueTargetMs: number;
}

/** Length of the window over which the shortest wait is taken, in milliseconds. */
const INTERVAL_MS = 100;
/**
 * Consecutive intervals whose quickest answer was late before the queue counts as standing: one
 * slow commit (a disk that stalls once, a burst answered together) is one late interval, and
 * that is not overload.
 */
const LATE_INTERVALS = 3;
/**
 * The delivery lag's base is the least lag seen over the last BASE_BUCKETS minutes (LEDBAT's base
 * delay): the fixed part of the path and the clock offset between the sequencer's host and this
 * one, which a lag measured across two clocks always carries. Only lag above it is queueing.
 */
const BASE_BUCKET_MS = 60_000;
const BASE_BUCKETS = 10;
/**
 * The answer-rate bound takes the mean of the answers in each of the last RATE_SECONDS whole
 * seconds: one slow second (a stalled commit, a full collection) shrinks it by a tenth, not to
 * nothing. The busiest second was tried first and is no measure of the rate past capacity, where
 * seconds of 7,000 and 17,000 answers alternate (docs/benchmarks.md, twenty-first pass).
 */
const RATE_SECOND_MS = 1_000;
const RATE_SECONDS = 10;
/**
 * The answer-rate bound never falls below this many sends while the gateway answers quickly: at
 * low rates (a server just started, a quiet hour) it would otherwise refuse the first burst
 * before any rate is known. Past it, what bounds a burst is the fixed bound and the delay signals.
 */
const RATE_BOUND_FLOOR = 2_048;
/**
 * The floor is lifted while the sends answered over the rate's seconds waited on average longer
 * than this share of the target: the gateway is then past its capacity, and the rate it answers
 * at is what it can do, not what it was asked. A gateway answering fewer than the floor in the
 * target (RATE_BOUND_FLOOR / target: 4,096 a second at 500 ms) would otherwise let sends wait
 * longer than the target: two mesh gateways sharing saturated sequencers at 2,250 answers a
 * second each held 2,048 each, and accepted sends waited about 0.7 s at the median and up to
 * 1.8 s at p99 (docs/benchmarks.md, thirty-second pass). Half: once lifted, the bound holds the mean wait near
 * the target, above half of it, so the floor does not come back while the gateway stays past its
 * capacity; it comes back when answers are quick again, the load having fallen.
 */
const FLOOR_LIFTED_AT = 0.5;
/** Shortest and longest retry hint given to a sender pushed back, in milliseconds. */
const MIN_RETRY_MS = 100;
const MAX_RETRY_MS = 5_000;

/** Width of the buckets in which RefusedSends counts refused sends by when they are due back. */
const DUE_BUCKET_MS = 100;
/** Buckets enough for the longest hint, jittered: due times never wrap onto a bucket still held. */
const DUE_BUCKETS = Math.ceil((MAX_RETRY_MS * 1.5) / DUE_BUCKET_MS) + 2;

/**
 * The sends refused and not yet due back: each refusal counts until its hint has passed (to the
 * next DUE_BUCKET_MS), in a ring of buckets by due time, so the count costs the same whatever the
 * number of refusals.
 */
class RefusedSends {
  private readonly due = new Array<number>(DUE_BUCKETS).fill(0);
  private total = 0;
  /** The bucket whose sends have all come due last: the ring holds the ones after it. */
  private passed: number;

  constructor(now: number) {
    this.passed = Math.floor(now / DUE_BUCKET_MS) - 1;
  }

  /** A send was refused at `now` with a hint of `hintMs`. */
  add(now: number, hintMs: number): void {
    this.pass(now);
    this.due[Math.floor((now + hintMs) / DUE_BUCKET_MS) % DUE_BUCKETS]!++;
    this.total++;
  }

  /** Refused sends whose hint has not passed. */
  waiting(now: number): number {
    this.pass(now);
    return this.total;
  }

  /** Drops the buckets wholly before `now`. */
  private pass(now: number): void {
    const current = Math.floor(now / DUE_BUCKET_MS) - 1;
    if (current - this.passed >= DUE_BUCKETS) {
      this.due.fill(0);
      this.total = 0;
      this.passed = current;
      return;
    }
    while (this.passed < current) {
      this.passed++;
      const i = this.passed % DUE_BUCKETS;
      this.total -= this.due[i]!;
      this.due[i] = 0;
    }
  }
}

/** One delay signal: LATE_INTERVALS late intervals running make a standing queue; one on time ends it. */
class LateIntervals {
  private late = 0;
  /** While the queue stands: the measure of the last late interval, in milliseconds; else 0. */
  standing = 0;

  /** An interval closed with this measure (a wait or a lag) against the target. */
  close(measuredMs: number, targetMs: number): void {
    if (measuredMs <= targetMs) {
      this.clear();
      return;
    }
    this.late++;
    if (this.late >= LATE_INTERVALS) this.standing = measuredMs;
  }

  clear(): void {
    this.late = 0;
    this.standing = 0;
  }
}

/**
 * Admission control for a gateway's sends: what keeps a server past its capacity answering
 * quickly (a refusal the sender retries later) instead of letting acks and deliveries queue for
 * seconds behind work it cannot finish.
 *
 * Three signals. The bounds on sends in flight (count and bytes) cap the memory and the work one
 * turn of the event loop may settle, whatever the cause.
 *
 * The answer-rate bound is Little's law: past capacity an accepted send waits about the sends in
 * flight divided by the sends answered a second, whatever the fixed bound. So the gateway takes at
 * most as many as it answers in `queueTargetMs`, at the mean rate of its last ten seconds, never
 * under RATE_BOUND_FLOOR while its answers come quickly (FLOOR_LIFTED_AT): past capacity a send
 * then waits about the target on average, on any machine and behind any number of gateways.
 * Below capacity it does not bind (in flight is the rate times a wait under the target), and it
 * cannot talk itself down: should it let too few in to keep the pipeline busy, the answers
 * still come after the pipeline's shortest wait, well under the target, so the rate measured
 * times the target is more than what it let in. The fixed count was the only bound before: 10,000
 * let accepted sends wait 1.2-1.4 s at p99 on a 2-core machine; this keeps them at 0.82-0.83 s
 * there, for a tenth to a quarter fewer sends taken a second past capacity, since each commit
 * then carries fewer (docs/benchmarks.md, twenty-first pass).
 *
 * The delay signal is CoDel's idea: a burst makes some sends wait, but when even the quickest
 * send answered in an interval waited longer than the target, three intervals running, the queue
 * is standing: the process (its event loop, the sequencer, the disk) is past its capacity and more
 * sends would only wait longer. Then
 * new sends are refused until a send is answered within the target again; sends already accepted
 * go on. A send's wait counts the event loop's delay too: on a saturated thread a frame waits in
 * the socket before anyone reads it, which no answer's timing shows. So does a send another
 * thread read (the stream port's, stream-threads.ts): it waits in that thread's hand-off until
 * this one gets to it, and on a saturated main thread that wait, not the answer's, was most of
 * it: 0.5-1.3 s where the answers took about the target, so accepted sends waited 1.3-1.7 s at
 * the median past capacity (docs/benchmarks.md, thirty-eighth pass).
 *
 * The same rule holds for deliveries: when even the freshest entry pushed live to this gateway's
 * streams in an interval was committed longer ago than the target, three intervals running, the
 * path after the commit (the bus, fanout, the streams' writes) is the queue, and acks would run
 * ahead of deliveries for as long as senders are let in. The lag is measured across clocks (the
 * sequencer's commit time against this host's), so it is taken above its base: the least lag of
 * the last ten minutes, which holds the clock offset and the path's fixed cost.
 *
 * Known blind spot: past capacity the sequencer's group commit answers a whole batch in one
 * interval and nothing in the intervals before it, so answered intervals are never three running
 * and the wait signal does not fire; the in-flight bounds and the delivery signal push back
 * instead. Counting a still queue as late makes it fire, and was measured to cost more in
 * refusals than it saved (docs/benchmarks.md, seventh pass).
 *
 * A refusal is UNAVAILABLE with a retry hint (jittered up to half again, so the senders pushed
 * back together do not come back together): the server's state, not the caller's fault, and safe
 * to retry with the same client_msg_id. The hint is the longer of twice the standing wait and the
 * time the gateway takes to answer the sends already refused and waiting out their hints, at the
 * rate it has shown (spreadMs), so the n-th of a crowd refused together comes back after about n
 * answers. A fixed short hint let a crowd of refused senders come back faster than they could be
 * taken: at 10,000 devices past capacity, refusals ran at 9,000 a second, each costing the event
 * loop near what a whole send does, and acks fell to a tenth of capacity without recovering
 * (docs/benchmarks.md, twenty-third pass). Now the waiting come back about as fast as sends are
 * answered, and a send is refused a few times, not dozens.
 */
export class SendAdmission {
  private inFlight = 0;
  private bytes = 0;
  private windowStart: number;
  private windowMin = Number.POSITIVE_INFINITY;
  /** The sends' signal: the quickest answer of each interval against the target. */
  private readonly waits = new LateIntervals();
  /** The interval's least hand-off wait (handedOver), in milliseconds. */
  private handOffMin = Number.POSITIVE_INFINITY;
  /** The interval's least delivery lag, in milliseconds of wall clock. */
  private lagMin = Number.POSITIVE_INFINITY;
  /** The deliveries' signal: each interval's freshest delivery, its lag above base, against the target. */
  private readonly lags = new LateIntervals();
  /** Least lag per minute, the last BASE_BUCKETS minutes; the current minute last. */
  private readonly baseMinima: number[] = [];
  private baseBucketStart = Number.NEGATIVE_INFINITY;
  /** Answers in each of the last RATE_SECONDS whole seconds, oldest first. */
  private readonly answersPerSecond: number[] = [];
  private answersThisSecond = 0;
  /** The answers' waits summed, in milliseconds, for each second of answersPerSecond. */
  private readonly waitedPerSecond: number[] = [];
  private waitedThisSecond = 0;
  /** For each second of answersPerSecond, whether the gateway refused a send in it (was at its limits). */
  private readonly refusingSeconds: boolean[] = [];
  private refusedThisSecond = false;
  private secondStart: number;
  private readonly refusedSends: RefusedSends;

  constructor(
    private readonly limits: SendAdmissionLimits,
    /** Told of each refusal: why, and the sends in flight (to count and log it). */
    private readonly onRefuse: (reason: RefusalSignal, inFlight: number) => void = () => {},
    private readonly now: () => number = () => performance.now(),
    private readonly random: () => number = Math.random,
    /**
     * The event loop's typical delay since the last call, in milliseconds (eventLoopDelay()).
     * A send waits that long in the socket before the gateway even reads it, a wait the answers
     * cannot show: it is added to the quickest answer's wait.
     */
    private readonly loopDelayMs: () => number = () => 0,
  ) {
    this.windowStart = now();
    this.secondStart = this.windowStart;
    this.refusedSends = new RefusedSends(this.windowStart);
  }

  /** Sends accepted and not yet answered. */
  get sendsInFlight(): number {
    return this.inFlight;
  }

  /**
   * What the sends in flight may be at most right now: the fixed bound, or fewer when the answer
   * rate says a send would wait longer than the target behind them.
   */
  get inFlightBound(): number {
    return this.boundAt(this.now());
  }

  private boundAt(now: number): number {
    const { maxInFlight, queueTargetMs } = this.limits;
    if (queueTargetMs <= 0) return maxInFlight;
    const perSecond = this.answerRate(now);
    if (perSecond === undefined) return Math.min(maxInFlight, RATE_BOUND_FLOOR);
    const byRate = Math.ceil((perSecond * queueTargetMs) / RATE_SECOND_MS);
    const floor = this.meanWaitMs() > queueTargetMs * FLOOR_LIFTED_AT ? 1 : RATE_BOUND_FLOOR;
    return Math.min(maxInFlight, Math.max(floor, byRate));
  }

  /**
   * The mean wait of the sends answered in the rate's seconds (answerRate rolls them first), in
   * milliseconds; 0 when none was.
   */
  private meanWaitMs(): number {
    let answered = 0;
    let waited = 0;
    for (let i = 0; i < this.answersPerSecond.length; i++) {
      answered += this.answersPerSecond[i]!;
      waited += this.waitedPerSecond[i]!;
    }
    return answered === 0 ? 0 : waited / answered;
  }

  /**
   * Sends answered a second, the mean of the last RATE_SECONDS whole seconds, or of those of them
   * in which a send was refused; undefined when there is no such second.
   */
  private answerRate(now: number, refusingOnly = false): number | undefined {
    this.rollSecond(now);
    let answered = 0;
    let seconds = 0;
    for (let i = 0; i < this.answersPerSecond.length; i++) {
      if (refusingOnly && !this.refusingSeconds[i]) continue;
      answered += this.answersPerSecond[i]!;
      seconds++;
    }
    return seconds === 0 ? undefined : answered / seconds;
  }

  /** True while a delay signal (sends' waits or deliveries' lag) says the queue is standing. */
  get overloaded(): boolean {
    this.roll(this.now());
    return this.waits.standing > 0 || this.lags.standing > 0;
  }

  /**
   * Entries were pushed live to this gateway's streams; `lagMs` is the least of their lags
   * (wall-clock now less their commit time). Catch-up reads are not live and are not told.
   */
  delivered(lagMs: number): void {
    this.roll(this.now());
    if (lagMs < this.lagMin) this.lagMin = lagMs;
  }

  /**
   * Reads another thread made (the stream port's) reach this one `waitedMs` after it read them:
   * the sends among them waited that long before the gateway could read them, and their answers
   * cannot show it. The least such wait of an interval is added to its quickest answer's wait,
   * as the event loop's delay is (the larger of the two: a hand-off's wait holds the loop's).
   */
  handedOver(waitedMs: number): void {
    this.roll(this.now());
    if (waitedMs < this.handOffMin) this.handOffMin = waitedMs;
  }

  /**
   * Takes a send of `bytes` in, or throws UnavailableError (with its retry hint) when the gateway
   * is past its bounds or its queue is standing. Every admitted send must be `settled` once.
   */
  admit(bytes: number): void {
    const now = this.now();
    this.roll(now);
    const { maxInFlight, maxBytesInFlight } = this.limits;
    const waited = this.waits.standing;
    if (waited > 0) {
      this.onRefuse("queue_standing", this.inFlight);
      throw this.refusal(
        now,
        `server overloaded: sends have waited at least ${Math.round(waited)} ms for the last ${INTERVAL_MS} ms; retry later`,
        waited,
      );
    }
    const lagged = this.lags.standing;
    if (lagged > 0) {
      this.onRefuse("delivery_lag", this.inFlight);
      throw this.refusal(
        now,
        `server overloaded: deliveries have been at least ${Math.round(lagged)} ms behind their commits for the last ${INTERVAL_MS} ms; retry later`,
        lagged,
      );
    }
    const bound = this.boundAt(now);
    if (bound < maxInFlight && this.inFlight >= bound) {
      this.onRefuse("answer_rate_bound", this.inFlight);
      throw this.refusal(
        now,
        `server overloaded: ${this.inFlight} sends in flight, what this gateway answers in ${this.limits.queueTargetMs} ms; retry later`,
        0,
      );
    }
    if (this.inFlight >= maxInFlight || (this.inFlight > 0 && this.bytes + bytes > maxBytesInFlight)) {
      this.onRefuse("in_flight_bound", this.inFlight);
      throw this.refusal(
        now,
        `server overloaded: ${this.inFlight} sends (${this.bytes} bytes) in flight, at most ${maxInFlight} (${maxBytesInFlight} bytes); retry later`,
        0,
      );
    }
    this.inFlight++;
    this.bytes += bytes;
  }

  /** An admitted send was answered (either way) after waiting `waitedMs`. */
  settled(bytes: number, waitedMs: number): void {
    this.inFlight--;
    this.bytes -= bytes;
    const now = this.now();
    // The interval it was answered in: close the last one first if it is over.
    this.roll(now);
    if (waitedMs < this.windowMin) this.windowMin = waitedMs;
    this.rollSecond(now);
    this.answersThisSecond++;
    this.waitedThisSecond += waitedMs;
  }

  /** Closes the answer count's second once it is over; seconds with no answer count 0. */
  private rollSecond(now: number): void {
    const elapsed = now - this.secondStart;
    if (elapsed < RATE_SECOND_MS) return;
    const seconds = Math.floor(elapsed / RATE_SECOND_MS);
    this.answersPerSecond.push(this.answersThisSecond);
    this.waitedPerSecond.push(this.waitedThisSecond);
    this.refusingSeconds.push(this.refusedThisSecond);
    for (let i = 1; i < Math.min(seconds, RATE_SECONDS); i++) {
      this.answersPerSecond.push(0);
      this.waitedPerSecond.push(0);
      this.refusingSeconds.push(false);
    }
    while (this.answersPerSecond.length > RATE_SECONDS) {
      this.answersPerSecond.shift();
      this.waitedPerSecond.shift();
      this.refusingSeconds.shift();
    }
    this.answersThisSecond = 0;
    this.waitedThisSecond = 0;
    this.refusedThisSecond = false;
    this.secondStart += seconds * RATE_SECOND_MS;
  }

  /** Closes the interval once it is over: the queue stands if its quickest answer was late. */
  private roll(now: number): void {
    if (now - this.windowStart < INTERVAL_MS || this.limits.queueTargetMs <= 0) return;
    const handOff = this.handOffMin === Number.POSITIVE_INFINITY ? 0 : this.handOffMin;
    this.handOffMin = Number.POSITIVE_INFINITY;
    const beforeRead = Math.max(this.loopDelayMs(), handOff);
    if (this.windowMin !== Number.POSITIVE_INFINITY) {
      this.waits.close(this.windowMin + beforeRead, this.limits.queueTargetMs);
    } else if (this.inFlight === 0) {
      // Nothing answered because nothing was asked: no queue.
      this.waits.clear();
    }
    // Nothing answered with sends in flight: the queue is not moving; the last verdict holds.
    this.rollDeliveries(now);
    this.windowStart = now;
    this.windowMin = Number.POSITIVE_INFINITY;
  }

  /**
   * The delivery signal's half of closing an interval. An interval with no live delivery clears
   * it: there is no evidence of a queue, and holding the verdict would refuse the very sends
   * whose deliveries could show the queue gone.
   */
  private rollDeliveries(now: number): void {
    const least = this.lagMin;
    this.lagMin = Number.POSITIVE_INFINITY;
    if (least === Number.POSITIVE_INFINITY) {
      this.lags.clear();
      return;
    }
    if (now - this.baseBucketStart >= BASE_BUCKET_MS) {
      this.baseMinima.push(least);
      if (this.baseMinima.length > BASE_BUCKETS) this.baseMinima.shift();
      this.baseBucketStart = now;
    } else {
      const last = this.baseMinima.length - 1;
      if (least < this.baseMinima[last]!) this.baseMinima[last] = least;
    }
    this.lags.close(least - Math.min(...this.baseMinima), this.limits.queueTargetMs);
  }

  private refusal(now: number, message: string, waitedMs: number): OverloadError {
    const base = Math.min(MAX_RETRY_MS, Math.max(MIN_RETRY_MS, 2 * waitedMs, this.spreadMs(now)));
    const retryAfterMs = Math.round(base * (1 + this.random() / 2));
    this.refusedSends.add(now, retryAfterMs);
    // The second it was refused in, not one left open since the last answer.
    this.rollSecond(now);
    this.refusedThisSecond = true;
    // Refused by the thousand per second past capacity: no stack (errors.ts, withoutStack).
    return withoutStack(() => new OverloadError(message, { retryAfterMs }));
  }

  /**
   * How long this gateway takes to answer the refused senders still waiting, in milliseconds: a
   * hint that long brings them back about as fast as sends are answered. The rate is what the
   * gateway answered in the seconds it refused sends in (of the last ten): answers while it was
   * at its limits measure what it can do. Without such a second, its answers measured only what
   * it was asked, so it assumes what the answer-rate bound's floor does of any gateway
   * (RATE_BOUND_FLOOR in the target: 4,096 a second at 500 ms), or its mean if higher: a burst
   * at a quiet gateway is not told to wait seconds for the rate of its quiet hour. 0 when the
   * delay signals and the answer-rate bound are off.
   */
  private spreadMs(now: number): number {
    const { queueTargetMs } = this.limits;
    if (queueTargetMs <= 0) return 0;
    const waiting = this.refusedSends.waiting(now);
    if (waiting === 0) return 0;
    const perSecond =
      this.answerRate(now, true) ??
      Math.max(this.answerRate(now) ?? 0, (RATE_BOUND_FLOOR * RATE_SECOND_MS) / queueTargetMs);
    if (perSecond === 0) return MAX_RETRY_MS;
    return (waiting / perSecond) * RATE_SECOND_MS;
  }
}

/** How often eventLoopDelay samples the loop, in milliseconds. */
const LOOP_SAMPLE_MS = 10;

/**
 * The event loop's median delay since the last read, in milliseconds (Node's own histogram,
 * sampling every LOOP_SAMPLE_MS), for SendAdmission; `stop` ends the sampling. Node records the
 * time between two samples, so an idle loop reads the sampling interval itself (10.1 ms with
 * Node 20), not 0: that interval is taken off, or every send would count 10 ms it never waited.
 */
export function eventLoopDelay(): { read: () => number; stop: () => void } {
  const histogram = monitorEventLoopDelay({ resolution: LOOP_SAMPLE_MS });
  histogram.enable();
  return {
    read: () => {
      const ms = histogram.count > 0 ? Math.max(0, histogram.percentile(50) / 1e6 - LOOP_SAMPLE_MS) : 0;
      histogram.reset();
      return ms;
    },
    stop: () => histogram.disable(),
  };
}
