import assert from "node:assert/strict";
import { createPrivateKey, generateKeyPairSync, type KeyObject, randomBytes } from "node:crypto";
import { connect } from "node:http2";
import { createServer } from "node:net";
import { describe, it, type TestContext } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { SignJWT } from "jose";
import {
  FakeFcmService,
  type FakeFcmServiceOptions,
  fcmError,
} from "../../../test/fakes/push/fcm-service.js";
import type { FcmTarget, PushMessage } from "../types.js";
import { runPushProviderConformance } from "./conformance.js";
import { type FcmOptions, FcmProvider, fcmMessage, fcmOptionsFromServiceAccount } from "./fcm.js";

const PROJECT = "switchboard-test";
const EMAIL = "push@switchboard-test.iam.gserviceaccount.com";
const KEY_ID = "0123456789abcdef";
// Spelled out rather than imported so a typo in the provider's constant fails the test.
const FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging";

function rsaKeys(): { pem: string; publicKey: KeyObject } {
  const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  return { pem: privateKey.export({ type: "pkcs8", format: "pem" }) as string, publicKey };
}
const account = rsaKeys();

const target: FcmTarget = { kind: "fcm", token: "dGVzdC10b2tlbg:APA91bFakeRegistrationToken" };
const message: PushMessage = {
  conversationId: "g_01jd0example",
  seq: 42,
  collapseKey: "g_01jd0example",
  ttlSeconds: 3600,
  urgency: "high",
};

interface Setup {
  fake: FakeFcmService;
  provider: FcmProvider;
  clock: { now: number };
}

/** A fake FCM and a provider pointed at it, sharing a clock; both closed when the test ends. */
async function setup(
  t: TestContext,
  provider: Partial<FcmOptions> = {},
  service: Partial<FakeFcmServiceOptions> = {},
): Promise<Setup> {
  // Whole seconds, so JWT times and Retry-After dates compare exactly.
  const clock = { now: Math.floor(Date.now() / 1000) * 1000 };
  const now = () => clock.now;
  const fake = await FakeFcmService.start({
    projectId: PROJECT,
    clientEmail: EMAIL,
    publicKey: account.publicKey,
    privateKeyId: KEY_ID,
    now,
    ...service,
  });
  const p = new FcmProvider({
    projectId: PROJECT,
    clientEmail: EMAIL,
    privateKey: account.pem,
    privateKeyId: KEY_ID,
    tokenUri: fake.tokenUri,
    endpoint: fake.origin,
    timeoutMs: 2000,
    now,
    ...provider,
  });
  t.after(async () => {
    await p.close();
    await fake.close();
  });
  return { fake, provider: p, clock };
}

