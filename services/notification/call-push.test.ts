import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { describe, it } from "node:test";
import type { Client } from "@connectrpc/connect";
import type { DirectoryService } from "../../gen/switchboard/internal/v1/directory_pb.js";
import { FakeApnsService } from "../../test/fakes/push/apns-service.js";
import { createLogger } from "../common/log.js";
import { CALL_PUSH_TTL_SECONDS, type CallWakeUp, callCollapseKey, Notifier } from "./notifier.js";
import { ApnsProvider, apnsHeaders, apnsPayload } from "./providers/apns.js";
import { fcmMessage } from "./providers/fcm.js";
import { targetToWire } from "./targets.js";
import type { PushMessage, PushOutcome, PushProvider, PushTarget } from "./types.js";

const log = createLogger({ level: "silent" });

/** A provider that records pushes; each send waits for release() when held. */
class RecordingProvider implements PushProvider {
  readonly kind = "fcm" as const;
  readonly sent: PushMessage[] = [];
  private held: Array<() => void> = [];
  hold = false;
  async send(_t: PushTarget, message: PushMessage): Promise<PushOutcome> {
    this.sent.push(message);
    if (this.hold) await new Promise<void>((r) => this.held.push(r));
    return { status: "delivered" };
  }
  release(): void {
    for (const r of this.held.splice(0)) r();
  }
  async close(): Promise<void> {}
}

const directory = {
  async getPushTargets(req: { deviceIds: string[] }) {
    return {
      targets: req.deviceIds.map((deviceId) => ({
        deviceId,
        userId: "u",
        targetId: `t-${deviceId}`,
        target: targetToWire({ kind: "fcm", token: `token-${deviceId}` }),
      })),
    };
  },
} as unknown as Client<typeof DirectoryService>;

const ring = (deviceId: string, ended = false): CallWakeUp => ({
  userId: "u",
  deviceId,
  conversationId: "d_conversation",
  callId: "call-1",
  ended,
});

