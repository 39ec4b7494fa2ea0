import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { PushMessage, PushProvider, PushTarget } from "../types.js";

/**
 * What every push provider must do, whatever its protocol. Each provider's test runs this suite
 * against a stand-in of its service (test/fakes/push/), which checks requests the way the real
 * service documents them and enforces Switchboard's contract (content-free wake-ups).
 */

/** What the push service received for one push, as the device would see it. */
export interface ReceivedPush {
  /** The data the app receives: must be exactly { c: conversation id, s: seq as a string }. */
  data: unknown;
  /** The collapse key the service was given (Topic, collapse_key, apns-collapse-id). */
  collapseKey: string | undefined;
}

/** A provider pointed at a fake service, with the fake's controls. */
export interface PushHarness {
  /** The provider under test; its per-request timeout is the one open was given. */
  provider: PushProvider;
  /** A new target the service accepts. */
  newTarget(): PushTarget;
  /** A target of another provider's kind. */
  foreignTarget: PushTarget;
  /** The service answers the next push to this target as for a target that no longer exists. */
  forgetTarget(target: PushTarget): void;
  /** The service answers the next valid push as overloaded, with Retry-After in seconds. */
  throttleNext(retryAfterSeconds: number): void;
  /** The service does not answer the next valid push within the provider's timeout. */
  stallNext(): void;
  /** The pushes the service accepted for this target, in order. */
  received(target: PushTarget): Promise<ReceivedPush[]>;
  /** Requests the service received so far, accepted or not. */
  requestCount(): number;
  /** Where requests broke the service's documented format or the content-free contract. */
  problems(): string[];
  /** Closes the provider and the service. */
  close(): Promise<void>;
}

/** Options the suite opens a harness with. */
export interface PushHarnessOptions {
  /** The provider's per-request timeout, in milliseconds. */
  timeoutMs: number;
}

const message: PushMessage = {
  conversationId: "g_0123456789abcdefghjkmnpqrs",
  seq: 42,
  collapseKey: "g_0123456789abcdefghjkmnpqrs",
  ttlSeconds: 3600,
  urgency: "high",
};

/** Runs the provider contract against one provider and its fake service. */
export function runPushProviderConformance(
  name: string,
  open: (options: PushHarnessOptions) => Promise<PushHarness>,
): void {
  describe(`push provider conformance: ${name}`, () => {
    async function withHarness(fn: (h: PushHarness) => Promise<void>, timeoutMs = 5_000): Promise<void> {
      const harness = await open({ timeoutMs });
      try {
        await fn(harness);
      } finally {
        await harness.close();
      }
    }

    test("delivers a content-free wake-up: the conversation and seq only, under the collapse key", () =>
      withHarness(async (h) => {
        const target = h.newTarget();
        assert.deepEqual(await h.provider.send(target, message), { status: "delivered" });
        const second = { ...message, seq: 43, urgency: "normal" as const };
        assert.deepEqual(await h.provider.send(target, second), { status: "delivered" });
        assert.deepEqual(h.problems(), []);
        assert.deepEqual(await h.received(target), [
          { data: { c: message.conversationId, s: "42" }, collapseKey: message.collapseKey },
          { data: { c: message.conversationId, s: "43" }, collapseKey: message.collapseKey },
        ]);
      }));

    test("a target the service no longer knows is reported gone, with the service's reason", () =>
      withHarness(async (h) => {
        const target = h.newTarget();
        h.forgetTarget(target);
        const outcome = await h.provider.send(target, message);
        assert.equal(outcome.status, "gone", JSON.stringify(outcome));
        assert.ok(outcome.status === "gone" && outcome.reason !== "");
        // Another target is unaffected.
        assert.deepEqual(await h.provider.send(h.newTarget(), message), { status: "delivered" });
      }));

    test("an overloaded service is retried after the Retry-After it gave", () =>
      withHarness(async (h) => {
        h.throttleNext(7);
        const outcome = await h.provider.send(h.newTarget(), message);
        assert.equal(outcome.status, "retry", JSON.stringify(outcome));
        assert.equal(outcome.status === "retry" ? outcome.retryAfterMs : undefined, 7_000);
      }));

    test("no answer within the timeout is retry", () =>
      withHarness(async (h) => {
        h.stallNext();
        const outcome = await h.provider.send(h.newTarget(), message);
        assert.equal(outcome.status, "retry", JSON.stringify(outcome));
      }, 500));

    test("a target of another kind fails without a request", () =>
      withHarness(async (h) => {
        const outcome = await h.provider.send(h.foreignTarget, message);
        assert.equal(outcome.status, "failed", JSON.stringify(outcome));
        assert.equal(h.requestCount(), 0);
      }));

    test("after close, sends are retry without a request", () =>
      withHarness(async (h) => {
        await h.provider.close();
        const outcome = await h.provider.send(h.newTarget(), message);
        assert.equal(outcome.status, "retry", JSON.stringify(outcome));
        assert.equal(h.requestCount(), 0);
      }));
  });
}
