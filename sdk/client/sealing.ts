import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { OutgoingEntrySchema } from "../../gen/switchboard/v1/entry_pb.js";
import type { DeviceMismatch } from "../../gen/switchboard/v1/gateway_pb.js";
import { PAIRWISE_PAYLOAD_TYPE, type SealedPart } from "../e2ee.js";
import type { OutboxItem, SendResult } from "../types.js";
import { type BodyOf, messageBody, newClientMsgId, outboxEncoding, withCiphertexts } from "./bodies.js";
import type { ClientContext } from "./context.js";
import type { PendingSend, SendQueue } from "./outbox.js";

/**
 * Seals a content, refusing what no device can read or what exceeds the limit. `freshMembers`:
 * a group's member list is read again first (no stream brings the membership entries).
 */
export async function sealParts(
  ctx: ClientContext,
  conversationId: string,
  content: Uint8Array,
  freshMembers = false,
): Promise<SealedPart[]> {
  const e2ee = ctx.requireE2ee();
  const max = ctx.maxPayloadBytes();
  let parts: SealedPart[];
  // Every content carries this device's profile key, so whoever can read it can open the
  // device's avatar (docs/encryption.md, "Avatars").
  const withKey = await ctx.profileKeys.attach(content);
  try {
    parts = await e2ee.seal(conversationId, withKey, max, { freshMembers });
  } catch (err) {
    throw ConnectError.from(err, Code.FailedPrecondition);
  }
  for (const part of parts) {
    if (part.payloadType === PAIRWISE_PAYLOAD_TYPE && part.devicePayloads.length === 0) {
      // A direct message for no device at all: nobody can be reached yet.
      throw new ConnectError(
        "no device of the conversation has keys in the key directory yet; nothing can be encrypted",
        Code.FailedPrecondition,
      );
    }
    const total =
      part.payload.byteLength + part.devicePayloads.reduce((n, c) => n + c.ciphertext.byteLength, 0);
    if (total > max) {
      throw new ConnectError(
        `ciphertexts of ${total} bytes for ${part.devicePayloads.length} devices exceed the server's limit of ${max}`,
        Code.InvalidArgument,
      );
    }
  }
  return parts;
}

/**
 * End-to-end encrypted sends through the outbox: the plaintext intent is written first, then
 * sealed on one chain (one send at a time, so sends leave in the order their sender keys
 * advanced), and sealed again after a refusal for mismatched devices.
 */