async function until(predicate: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 3000;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe("call pushes", () => {
  it("ring at high urgency under the call's collapse key, and an end in flight follows as call_ended", async () => {
    const provider = new RecordingProvider();
    provider.hold = true;
    const n = new Notifier(directory, [provider], log);
    n.notifyCall([ring("dv_1")]);
    await until(() => provider.sent.length === 1, "the ring");
    assert.deepEqual(provider.sent[0]!.call, { callId: "call-1", ended: false });
    assert.equal(provider.sent[0]!.urgency, "high");
    assert.equal(provider.sent[0]!.collapseKey, callCollapseKey("call-1"));
    assert.equal(provider.sent[0]!.ttlSeconds, CALL_PUSH_TTL_SECONDS);
    assert.match(callCollapseKey("call-1"), /^[A-Za-z0-9_-]{32}$/);
    // The call ends while the ring is with the provider: the end goes out after it, same key.
    n.notifyCall([ring("dv_1", true)]);
    provider.hold = false;
    provider.release();
    await until(() => provider.sent.length === 2, "the end");
    assert.deepEqual(provider.sent[1]!.call, { callId: "call-1", ended: true });
    assert.equal(provider.sent[1]!.collapseKey, provider.sent[0]!.collapseKey);
    await until(() => n.size === 0, "nothing pending");
    await n.close();
  });

  it("are withdrawn when the call ends before they left, and keep out of messages' rate limits", async () => {
    const provider = new RecordingProvider();
    // No push may leave for messages (a spent budget); a call still rings.
    const n = new Notifier(directory, [provider], log, { perDeviceBurst: 1, perDevicePerMinute: 1 });
    n.notify([{ userId: "u", deviceId: "dv_2", conversationId: "d_x", seq: 1, urgent: true }]);
    n.notify([{ userId: "u", deviceId: "dv_2", conversationId: "d_y", seq: 1, urgent: true }]);
    n.notifyCall([ring("dv_2")]);
    await until(
      () => provider.sent.some((m) => m.call !== undefined),
      "the ring despite the spent message budget",
    );
    // A second device's ring is queued and withdrawn in one turn: it never leaves.
    n.notifyCall([ring("dv_3"), ring("dv_3", true)]);
    await new Promise((r) => setImmediate(r));
    assert.equal(provider.sent.filter((m) => m.call !== undefined).length, 1);
    await n.close();
  });

  it("go to APNs as VoIP pushes on the app's .voip topic, and to FCM at priority HIGH, content-free", () => {
    const message: PushMessage = {
      conversationId: "d_conversation",
      seq: 0,
      collapseKey: callCollapseKey("call-1"),
      ttlSeconds: CALL_PUSH_TTL_SECONDS,
      urgency: "high",
      call: { callId: "call-1", ended: false },
    };
    const headers = apnsHeaders({ token: "ab", topic: "com.example.chat" }, message, "jwt", 1_000_000);
    assert.equal(headers["apns-push-type"], "voip");
    assert.equal(headers["apns-priority"], "10");
    assert.equal(headers["apns-topic"], "com.example.chat.voip");
    assert.equal(headers["apns-collapse-id"], message.collapseKey);
    assert.equal(headers["apns-expiration"], String(1000 + CALL_PUSH_TTL_SECONDS));
    assert.deepEqual(apnsPayload(message), { aps: {}, k: "call", i: "call-1", c: "d_conversation" });
    assert.equal(
      apnsHeaders({ token: "ab", topic: "com.example.chat.voip" }, message, "jwt", 0)["apns-topic"],
      "com.example.chat.voip",
    );
    const fcm = fcmMessage(
      "token",
      { ...message, call: { callId: "call-1", ended: true } },
      1_000_000,
    ).message;
    assert.deepEqual(fcm.data, { k: "call_ended", i: "call-1", c: "d_conversation" });
    assert.equal((fcm.android as { priority: string }).priority, "HIGH");
    assert.equal((fcm.android as { collapse_key: string }).collapse_key, message.collapseKey);
  });

  it("reach an APNs (the fake, over real HTTP/2) as VoIP pushes on the .voip topic, superseded under the same collapse id", async (t) => {
    const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
    const apns = await FakeApnsService.start({
      teamId: "TEAM123456",
      keyId: "KEY1234567",
      publicKey,
      topics: ["org.switchboard.app"],
    });
    const provider = new ApnsProvider({
      teamId: "TEAM123456",
      keyId: "KEY1234567",
      privateKey: privateKey.export({ type: "pkcs8", format: "pem" }) as string,
      productionEndpoint: apns.origin,
      sandboxEndpoint: apns.origin,
      timeoutMs: 2000,
    });
    t.after(async () => {
      await provider.close();
      await apns.close();
    });
    const target: PushTarget = {
      kind: "apns",
      token: "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90",
      topic: "org.switchboard.app",
      environment: "production",
    };
    const ringing: PushMessage = {
      conversationId: "d_conversation",
      seq: 0,
      collapseKey: callCollapseKey("call-1"),
      ttlSeconds: CALL_PUSH_TTL_SECONDS,
      urgency: "high",
      call: { callId: "call-1", ended: false },
    };
    assert.deepEqual(await provider.send(target, ringing), { status: "delivered" });
    assert.deepEqual(await provider.send(target, { ...ringing, call: { callId: "call-1", ended: true } }), {
      status: "delivered",
    });
    assert.deepEqual(apns.problems(), []);
    const [first, second] = apns.requests;
    assert.equal(first!.headers["apns-push-type"], "voip");
    assert.equal(first!.headers["apns-topic"], "org.switchboard.app.voip");
    assert.equal(first!.headers["apns-priority"], "10");
    assert.equal(first!.headers["apns-collapse-id"], second!.headers["apns-collapse-id"]);
    assert.deepEqual(second!.body, { aps: {}, k: "call_ended", i: "call-1", c: "d_conversation" });
  });

  it("keep an APNs target that refuses a VoIP push (a regular token is not a PushKit token)", async () => {
    const dropped: string[] = [];
    const apnsDirectory = {
      async getPushTargets(req: { deviceIds: string[] }) {
        return {
          targets: req.deviceIds.map((deviceId) => ({
            deviceId,
            userId: "u",
            targetId: `t-${deviceId}`,
            target: targetToWire({
              kind: "apns",
              token: "ab",
              topic: "org.switchboard.app",
              environment: "production",
            }),
          })),
        };
      },
      async dropPushTarget(req: { deviceId: string }) {
        dropped.push(req.deviceId);
        return { dropped: true };
      },
    } as unknown as Client<typeof DirectoryService>;
    const sent: PushMessage[] = [];
    const refusing: PushProvider = {
      kind: "apns",
      async send(_t, message) {
        sent.push(message);
        return { status: "gone", reason: "APNs 400 DeviceTokenNotForTopic" };
      },
      async close() {},
    };
    const n = new Notifier(apnsDirectory, [refusing], log);
    n.notifyCall([ring("dv_4")]);
    await until(() => sent.length === 1 && n.size === 0, "the refused ring settled");
    assert.equal(n.metrics.failed, 1);
    assert.deepEqual(dropped, []);
    await n.close();
  });
});
