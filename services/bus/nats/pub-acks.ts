/**
 * JetStream publishes and their acknowledgements, matched on one inbox subscription.
 *
 * A JetStream publish is a core NATS publish with a reply subject: the stream answers there with
 * its PubAck (`{"stream", "seq", "duplicate"}`) or an error (`{"error": {"code", "description"}}`),
 * and the server itself answers with a 503 status when no stream takes the subject. nats.js's
 * `js.publish` makes each of them a request of its own: a request object, a timer, a promise
 * for the timeout and, on every success, a NatsError built with its stack trace to cancel the
 * request it has just answered. That cost a publish 40 µs of the client's CPU against 10-14 for
 * the same publish here (bench/jetstream-publish.ts: 40,000 publishes, 256 in flight, to a real
 * nats-server), and the sequencer publishes every entry and receipt it commits: a fifth of a
 * mesh sequencer's main thread went to the publishes and their answers, a tenth since
 * (docs/benchmarks.md, forty-first pass).
 *
 * What this keeps of `js.publish`: the same message on the wire, headers included; the answer
 * read as nats.js reads it (a 503 status without a body is "no responders", an `error` or an
 * empty `stream` is a failure); a deadline per publish; no retry (nats.js retries once by
 * default, that is, not at all). What it does without: a timer per publish. One timer runs at a
 * time, at the earliest deadline of the publishes waiting, and times out every one past its own.
 * What waits is bounded by the caller: CommittedStream issues a publish only into a free slot of
 * its `maxPublishesInFlight`.
 */
import { createInbox, type Msg, type NatsConnection, type NatsError, type Subscription } from "nats";

/** What the stream answered to a publish it stored. */
export interface PubAck {
  stream: string;
  seq: number;
  /** The message id was within the stream's duplicate window: stored once, before. */
  duplicate: boolean;
}

/** A publish whose answer has not come. */
interface Waiting {
  deadline: number;
  resolve(ack: PubAck): void;
  reject(err: Error): void;
}

/** A failed publish: `code` is the stream's error code, or "503" when no stream took it. */
export class PublishError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
    this.name = "PublishError";
  }
}

const decoder = new TextDecoder();

export class PubAcks {
  /** `<inbox>.`: each publish's reply subject is this and its token. */
  private readonly prefix: string;
  private readonly subscription: Subscription;
  private nextToken = 0;
  /** By token, in the order published. */
  private readonly waiting = new Map<string, Waiting>();
  private timer: NodeJS.Timeout | undefined;
  private closedBy: Error | undefined;

  constructor(private readonly nc: NatsConnection) {
    // The connections here keep nats.js's default inbox prefix (connection.ts sets none).
    this.prefix = `${createInbox()}.`;
    this.subscription = nc.subscribe(`${this.prefix}*`, {
      callback: (err, msg) => this.answer(err, msg),
    });
    // The connection closed for good (ours closed it, or it gave up): nothing will answer.
    void nc.closed().then((err) => this.close(err instanceof Error ? err : undefined));
  }

  /** Publishes data to subject; settles with the stream's answer, or a timeout at deadline (Date.now()). */
  publish(subject: string, data: Uint8Array, headers: Msg["headers"], deadline: number): Promise<PubAck> {
    if (this.closedBy !== undefined) return Promise.reject(this.closedBy);
    const token = (this.nextToken++).toString(36);
    const answered = new Promise<PubAck>((resolve, reject) => {
      this.waiting.set(token, { deadline, resolve, reject });
    });
    try {
      this.nc.publish(subject, data, { reply: this.prefix + token, ...(headers && { headers }) });
    } catch (err) {
      // Closed or draining, or a subject the client refuses: nothing was sent.
      this.waiting.delete(token);
      return Promise.reject(err);
    }
    if (this.timer === undefined) this.arm(deadline);
    return answered;
  }

  private answer(err: NatsError | null, msg: Msg): void {
    // A subscription-wide error comes without a message: the publishes it concerns time out.
    if (msg === undefined) return;
    const token = msg.subject.slice(this.prefix.length);
    const w = this.waiting.get(token);
    if (w === undefined) return; // Timed out already, or not ours.
    this.waiting.delete(token);
    if (err !== null) {
      w.reject(err);
      return;
    }
    const failure = failureOf(msg);
    if (failure !== undefined) {
      w.reject(failure);
      return;
    }
    let ack: Partial<PubAck> & { error?: { code?: number; description?: string } };
    try {
      ack = JSON.parse(decoder.decode(msg.data)) as typeof ack;
    } catch {
      w.reject(new PublishError("the stream's answer is not JSON", "invalid_ack"));
      return;
    }
    if (ack.error !== undefined) {
      w.reject(
        new PublishError(ack.error.description ?? "the stream refused the publish", String(ack.error.code)),
      );
      return;
    }
    if (typeof ack.stream !== "string" || ack.stream === "" || typeof ack.seq !== "number") {
      w.reject(new PublishError("the stream's answer names no stream", "invalid_ack"));
      return;
    }
    w.resolve({ stream: ack.stream, seq: ack.seq, duplicate: ack.duplicate === true });
  }

  /**
   * Schedules the sweep for the earliest deadline waiting. Armed by the first publish into an
   * empty timer, whose deadline is the earliest: every caller gives the same timeout.
   */
  private arm(at: number): void {
    this.timer = setTimeout(() => this.sweep(), Math.max(0, at - Date.now()));
    // Waiting answers do not keep a process alive that has nothing else to do.
    this.timer.unref();
  }

  /** Times out the publishes past their deadline; arms again for the next one. */
  private sweep(): void {
    this.timer = undefined;
    const now = Date.now();
    let next = Number.POSITIVE_INFINITY;
    for (const [token, w] of this.waiting) {
      if (w.deadline <= now) {
        this.waiting.delete(token);
        w.reject(
          new PublishError("nats bus: no answer from the stream before the publish's deadline", "timeout"),
        );
      } else if (w.deadline < next) next = w.deadline;
    }
    if (next !== Number.POSITIVE_INFINITY) this.arm(next);
  }

  /** Fails every publish waiting and every later one. */
  close(cause?: Error): void {
    if (this.closedBy !== undefined) return;
    this.closedBy = new PublishError(
      `nats bus: connection closed${cause ? `: ${cause.message}` : ""}`,
      "closed",
    );
    clearTimeout(this.timer);
    this.timer = undefined;
    for (const w of this.waiting.values()) w.reject(this.closedBy);
    this.waiting.clear();
    if (!this.subscription.isClosed()) this.subscription.unsubscribe();
  }
}

/** A status answer without a body is the server's, not the stream's: 503 is "no responders". */
function failureOf(msg: Msg): PublishError | undefined {
  const h = msg.headers;
  if (msg.data.length !== 0 || h === undefined || !h.hasError) return undefined;
  return h.code === 503
    ? new PublishError("nats bus: no stream takes this subject (no responders)", "503")
    : new PublishError(h.description || `status ${h.code}`, String(h.code));
}