export class Sealer {
  /** Encrypted sends are sealed and queued one at a time, so they leave in the order sealed. */
  private chain: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly ctx: ClientContext,
    private readonly queue: SendQueue,
    /** True while a stream is up: without one, a group's member list is read again first. */
    private readonly connected: () => boolean,
  ) {}

  /** Runs a step on the sealing chain, after everything sealed before it; failures are reported. */
  onChain(run: () => Promise<void>): void {
    const next = this.chain.then(run, run);
    this.chain = next.catch(() => {});
    next.catch((err: unknown) => this.ctx.backgroundFailed(err));
  }

  /** Intents written before a crash, never encrypted: encrypted now, in their order. */
  resumeIntents(): void {
    for (const p of this.queue.sends.values()) if (p.state === "sealing") this.schedule(p);
  }

  /**
   * Queues an encrypted send: the plaintext intent is written to the outbox first (durable before
   * anything is encrypted, so a crash loses nothing the app handed over), then the content is
   * encrypted for the conversation on the sealing chain, one send at a time, and the ciphertexts
   * replace the intent in the outbox (after any keys-only parts a group's key distribution
   * needs). Sends leave in the order their sender keys advanced.
   */
  async send(
    conversationId: string,
    content: Uint8Array,
    clientMsgId: string | undefined,
    body: BodyOf,
  ): Promise<SendResult> {
    this.ctx.requireE2ee();
    if (this.ctx.closed) throw this.ctx.closedError();
    const id = clientMsgId ?? newClientMsgId();
    const existing = this.queue.sends.get(id);
    if (existing !== undefined) return existing.promise;
    const outgoing = create(OutgoingEntrySchema, {
      clientMsgId: id,
      conversationId,
      body: body(new Uint8Array(), [], 0),
    });
    const item: OutboxItem = {
      clientMsgId: id,
      conversationId,
      outgoing: outboxEncoding(outgoing),
      createdAtMs: Date.now(),
      plaintext: Buffer.from(content).toString("base64"),
      sealed: false,
    };
    const pending = await this.queue.add(item, outgoing, "sealing");
    this.schedule(pending);
    return pending.promise;
  }

  /**
   * Queues a keys-only part (a group's sender key for devices that lack it) as its own send;
   * registered before its first await, so it keeps its place in the order.
   */
  async queueKeysOnly(conversationId: string, part: SealedPart): Promise<void> {
    const e2ee = this.ctx.requireE2ee();
    const partId = newClientMsgId();
    await e2ee.rememberSent(partId, part.content);
    const sent = this.queue.enqueue(
      conversationId,
      messageBody(part.payload, part.devicePayloads, part.payloadType),
      partId,
      part.content,
    );
    const keys = this.queue.sends.get(partId);
    if (keys !== undefined) keys.distributed = part.distributed;
    sent.catch(() => {});
  }

  /** Encrypts a send whose intent is in the outbox, on the sealing chain (see send). */
  private schedule(p: PendingSend): void {
    if (p.sealScheduled === true) return;
    p.sealScheduled = true;
    const e2ee = this.ctx.requireE2ee();
    const sends = this.queue.sends;
    const id = p.item.clientMsgId;
    const run = async (): Promise<void> => {
      if (sends.get(id) !== p) return;
      try {
        const content = Buffer.from(p.item.plaintext ?? "", "base64");
        // Kept first: this device's own entry comes back without a ciphertext for it.
        await e2ee.rememberSent(id, content);
        const parts = await sealParts(this.ctx, p.item.conversationId, content, !this.connected());
        for (const part of parts) {
          if (part.keysOnly) {
            await this.queueKeysOnly(p.item.conversationId, part);
            continue;
          }
          const outgoing = withCiphertexts(p.outgoing, part);
          const { sealed: _intent, ...rest } = p.item;
          const item: OutboxItem = { ...rest, outgoing: outboxEncoding(outgoing) };
          if (sends.get(id) !== p) return;
          // Behind the keys-only parts just queued, and behind every send sealed before it.
          sends.delete(id);
          sends.set(id, p);
          p.state = "persisting";
          await this.ctx.profile.addToOutbox(item);
          p.outgoing = outgoing;
          p.item = item;
          p.distributed = part.distributed;
          if (p.state === "persisting") p.state = "queued";
        }
        this.queue.pump();
      } catch (err) {
        if (this.ctx.closed || sends.get(id) !== p) return; // the intent stays in the outbox
        const error = ConnectError.from(err, Code.FailedPrecondition);
        if (error.code === Code.Unavailable || error.code === Code.DeadlineExceeded) {
          // The server is away: try again later; the intent stays in the outbox meanwhile.
          p.state = "sealing";
          p.sealScheduled = false;
          p.retries += 1;
          p.timer = setTimeout(
            () => {
              p.timer = undefined;
              if (sends.get(id) === p) this.schedule(p);
            },
            Math.min(30_000, 250 * 2 ** Math.min(p.retries, 7)),
          );
          return;
        }
        this.queue.fail(p, error);
      }
    };
    const next = this.chain.then(run, run);
    this.chain = next.catch(() => {});
  }

  /**
   * The server refused a send for mismatched devices: fix the device set (new sessions for
   * missing and stale devices, none for extra ones; a new sender key in a group that lost a
   * device), encrypt the kept plaintext again, persist the new ciphertexts and resend with the
   * same client_msg_id.
   */
  async reencrypt(p: PendingSend, mismatch: DeviceMismatch): Promise<void> {
    const e2ee = this.ctx.e2ee;
    const sends = this.queue.sends;
    const id = p.item.clientMsgId;
    try {
      if (e2ee === undefined || p.item.plaintext === undefined) throw new Error("not an encrypted send");
      await e2ee.applyMismatch(mismatch, p.item.conversationId);
      const content = Buffer.from(p.item.plaintext, "base64");
      const parts = await sealParts(this.ctx, p.item.conversationId, content);
      const part = parts[0];
      if (parts.length !== 1 || part === undefined) {
        throw new Error(
          "after the device change the sender key must go to more devices than fit in one message; send again",
        );
      }
      const outgoing = withCiphertexts(p.outgoing, part);
      const item: OutboxItem = { ...p.item, outgoing: outboxEncoding(outgoing) };
      if (sends.get(id) !== p) return;
      await this.ctx.profile.addToOutbox(item);
      p.outgoing = outgoing;
      p.item = item;
      p.distributed = part.distributed;
    } catch (err) {
      if (sends.get(id) !== p) return;
      this.queue.fail(p, ConnectError.from(err, Code.FailedPrecondition));
      return;
    }
    if (sends.get(id) !== p || p.state !== "waiting") return;
    p.state = "queued";
    this.queue.pump();
  }
}
