import type { Entry } from "../../gen/switchboard/v1/entry_pb.js";
import { DecryptError } from "../crypto/pairwise.js";
import type { Acks } from "./acks.js";
import type { ClientContext } from "./context.js";
import type { EntryDecoder } from "./decode.js";

/** Entries handed to the app but not yet processed before the stream reader waits for the app. */
const DELIVERY_HIGH_WATER = 2_000;

/**
 * An entry encrypted for other devices only (sent before this one was linked): shown with its
 * decodeError, but not a failure to report.
 */
function notAddressed(err: Error): boolean {
  return err instanceof DecryptError && err.reason === "not-addressed";
}

/**
 * Hands entries to the app one at a time, in order, each awaited; only then is its delivered
 * cursor moved and an ack scheduled. One chain, so "caughtUp" can wait behind the backlog.
 */
export class Delivery {
  private chain: Promise<void> = Promise.resolve();
  private backlog = 0;

  constructor(
    private readonly ctx: ClientContext,
    private readonly decoder: EntryDecoder,
    private readonly acks: Acks,
  ) {}

  /** Resolves when everything handed over so far has been processed. */
  drained(): Promise<void> {
    return this.chain;
  }

  /** The chain to wait on when the app is too far behind; undefined when it is not. */
  backPressure(): Promise<void> | undefined {
    return this.backlog > DELIVERY_HIGH_WATER ? this.chain : undefined;
  }

  /** Runs a step after everything handed over so far. */
  after(step: () => void): void {
    this.chain = this.chain.then(step);
  }

  /** Queues entries (in seq order) for the app. */
  deliver(entries: Entry[]): void {
    if (entries.length === 0) return;
    this.backlog += entries.length;
    this.chain = this.chain.then(async () => {
      for (const raw of entries) {
        this.backlog -= 1;
        const entry = await this.decoder.toIncoming(raw);
        if (
          this.ctx.e2ee !== undefined &&
          entry.decodeError !== undefined &&
          !notAddressed(entry.decodeError)
        ) {
          // Never a crash, never a stuck stream: the app hears of it, and the entry is acked.
          this.ctx.events.emit("decryptFailed", {
            conversationId: raw.conversationId,
            seq: raw.seq,
            senderUserId: raw.senderUserId,
            senderDeviceId: raw.senderDeviceId,
            error: entry.decodeError,
          });
        }
        // A keys-only entry carried sender keys and nothing for the app.
        if (!entry.keysOnly) await this.ctx.events.emitAndWait("entry", entry);
        this.ctx.profile.setDelivered(raw.conversationId, raw.seq);
        this.acks.schedule(raw.conversationId, 1);
      }
    });
  }
}
