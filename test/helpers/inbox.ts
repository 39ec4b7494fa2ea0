import assert from "node:assert/strict";
import type { SwitchboardClient } from "../../sdk/client.js";
import type { DecryptFailedEvent, EntryKind, IncomingEntry } from "../../sdk/types.js";

const decoder = new TextDecoder();

/**
 * Polls until check holds, or fails with message() after timeoutMs. Between checks it runs step
 * when given (a test that must act to make progress), else waits 20 ms.
 */
export async function eventually(
  check: () => boolean | Promise<boolean>,
  message: () => string,
  timeoutMs = 20_000,
  step: () => Promise<unknown> = () => new Promise((resolve) => setTimeout(resolve, 20)),
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms: ${message()}`);
    await step();
  }
}

/** Everything one SDK client handed to the app ("entry" events), and its decryption failures. */
export class Inbox {
  readonly entries: IncomingEntry[] = [];
  readonly failures: DecryptFailedEvent[] = [];

  constructor(
    readonly name: string,
    readonly client: SwitchboardClient,
  ) {
    client.on("entry", (e: IncomingEntry) => {
      this.entries.push(e);
    });
    client.on("decryptFailed", (f: DecryptFailedEvent) => {
      this.failures.push(f);
    });
  }

  /** The UTF-8 payloads of the entries of a kind handed to the app, in arrival order. */
  texts(kind: EntryKind = "message"): string[] {
    return this.entries
      .filter((e) => e.kind === kind && e.payload !== undefined)
      .map((e) => decoder.decode(e.payload));
  }

  /** The message whose payload is this text, if it arrived. */
  byText(text: string): IncomingEntry | undefined {
    return this.entries.find(
      (e) => e.kind === "message" && e.payload !== undefined && decoder.decode(e.payload) === text,
    );
  }

  /** Waits until messages with all of these texts arrived. */
  async has(...texts: string[]): Promise<void> {
    await eventually(
      () => {
        const got = this.texts();
        return texts.every((t) => got.includes(t));
      },
      () => `${this.name} has ${JSON.stringify(this.texts())}, wants ${JSON.stringify(texts)}`,
    );
  }

  /** Waits for the entry at seq of a conversation and returns it. */
  async entry(conversationId: string, seq: bigint, timeoutMs = 20_000): Promise<IncomingEntry> {
    const find = () => this.entries.find((e) => e.conversationId === conversationId && e.seq === seq);
    await eventually(
      () => find() !== undefined,
      () =>
        `${this.name} has seqs ${this.entries
          .filter((e) => e.conversationId === conversationId)
          .map((e) => e.seq)
          .join(",")} of ${conversationId}, wants ${seq}; failures: ${this.failures
          .map((f) => f.error.message)
          .join("; ")}`,
      timeoutMs,
    );
    return find()!;
  }
}