async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe("FcmProvider", () => {
  it("gets a token with a signed assertion and sends the documented content-free data message", async (t) => {
    const { fake, provider, clock } = await setup(t);
    assert.deepEqual(await provider.send(target, message), { status: "delivered" });
    assert.deepEqual(
      await provider.send(target, { ...message, seq: 43, urgency: "normal", ttlSeconds: 60 }),
      {
        status: "delivered",
      },
    );
    assert.deepEqual(fake.problems(), []);

    const nowS = clock.now / 1000;
    assert.equal(fake.tokenRequests.length, 1);
    const token = fake.tokenRequests[0]!;
    assert.equal(token.method, "POST");
    assert.equal(token.contentType, "application/x-www-form-urlencoded");
    assert.deepEqual(Object.keys(token.form).sort(), ["assertion", "grant_type"]);
    assert.equal(token.form.grant_type, "urn:ietf:params:oauth:grant-type:jwt-bearer");
    assert.deepEqual(token.header, { alg: "RS256", typ: "JWT", kid: KEY_ID });
    assert.deepEqual(token.claims, {
      scope: FCM_SCOPE,
      iss: EMAIL,
      aud: fake.tokenUri,
      iat: nowS,
      exp: nowS + 3600,
    });
    assert.ok(token.issued);

    const [first, second] = fake.sendRequests;
    assert.ok(first && second);
    assert.equal(first.method, "POST");
    assert.equal(first.path, `/v1/projects/${PROJECT}/messages:send`);
    assert.equal(first.headers.authorization, `Bearer ${token.issued}`);
    assert.match(String(first.headers["content-type"]), /^application\/json\b/);
    assert.deepEqual(first.body, {
      message: {
        token: target.token,
        data: { c: message.conversationId, s: "42" },
        android: { priority: "HIGH", collapse_key: message.collapseKey, ttl: "3600s" },
        apns: {
          headers: {
            "apns-collapse-id": message.collapseKey,
            "apns-priority": "5",
            "apns-push-type": "background",
            "apns-expiration": String(nowS + 3600),
          },
          payload: { aps: { "content-available": 1 } },
        },
      },
    });
    const body = second.body as { message: { data: unknown; android: unknown } };
    assert.deepEqual(body.message.data, { c: message.conversationId, s: "43" });
    assert.deepEqual(body.message.android, {
      priority: "NORMAL",
      collapse_key: message.collapseKey,
      ttl: "60s",
    });
    assert.equal(first.session, second.session, "one HTTP/2 connection for both sends");
  });

  it("caches the access token, shares one token request between concurrent sends, and refreshes before expiry", async (t) => {
    const { fake, provider, clock } = await setup(t);
    const burst = await Promise.all(
      Array.from({ length: 5 }, (_, i) => provider.send(target, { ...message, seq: i })),
    );
    assert.ok(burst.every((o) => o.status === "delivered"));
    assert.equal(fake.tokenRequests.length, 1, "concurrent sends wait for the same token request");
    assert.deepEqual(await provider.send(target, message), { status: "delivered" });
    assert.equal(fake.tokenRequests.length, 1, "the cached token is reused");

    clock.now += 50 * 60_000; // Google's tokens live 3599 s; ten minutes left.
    assert.deepEqual(await provider.send(target, message), { status: "delivered" });
    assert.equal(fake.tokenRequests.length, 1);

    clock.now += 6 * 60_000; // Four minutes left: inside the refresh lead.
    assert.deepEqual(await provider.send(target, message), { status: "delivered" });
    assert.equal(fake.tokenRequests.length, 2, "refreshed before the token expired");
    const last = fake.sendRequests.at(-1)!;
    assert.equal(last.accessToken, fake.tokenRequests[1]!.issued);
    assert.equal(new Set(fake.sendRequests.map((r) => r.session)).size, 1);
    assert.deepEqual(fake.problems(), []);
  });

  it("uses short-lived tokens for half their lifetime", async (t) => {
    const { fake, provider, clock } = await setup(t, {}, { tokenLifetimeSeconds: 60 });
    await provider.send(target, message);
    clock.now += 29_000;
    await provider.send(target, message);
    assert.equal(fake.tokenRequests.length, 1);
    clock.now += 2_000;
    assert.deepEqual(await provider.send(target, message), { status: "delivered" });
    assert.equal(fake.tokenRequests.length, 2);
  });

  it("refreshes the token once on 401 and delivers; concurrent 401s share the refresh", async (t) => {
    const { fake, provider } = await setup(t);
    await provider.send(target, message);
    fake.revokeAccessTokens();
    const outcomes = await Promise.all([1, 2, 3].map((seq) => provider.send(target, { ...message, seq })));
    assert.deepEqual(outcomes, [{ status: "delivered" }, { status: "delivered" }, { status: "delivered" }]);
    assert.equal(fake.tokenRequests.length, 2, "one refresh for three 401s");
    assert.equal(fake.sendRequests.filter((r) => r.status === 401).length, 3);
    assert.deepEqual(fake.problems(), []);
  });

  it("fails after a second 401/403 instead of refreshing forever", async (t) => {
    const { fake, provider } = await setup(t);
    fake.answerSend(fcmError(401, "UNAUTHENTICATED"), fcmError(401, "UNAUTHENTICATED"));
    const outcome = await provider.send(target, message);
    assert.equal(outcome.status, "failed");
    assert.equal(fake.sendRequests.length, 2);
    assert.equal(fake.tokenRequests.length, 2);

    fake.answerSend(
      fcmError(403, "PERMISSION_DENIED", undefined, "Permission 'cloudmessaging.messages.create' denied"),
      fcmError(403, "PERMISSION_DENIED", undefined, "Permission 'cloudmessaging.messages.create' denied"),
    );
    const denied = await provider.send(target, message);
    assert.equal(denied.status, "failed");
    assert.match(denied.status === "failed" ? denied.reason : "", /PERMISSION_DENIED.*cloudmessaging/);
  });

  it("maps FCM's answers to outcomes", async (t) => {
    const { fake, provider, clock } = await setup(t);
    const cases: Array<[string, ReturnType<typeof fcmError>, unknown]> = [
      [
        "404 UNREGISTERED",
        fcmError(404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found."),
        "gone",
      ],
      ["400 UNREGISTERED", fcmError(400, "INVALID_ARGUMENT", "UNREGISTERED"), "gone"],
      ["403 SENDER_ID_MISMATCH", fcmError(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH"), "gone"],
      [
        "400 INVALID_ARGUMENT",
        fcmError(
          400,
          "INVALID_ARGUMENT",
          "INVALID_ARGUMENT",
          "The registration token is not a valid FCM registration token",
        ),
        "failed",
      ],
      // Without FCM saying UNREGISTERED a 404 may be a wrong endpoint: never drop targets on it.
      ["404 without an FcmError", fcmError(404, "NOT_FOUND"), "failed"],
      ["401 THIRD_PARTY_AUTH_ERROR", fcmError(401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR"), "failed"],
      [
        "429 QUOTA_EXCEEDED, Retry-After seconds",
        fcmError(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "quota", { "retry-after": "30" }),
        { status: "retry", retryAfterMs: 30_000 },
      ],
      [
        "429 without Retry-After: FCM's documented one-minute minimum",
        fcmError(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"),
        { status: "retry", retryAfterMs: 60_000 },
      ],
      ["503 UNAVAILABLE", fcmError(503, "UNAVAILABLE", "UNAVAILABLE"), { status: "retry" }],
      [
        "500 INTERNAL, Retry-After date",
        fcmError(500, "INTERNAL", "INTERNAL", "internal", {
          "retry-after": new Date(clock.now + 120_000).toUTCString(),
        }),
        { status: "retry", retryAfterMs: 120_000 },
      ],
    ];
    for (const [name, answer, expected] of cases) {
      fake.answerSend(answer);
      const outcome = await provider.send(target, message);
      if (typeof expected === "string") {
        assert.equal(outcome.status, expected, name);
      } else {
        const { reason: _, ...rest } = outcome as { reason?: string };
        assert.deepEqual(rest, expected, name);
      }
      if (outcome.status !== "delivered") assert.ok(outcome.reason.length > 0, name);
    }
    const reasons = fake.sendRequests.length;
    assert.equal(reasons, cases.length, "none of these answers causes a resend");
    assert.equal(
      fake.tokenRequests.length,
      1,
      "SENDER_ID_MISMATCH and THIRD_PARTY_AUTH_ERROR do not refresh the token",
    );
    assert.deepEqual(fake.problems(), []);
  });

  it("reports credentials the token endpoint refuses (a key that is not the account's) as failed", async (t) => {
    const other = rsaKeys();
    const { fake, provider, clock } = await setup(t, { privateKey: other.pem });
    const outcome = await provider.send(target, message);
    assert.equal(outcome.status, "failed");
    assert.match(outcome.status === "failed" ? outcome.reason : "", /invalid_grant: Invalid JWT Signature/);
    assert.deepEqual(fake.problems(), ["token request 0: assertion signature does not verify"]);
    assert.equal(fake.sendRequests.length, 0);

    assert.equal((await provider.send(target, message)).status, "failed");
    assert.equal(fake.tokenRequests.length, 1, "a refused credential is not retried at push rate");
    clock.now += 31_000;
    await provider.send(target, message);
    assert.equal(fake.tokenRequests.length, 2);
  });

  it("retries when the token endpoint is overloaded or unreachable", async (t) => {
    const { fake, provider } = await setup(t);
    fake.answerToken({
      status: 503,
      headers: { "retry-after": "5" },
      body: { error: "temporarily_unavailable" },
    });
    assert.deepEqual(await provider.send(target, message), {
      status: "retry",
      reason: "FCM token endpoint: temporarily_unavailable",
      retryAfterMs: 5000,
    });
    assert.deepEqual(
      await provider.send(target, message),
      { status: "delivered" },
      "an overload is not held",
    );

    const unreachable = new FcmProvider({
      projectId: PROJECT,
      clientEmail: EMAIL,
      privateKey: account.pem,
      tokenUri: `http://127.0.0.1:${await closedPort()}/token`,
      endpoint: fake.origin,
    });
    t.after(() => unreachable.close());
    const outcome = await unreachable.send(target, message);
    assert.equal(outcome.status, "retry");
    assert.match(outcome.status === "retry" ? outcome.reason : "", /ECONNREFUSED/);
  });

  it("retries when FCM is unreachable or does not answer in time", async (t) => {
    const { fake, provider } = await setup(t, { endpoint: `http://127.0.0.1:${await closedPort()}` });
    const refused = await provider.send(target, message);
    assert.equal(refused.status, "retry");
    assert.match(refused.status === "retry" ? refused.reason : "", /ECONNREFUSED/);

    const slow = new FcmProvider({
      projectId: PROJECT,
      clientEmail: EMAIL,
      privateKey: account.pem,
      tokenUri: fake.tokenUri,
      endpoint: fake.origin,
      timeoutMs: 200,
    });
    t.after(() => slow.close());
    fake.answerSend({ status: 200, hang: true });
    const started = Date.now();
    const timedOut = await slow.send(target, message);
    assert.equal(timedOut.status, "retry");
    assert.match(timedOut.status === "retry" ? timedOut.reason : "", /no answer within 200 ms/);
    assert.ok(Date.now() - started < 1500);
    assert.deepEqual(await slow.send(target, message), { status: "delivered" }, "the connection still works");
  });

  it("opens a new connection after FCM closes one (GOAWAY)", async (t) => {
    const { fake, provider } = await setup(t);
    await provider.send(target, message);
    fake.closeConnections();
    for (let i = 0; i < 100 && fake.openConnections() > 0; i++) await sleep(10);
    assert.deepEqual(await provider.send(target, message), { status: "delivered" });
    assert.deepEqual(
      fake.sendRequests.map((r) => r.session),
      [1, 2],
    );
  });

  it("refuses targets of other kinds and sends nothing after close", async (t) => {
    const { fake, provider } = await setup(t);
    const apns = { kind: "apns", token: "ab", topic: "x", environment: "production" } as const;
    assert.equal((await provider.send(apns, message)).status, "failed");
    await provider.close();
    assert.equal((await provider.send(target, message)).status, "retry");
    assert.equal(fake.sendRequests.length, 0);
  });

  it("rejects a key that is not an RSA private key at construction", () => {
    const base = { projectId: PROJECT, clientEmail: EMAIL };
    assert.throws(
      () => new FcmProvider({ ...base, privateKey: "not a key" }),
      /FCM: privateKey is not a PEM/,
    );
    const ec = generateKeyPairSync("ec", { namedCurve: "prime256v1" }).privateKey.export({
      type: "pkcs8",
      format: "pem",
    }) as string;
    assert.throws(() => new FcmProvider({ ...base, privateKey: ec }), /must be an RSA key/);
  });
});

describe("fcmOptionsFromServiceAccount", () => {
  const json = {
    type: "service_account",
    project_id: PROJECT,
    private_key_id: KEY_ID,
    private_key: account.pem,
    client_email: EMAIL,
    token_uri: "https://oauth2.googleapis.com/token",
  };

  it("reads the service account fields and applies overrides", () => {
    assert.deepEqual(fcmOptionsFromServiceAccount(JSON.stringify(json)), {
      projectId: PROJECT,
      clientEmail: EMAIL,
      privateKey: account.pem,
      privateKeyId: KEY_ID,
      tokenUri: "https://oauth2.googleapis.com/token",
    });
    const { token_uri: _, private_key_id: __, ...minimal } = json;
    const options = fcmOptionsFromServiceAccount(JSON.stringify(minimal), { endpoint: "http://127.0.0.1:1" });
    assert.deepEqual(options, {
      projectId: PROJECT,
      clientEmail: EMAIL,
      privateKey: account.pem,
      endpoint: "http://127.0.0.1:1",
    });
    assert.doesNotThrow(() => new FcmProvider(options).close());
  });

  it("names what is wrong", () => {
    assert.throws(() => fcmOptionsFromServiceAccount("{"), /not valid JSON/);
    assert.throws(() => fcmOptionsFromServiceAccount("[]"), /expected a JSON object/);
    assert.throws(
      () => fcmOptionsFromServiceAccount(JSON.stringify({ ...json, type: "authorized_user" })),
      /type is "authorized_user"/,
    );
    for (const field of ["project_id", "client_email", "private_key"]) {
      const { [field as keyof typeof json]: _, ...rest } = json;
      assert.throws(() => fcmOptionsFromServiceAccount(JSON.stringify(rest)), new RegExp(`missing ${field}`));
    }
    assert.throws(
      () => fcmOptionsFromServiceAccount(JSON.stringify({ ...json, project_id: 7 })),
      /project_id must be a string/,
    );
  });
});

describe("FakeFcmService", () => {
  it("refuses assertions with the wrong audience, scope, issuer or lifetime", async (t) => {
    const { fake } = await setup(t);
    const key = createPrivateKey(account.pem);
    const nowS = Math.floor(Date.now() / 1000);
    const assertion = (claims: Record<string, unknown>, iat = nowS, exp = nowS + 3600) =>
      new SignJWT({ scope: FCM_SCOPE, iss: EMAIL, aud: fake.tokenUri, ...claims })
        .setProtectedHeader({ alg: "RS256", typ: "JWT" })
        .setIssuedAt(iat)
        .setExpirationTime(exp)
        .sign(key);
    const post = async (jwt: string) => {
      const response = await fetch(fake.tokenUri, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({
          grant_type: "urn:ietf:params:oauth:grant-type:jwt-bearer",
          assertion: jwt,
        }),
      });
      return { status: response.status, body: (await response.json()) as { error?: string } };
    };
    assert.equal((await post(await assertion({}))).status, 200);
    assert.equal(
      (await post(await assertion({ aud: "https://example.com/token" }))).body.error,
      "invalid_grant",
    );
    assert.equal(
      (await post(await assertion({ scope: "https://www.googleapis.com/auth/cloud-platform" }))).body.error,
      "invalid_scope",
    );
    assert.equal(
      (await post(await assertion({ iss: "someone@else.iam.gserviceaccount.com" }))).body.error,
      "invalid_grant",
    );
    assert.equal((await post(await assertion({}, nowS, nowS + 7200))).body.error, "invalid_grant");
    assert.equal((await post(await assertion({}, nowS - 7200, nowS - 3600))).body.error, "invalid_grant");
    assert.deepEqual(
      fake.tokenRequests.map((r) => r.problems.length),
      [0, 1, 1, 1, 1, 1],
    );
  });

  it("rejects messages that carry content or break the v1 shape", async (t) => {
    const { fake, provider } = await setup(t);
    await provider.send(target, message);
    const token = fake.tokenRequests[0]!.issued!;
    const session = connect(fake.origin);
    t.after(() => session.close());
    const send = (body: unknown) =>
      new Promise<number>((resolve, reject) => {
        const stream = session.request({
          ":method": "POST",
          ":path": `/v1/projects/${PROJECT}/messages:send`,
          authorization: `Bearer ${token}`,
          "content-type": "application/json",
        });
        stream.on("response", (h) => resolve(Number(h[":status"])));
        stream.on("error", reject);
        stream.resume();
        stream.end(JSON.stringify(body));
      });
    const good = fcmMessage(target.token, message, Date.now());
    assert.equal(await send(good), 200);
    const withNotification = { message: { ...good.message, notification: { title: "hi", body: "secret" } } };
    assert.equal(await send(withNotification), 400);
    const numericSeq = { message: { ...good.message, data: { c: "g_1", s: 42 } } };
    assert.equal(await send(numericSeq), 400);
    const urgentBackground = structuredClone(good) as {
      message: { apns: { headers: Record<string, string> } };
    };
    urgentBackground.message.apns.headers["apns-priority"] = "10";
    assert.equal(await send(urgentBackground), 400);
    const problems = fake.problems();
    assert.ok(
      problems.some((p) => p.includes("message.notification: pushes must be content-free")),
      problems.join("\n"),
    );
    assert.ok(problems.some((p) => p.includes("message.data.s must be a string")));
    assert.ok(problems.some((p) => p.includes("background needs apns-priority 5")));
  });
});

runPushProviderConformance("FCM", async ({ timeoutMs }) => {
  const service = await FakeFcmService.start({
    projectId: PROJECT,
    clientEmail: EMAIL,
    publicKey: account.publicKey,
    privateKeyId: KEY_ID,
  });
  const provider = new FcmProvider({
    projectId: PROJECT,
    clientEmail: EMAIL,
    privateKey: account.pem,
    privateKeyId: KEY_ID,
    tokenUri: service.tokenUri,
    endpoint: service.origin,
    timeoutMs,
  });
  const messageOf = (r: { body: unknown }) => (r.body as { message: Record<string, unknown> }).message;
  return {
    provider,
    newTarget: () => ({
      kind: "fcm",
      token: `${randomBytes(8).toString("base64url")}:APA91b${randomBytes(40).toString("base64url")}`,
    }),
    foreignTarget: { kind: "apns", token: "00", topic: "org.example", environment: "production" },
    // Only FCM's own verdict on a token removes it; FCM says so as UNREGISTERED.
    forgetTarget: () => service.answerSend(fcmError(404, "NOT_FOUND", "UNREGISTERED")),
    throttleNext: (seconds) =>
      service.answerSend(
        fcmError(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "quota", { "retry-after": String(seconds) }),
      ),
    stallNext: () => service.answerSend({ status: 200, hang: true }),
    received: async (t) =>
      service.sendRequests
        .filter((r) => r.status === 200 && messageOf(r).token === (t as FcmTarget).token)
        .map((r) => {
          const m = messageOf(r);
          return { data: m.data, collapseKey: (m.android as { collapse_key?: string }).collapse_key };
        }),
    requestCount: () => service.sendRequests.length + service.tokenRequests.length,
    problems: () => service.problems(),
    close: async () => {
      await provider.close();
      await service.close();
    },
  };
});
