import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { Client } from "@connectrpc/connect";
import type { DirectoryService } from "../../gen/switchboard/internal/v1/directory_pb.js";
import { createLogger } from "../common/log.js";
import { Notifier, type NotifierOptions, type WakeUp } from "./notifier.js";
import { targetToWire } from "./targets.js";
import type { PushMessage, PushOutcome, PushProvider, PushTarget } from "./types.js";

const log = createLogger({ level: "silent" });
const target: PushTarget = { kind: "fcm", token: "token-1" };

/** A provider that records pushes and answers from a script (then "delivered"). */
class ScriptedProvider implements PushProvider {
  readonly kind = "fcm" as const;
  readonly sent: Array<{ at: number; message: PushMessage }> = [];
  constructor(private readonly script: PushOutcome[] = []) {}
  async send(_t: PushTarget, message: PushMessage): Promise<PushOutcome> {
    this.sent.push({ at: Date.now(), message });
    return this.script.shift() ?? { status: "delivered" };
  }
  async close(): Promise<void> {}
}

function directory(devices: string[]) {
  const dropped: Array<{ deviceId: string; targetId: string }> = [];
  const client = {
    async getPushTargets(req: { deviceIds: string[] }) {
      return {
        targets: req.deviceIds
          .filter((id) => devices.includes(id))
          .map((deviceId) => ({
            deviceId,
            userId: "u",
            targetId: `t-${deviceId}`,
            target: targetToWire(target),
          })),
      };
    },
    async dropPushTarget(req: { deviceId: string; targetId: string }) {
      dropped.push(req);
      return { dropped: true };
    },
  };
  return { client: client as unknown as Client<typeof DirectoryService>, dropped };
}

function wake(deviceId: string, conversationId: string, seq: number): WakeUp {
  return { userId: "u", deviceId, conversationId, seq, urgent: true };
}

async function until(predicate: () => boolean, what: string, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const fast: Partial<NotifierOptions> = { retryBaseMs: 10, retryCapMs: 40, random: () => 1 };

describe("Notifier", () => {
  it("collapses a burst for one device and conversation into one push with the latest seq", async () => {
    const provider = new ScriptedProvider();
    const { client } = directory(["d1"]);
    const notifier = new Notifier(client, [provider], log, fast);
    // The directory answers asynchronously, so the burst lands while the first push is pending.
    notifier.notify([wake("d1", "c1", 1)]);
    notifier.notify([wake("d1", "c1", 2), wake("d1", "c1", 3), wake("d1", "c2", 1)]);
    await until(() => notifier.size === 0, "queue drained");
    const c1 = provider.sent.filter((s) => s.message.conversationId === "c1");
    assert.ok(c1.length <= 2, `at most a push and one follow-up, got ${c1.length}`);
    assert.equal(c1[c1.length - 1]?.message.seq, 3, "the last push names the latest seq");
    assert.equal(c1[0]?.message.collapseKey, "c1");
    assert.equal(provider.sent.filter((s) => s.message.conversationId === "c2").length, 1);
    assert.ok(notifier.metrics.collapsed >= 2);
    await notifier.close();
  });

  it("rate-limits pushes per device", async () => {
    const provider = new ScriptedProvider();
    const { client } = directory(["d1", "d2"]);
    const notifier = new Notifier(client, [provider], log, {
      ...fast,
      perDevicePerMinute: 60,
      perDeviceBurst: 2,
    });
    notifier.notify([wake("d1", "a", 1), wake("d1", "b", 1), wake("d1", "c", 1), wake("d2", "a", 1)]);
    await until(() => provider.sent.length >= 3, "three immediate pushes");
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(provider.sent.length, 3, "d1's third push waits for a token (1 per second)");
    assert.ok(notifier.metrics.rateLimited >= 1);
    await until(() => provider.sent.length === 4, "the delayed push", 3000);
    await notifier.close();
  });

  it("retries with backoff, honours Retry-After, and gives up after the last attempt", async () => {
    const provider = new ScriptedProvider([
      { status: "retry", reason: "503" },
      { status: "retry", reason: "429", retryAfterMs: 300 },
    ]);
    const { client } = directory(["d1"]);
    const notifier = new Notifier(client, [provider], log, fast);
    notifier.notify([wake("d1", "c", 1)]);
    await until(() => provider.sent.length === 3, "third attempt delivers");
    const [first, second, third] = provider.sent;
    assert.ok(third!.at - second!.at >= 290, `Retry-After honoured (${third!.at - second!.at} ms)`);
    assert.ok(second!.at - first!.at >= 15, "backoff before the second attempt");
    assert.equal(notifier.metrics.delivered, 1);
    await notifier.close();

    const failing = new ScriptedProvider(
      Array.from({ length: 10 }, () => ({ status: "retry" as const, reason: "503" })),
    );
    const gaveUp = new Notifier(client, [failing], log, { ...fast, maxAttempts: 3 });
    gaveUp.notify([wake("d1", "c", 1)]);
    await until(() => gaveUp.size === 0, "dropped after retries");
    assert.equal(failing.sent.length, 3);
    assert.equal(gaveUp.metrics.expired, 1);
    await gaveUp.close();
  });

  it("removes a target the provider reports gone, naming the registration", async () => {
    const provider = new ScriptedProvider([{ status: "gone", reason: "410" }]);
    const { client, dropped } = directory(["d1"]);
    const notifier = new Notifier(client, [provider], log, fast);
    notifier.notify([wake("d1", "c", 1)]);
    await until(() => dropped.length === 1, "target dropped");
    assert.deepEqual(dropped[0], { deviceId: "d1", targetId: "t-d1" });
    assert.equal(notifier.metrics.gone, 1);
    await notifier.close();
  });

  it("sheds wake-ups beyond the queue bound and skips devices without a target", async () => {
    const provider = new ScriptedProvider();
    const { client } = directory(["d1"]);
    const notifier = new Notifier(client, [provider], log, { ...fast, queueLimit: 2, concurrency: 1 });
    const result = notifier.notify([
      wake("d1", "a", 1),
      wake("dx", "a", 1),
      wake("d1", "b", 1),
      wake("d1", "c", 1),
    ]);
    assert.deepEqual(result, { queued: 2, shed: 2 });
    await until(() => notifier.size === 0, "drained");
    assert.equal(notifier.metrics.noTarget, 1);
    assert.equal(provider.sent.length, 1);
    await notifier.close();
  });
});
