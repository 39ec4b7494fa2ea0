import assert from "node:assert/strict";
import type { SwitchboardClient } from "../../sdk/client.js";
import type { DecryptFailedEvent, IncomingEntry } from "../../sdk/types.js";

/** Polls until check holds, or fails with message() after timeoutMs. */
export async function eventually(
  check: () => boolean,
  message: () => string,
  timeoutMs = 20_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) assert.fail(`timed out: ${message()}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
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
