import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { importJWK, SignJWT } from "jose";
import webpush from "web-push";
import { type FakeWebPushService, startWebPushService } from "../../../test/fakes/push/webpush-service.js";
import type { PushMessage, PushOutcome, PushTarget, WebPushTarget } from "../types.js";
import { runPushProviderConformance } from "./conformance.js";
import { generateVapidKeys, WebPushProvider } from "./webpush.js";

const SUBJECT = "mailto:ops@switchboard.example";
const vapid = generateVapidKeys();
const message: PushMessage = {
  conversationId: "d_0123456789abcdefghjkmnpqrs",
  seq: 42,
  collapseKey: "d_0123456789abcdefghjkmnpqrs",
  ttlSeconds: 3600,
  urgency: "high",
};

function provider(timeoutMs = 2000): WebPushProvider {
  return new WebPushProvider({
    vapidPublicKey: vapid.publicKey,
    vapidPrivateKey: vapid.privateKey,
    subject: SUBJECT,
    timeoutMs,
    // The fake push service listens on 127.0.0.1, which a default provider refuses to call.
    allowPrivateEndpoints: true,
  });
}

/** A port with nothing listening on it. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe("WebPushProvider", () => {
  let service: FakeWebPushService;
  let push: WebPushProvider;

  before(async () => {
    service = await startWebPushService();
    push = provider();
  });
  after(async () => {
    await push.close();
    await service.close();
  });

  async function sendScripted(...answers: Parameters<FakeWebPushService["script"]>): Promise<PushOutcome> {
    const { target } = service.subscribe();
    service.script(...answers);
    return push.send(target, message);
  }

  test("a delivered push decrypts to exactly {c, s} and carries Topic, Urgency and TTL", async () => {
    const { id, target } = service.subscribe({ applicationServerKey: vapid.publicKey });
    assert.deepEqual(await push.send(target, message), { status: "delivered" });
    const received = await service.waitForPush((p) => p.id === id);
    assert.deepEqual(received.payload, { c: message.conversationId, s: "42" });
    assert.equal(received.topic, message.collapseKey);
    assert.equal(received.urgency, "high");
    assert.equal(received.ttl, 3600);
    assert.equal(received.headers["content-encoding"], "aes128gcm");

    const normal = service.subscribe();
    const outcome = await push.send(normal.target, { ...message, urgency: "normal", ttlSeconds: 60 });
    assert.deepEqual(outcome, { status: "delivered" });
    const second = await service.waitForPush((p) => p.id === normal.id);
    assert.equal(second.urgency, "normal");
    assert.equal(second.ttl, 60);
  });

  test("the VAPID JWT verifies and names the push service, a near expiry and the subject", async () => {
    const { id, target } = service.subscribe();
    await push.send(target, message);
    const { claims, vapidKey } = await service.waitForPush((p) => p.id === id);
    assert.equal(vapidKey, vapid.publicKey);
    assert.equal(claims.aud, service.origin);
    assert.equal(claims.sub, SUBJECT);
    const now = Date.now() / 1000;
    assert.ok(claims.exp > now, "exp is in the future");
    assert.ok(claims.exp <= now + 24 * 3600, "exp is at most 24 h ahead");
  });

  describe("the fake service refuses what a push service would", () => {
    /** Posts a valid push whose Authorization header is replaced (a string) or edited (a function). */
    async function post(
      target: WebPushTarget,
      authorization: string | ((header: string) => string),
    ): Promise<number> {
      const request = webpush.generateRequestDetails(
        { endpoint: target.endpoint, keys: { p256dh: target.p256dh, auth: target.auth } },
        "{}",
        { vapidDetails: { subject: SUBJECT, ...vapid }, contentEncoding: "aes128gcm", TTL: 60 },
      );
      const headers: Record<string, string> = {};
      for (const [name, value] of Object.entries(request.headers)) {
        if (name !== "Content-Length") headers[name] = String(value);
      }
      headers.Authorization =
        typeof authorization === "string" ? authorization : authorization(headers.Authorization ?? "");
      const response = await fetch(request.endpoint, { method: "POST", headers, body: request.body });
      await response.arrayBuffer();
      return response.status;
    }

    test("a tampered VAPID key", async () => {
      const { id, target } = service.subscribe();
      const other = generateVapidKeys().publicKey;
      assert.equal(await post(target, (h) => h.replace(/k=[A-Za-z0-9_-]+/, `k=${other}`)), 401);
      const refused = service.requests.find((r) => r.id === id);
      assert.match(refused?.rejected ?? "", /signature/);
      assert.equal(
        service.pushes.find((p) => p.id === id),
        undefined,
      );
      // The untampered request passes, so the refusal above is the key's doing.
      assert.equal(await post(target, (h) => h), 201);
    });

    test("a JWT for another audience, expiring too late, or none at all", async () => {
      const { target } = service.subscribe();
      const point = Buffer.from(vapid.publicKey, "base64url");
      const key = await importJWK(
        {
          kty: "EC",
          crv: "P-256",
          x: point.subarray(1, 33).toString("base64url"),
          y: point.subarray(33).toString("base64url"),
          d: vapid.privateKey,
        },
        "ES256",
      );
      const jwt = (aud: string, expiresInS: number): Promise<string> =>
        new SignJWT({ sub: SUBJECT })
          .setProtectedHeader({ typ: "JWT", alg: "ES256" })
          .setAudience(aud)
          .setExpirationTime(Math.floor(Date.now() / 1000) + expiresInS)
          .sign(key);
      const header = async (aud: string, expiresInS: number) =>
        `vapid t=${await jwt(aud, expiresInS)}, k=${vapid.publicKey}`;

      // Signed independently of web-push, so the service's checks are not just web-push's mirror.
      assert.equal(await post(target, await header(service.origin, 3600)), 201);
      assert.equal(await post(target, await header("https://push.example", 3600)), 401);
      assert.equal(await post(target, await header(service.origin, 25 * 3600)), 401);
      assert.equal(await post(target, await header(service.origin, -60)), 401);
      assert.equal(await post(target, "WebPush abc"), 401);
    });

    test("a push signed with a key other than the subscription's: the provider reports failed", async () => {
      const { target } = service.subscribe({ applicationServerKey: generateVapidKeys().publicKey });
      const outcome = await push.send(target, message);
      assert.equal(outcome.status, "failed");
      assert.match(outcome.status === "failed" ? outcome.reason : "", /^push service answered 403/);
    });
  });

  test("410 and 404 => gone", async () => {
    const expired = service.subscribe();
    service.unsubscribe(expired.id);
    const gone = await push.send(expired.target, message);
    assert.equal(gone.status, "gone");
    assert.match(gone.status === "gone" ? gone.reason : "", /410/);

    const unknown = { ...expired.target, endpoint: `${service.origin}/push/never-subscribed` };
    const missing = await push.send(unknown, message);
    assert.equal(missing.status, "gone");
    assert.match(missing.status === "gone" ? missing.reason : "", /404/);

    assert.equal((await sendScripted({ status: 410 })).status, "gone");
  });

  test("429 with Retry-After: 7 => retry after 7000 ms", async () => {
    const outcome = await sendScripted({ status: 429, headers: { "retry-after": "7" }, body: "slow down" });
    assert.deepEqual(outcome, {
      status: "retry",
      reason: "push service answered 429: slow down",
      retryAfterMs: 7000,
    });
  });

  test("503 => retry, with no retryAfterMs when the service gave none", async () => {
    const outcome = await sendScripted({ status: 503 });
    assert.deepEqual(outcome, { status: "retry", reason: "push service answered 503" });
    assert.ok(!("retryAfterMs" in outcome));
  });

  test("400 => failed, with the status and the start of the body", async () => {
    const outcome = await sendScripted({ status: 400, body: `bad request ${"x".repeat(500)}` });
    assert.equal(outcome.status, "failed");
    const reason = outcome.status === "failed" ? outcome.reason : "";
    assert.ok(reason.startsWith("push service answered 400: bad request x"), reason);
    assert.equal(reason.length, "push service answered 400: ".length + 200);
    assert.equal((await sendScripted({ status: 401 })).status, "failed");
    assert.equal((await sendScripted({ status: 413 })).status, "failed");
  });

  test("an unreachable port => retry", async () => {
    const { target } = service.subscribe();
    const endpoint = `http://127.0.0.1:${await closedPort()}/push/x`;
    const outcome = await push.send({ ...target, endpoint }, message);
    assert.equal(outcome.status, "retry");
    assert.match(outcome.status === "retry" ? outcome.reason : "", /ECONNREFUSED/);
  });

  test("no answer within timeoutMs => retry", async () => {
    const quick = provider(100);
    const { target } = service.subscribe();
    service.script({ status: 201, delayMs: 1000 });
    const started = Date.now();
    const outcome = await quick.send(target, message);
    assert.deepEqual(outcome, { status: "retry", reason: "no answer within 100 ms" });
    assert.ok(Date.now() - started < 900);
    await quick.close();
  });

  test("close() ends pushes in flight as retry", async () => {
    const closing = provider();
    const { target } = service.subscribe();
    service.script({ status: 201, delayMs: 1000 });
    const sending = closing.send(target, message);
    await new Promise((resolve) => setTimeout(resolve, 50));
    await closing.close();
    assert.deepEqual(await sending, { status: "retry", reason: "provider closed" });
    assert.deepEqual(await closing.send(target, message), { status: "retry", reason: "provider closed" });
  });

  test("targets and messages that cannot be sent => failed, without a request", async () => {
    const { target } = service.subscribe();
    const before = service.requests.length;
    const cases: [WebPushTarget, RegExp][] = [
      [{ ...target, endpoint: "ftp://127.0.0.1/push/x" }, /endpoint must be https/],
      [{ ...target, endpoint: "not a url" }, /not a URL/],
      [{ ...target, p256dh: target.p256dh.slice(0, 40) }, /p256dh/],
      [{ ...target, p256dh: "!!!" }, /p256dh/],
      [{ ...target, auth: randomBytes(12).toString("base64url") }, /auth/],
      // 65 bytes that start like a point but are not on the curve.
      [
        { ...target, p256dh: Buffer.concat([Buffer.from([4]), randomBytes(64)]).toString("base64url") },
        /could not be encrypted/,
      ],
    ];
    for (const [bad, reason] of cases) {
      const outcome = await push.send(bad, message);
      assert.equal(outcome.status, "failed", JSON.stringify(bad));
      assert.match(outcome.status === "failed" ? outcome.reason : "", reason);
    }
    const badTopic = await push.send(target, { ...message, collapseKey: "has spaces" });
    assert.equal(badTopic.status, "failed");
    const fcm = await push.send({ kind: "fcm", token: "t" }, message);
    assert.equal(fcm.status, "failed");
    assert.equal(service.requests.length, before);
  });

  test("http endpoints and padded base64url keys, as registration accepts them", async () => {
    const { id, target } = service.subscribe();
    const padded = { ...target, auth: `${target.auth}==` };
    assert.deepEqual(await push.send(padded, message), { status: "delivered" });
    await service.waitForPush((p) => p.id === id);
  });
});

describe("WebPushProvider options", () => {
  const base = { vapidPublicKey: vapid.publicKey, vapidPrivateKey: vapid.privateKey, subject: SUBJECT };

  test("accepts mailto: and https subjects", () => {
    new WebPushProvider(base);
    new WebPushProvider({ ...base, subject: "https://switchboard.example/contact" });
  });

  test("rejects bad subjects, keys and timeouts with a clear error", () => {
    const other = generateVapidKeys();
    const cases: [Partial<typeof base> & { timeoutMs?: number }, RegExp][] = [
      [{ subject: "http://switchboard.example" }, /subject: must be mailto: or https:/],
      [{ subject: "ops@switchboard.example" }, /subject: not a URL/],
      [{ subject: "mailto:" }, /subject: a mailto: subject needs an address/],
      [{ subject: "https://localhost/" }, /subject: an https subject cannot be localhost/],
      [{ vapidPublicKey: vapid.publicKey.slice(2) }, /vapidPublicKey: must be base64url/],
      [{ vapidPrivateKey: "not+base64url" }, /vapidPrivateKey: must be base64url/],
      [{ vapidPublicKey: other.publicKey }, /vapidPublicKey: is not the public key of vapidPrivateKey/],
      [{ timeoutMs: 0 }, /timeoutMs/],
    ];
    for (const [override, error] of cases) {
      assert.throws(() => new WebPushProvider({ ...base, ...override }), error, JSON.stringify(override));
    }
  });
});

runPushProviderConformance("Web Push", async ({ timeoutMs }) => {
  const service = await startWebPushService();
  const push = provider(timeoutMs);
  const idOf = (t: PushTarget) => (t as WebPushTarget).endpoint.split("/").pop() ?? "";
  return {
    provider: push,
    newTarget: () => service.subscribe({ applicationServerKey: vapid.publicKey }).target,
    foreignTarget: { kind: "fcm", token: "not-for-web-push" },
    forgetTarget: (t) => service.unsubscribe(idOf(t)),
    throttleNext: (seconds) => service.script({ status: 429, headers: { "retry-after": String(seconds) } }),
    // Longer than any test: close() clears the timer.
    stallNext: () => service.script({ status: 201, delayMs: 600_000 }),
    received: async (t) =>
      service.pushes.filter((p) => p.id === idOf(t)).map((p) => ({ data: p.payload, collapseKey: p.topic })),
    requestCount: () => service.requests.length,
    problems: () =>
      service.requests.flatMap((r) => (r.rejected === undefined ? [] : [`${r.id}: ${r.rejected}`])),
    close: async () => {
      await push.close();
      await service.close();
    },
  };
});
