import assert from "node:assert/strict";
import { generateKeyPairSync, type KeyObject, randomBytes } from "node:crypto";
import { connect } from "node:http2";
import { createServer } from "node:net";
import { describe, it, type TestContext } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import {
  apnsError,
  FakeApnsService,
  type FakeApnsServiceOptions,
} from "../../../test/fakes/push/apns-service.js";
import type { ApnsTarget, PushMessage } from "../types.js";
import { type ApnsOptions, ApnsProvider, apnsHeaders, apnsPayload } from "./apns.js";
import { runPushProviderConformance } from "./conformance.js";

const TEAM = "TEAM123456";
const KEY_ID = "KEY1234567";
const TOPIC = "org.switchboard.app";

function p256Keys(): { pem: string; publicKey: KeyObject } {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
  return { pem: privateKey.export({ type: "pkcs8", format: "pem" }) as string, publicKey };
}
const team = p256Keys();

const deviceToken = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const target: ApnsTarget = { kind: "apns", token: deviceToken, topic: TOPIC, environment: "production" };
const message: PushMessage = {
  conversationId: "g_01jd0example",
  seq: 42,
  collapseKey: "g_01jd0example",
  ttlSeconds: 3600,
  urgency: "high",
};

interface Setup {
  production: FakeApnsService;
  sandbox: FakeApnsService;
  provider: ApnsProvider;
  clock: { now: number };
}

/** Fake production and sandbox APNs and a provider pointed at them, sharing a clock. */
async function setup(
  t: TestContext,
  provider: Partial<ApnsOptions> = {},
  service: Partial<FakeApnsServiceOptions> = {},
): Promise<Setup> {
  const clock = { now: Math.floor(Date.now() / 1000) * 1000 };
  const now = () => clock.now;
  const options = {
    teamId: TEAM,
    keyId: KEY_ID,
    publicKey: team.publicKey,
    topics: [TOPIC],
    now,
    ...service,
  };
  const production = await FakeApnsService.start(options);
  const sandbox = await FakeApnsService.start(options);
  const p = new ApnsProvider({
    teamId: TEAM,
    keyId: KEY_ID,
    privateKey: team.pem,
    productionEndpoint: production.origin,
    sandboxEndpoint: sandbox.origin,
    timeoutMs: 2000,
    now,
    ...provider,
  });
  t.after(async () => {
    await p.close();
    await Promise.all([production.close(), sandbox.close()]);
  });
  return { production, sandbox, provider: p, clock };
}

async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

function reasonOf(outcome: { status: string; reason?: string }): string {
  return outcome.reason ?? "";
}

describe("ApnsProvider", () => {
  it("sends the documented background push with an ES256 provider token", async (t) => {
    const { production, sandbox, provider, clock } = await setup(t);
    assert.deepEqual(await provider.send(target, message), { status: "delivered" });
    assert.deepEqual(await provider.send(target, { ...message, seq: 43, urgency: "normal" }), {
      status: "delivered",
    });
    assert.deepEqual(production.problems(), []);
    assert.equal(sandbox.requests.length, 0);

    const nowS = clock.now / 1000;
    const [first, second] = production.requests;
    assert.ok(first && second);
    assert.equal(first.method, "POST");
    assert.equal(first.path, `/3/device/${deviceToken}`);
    assert.equal(first.headers.authorization, `bearer ${first.jwt}`);
    assert.deepEqual(first.jwtHeader, { alg: "ES256", kid: KEY_ID });
    assert.deepEqual(first.jwtClaims, { iss: TEAM, iat: nowS });
    assert.equal(first.headers["apns-topic"], TOPIC);
    assert.equal(first.headers["apns-push-type"], "background");
    assert.equal(first.headers["apns-priority"], "5");
    assert.equal(first.headers["apns-expiration"], String(nowS + 3600));
    assert.equal(first.headers["apns-collapse-id"], message.collapseKey);
    assert.deepEqual(first.body, { aps: { "content-available": 1 }, c: message.conversationId, s: "42" });
    assert.equal(
      second.headers["apns-priority"],
      "5",
      "background pushes are priority 5 whatever the urgency",
    );
    assert.deepEqual(second.body, { aps: { "content-available": 1 }, c: message.conversationId, s: "43" });
    assert.equal(second.jwt, first.jwt);
    assert.equal(second.session, first.session, "one HTTP/2 connection, reused");
  });

  it("sends sandbox tokens to the sandbox endpoint", async (t) => {
    const { production, sandbox, provider } = await setup(t);
    assert.deepEqual(await provider.send({ ...target, environment: "sandbox" }, message), {
      status: "delivered",
    });
    assert.equal(sandbox.requests.length, 1);
    assert.equal(production.requests.length, 0);
    assert.deepEqual(sandbox.problems(), []);
  });

  it("reuses the provider token for 50 minutes, then signs a new one", async (t) => {
    const { production, provider, clock } = await setup(t);
    const burst = await Promise.all(
      Array.from({ length: 5 }, (_, i) => provider.send(target, { ...message, seq: i })),
    );
    assert.ok(burst.every((o) => o.status === "delivered"));
    clock.now += 49 * 60_000;
    await provider.send(target, message);
    assert.equal(
      new Set(production.requests.map((r) => r.jwt)).size,
      1,
      "one token for the burst and 49 minutes",
    );

    clock.now += 2 * 60_000;
    assert.deepEqual(await provider.send(target, message), { status: "delivered" });
    const tokens = [...new Set(production.requests.map((r) => r.jwt))];
    assert.equal(tokens.length, 2);
    assert.equal(production.requests.at(-1)!.jwtClaims!.iat, clock.now / 1000);
    assert.deepEqual(production.problems(), [], "no ExpiredProviderToken and no TooManyProviderTokenUpdates");
  });

  it("re-signs once on 403 ExpiredProviderToken and delivers", async (t) => {
    const { production, provider, clock } = await setup(t);
    await provider.send(target, message);
    clock.now += 25 * 60_000;
    production.answer(apnsError(403, "ExpiredProviderToken"));
    assert.deepEqual(await provider.send(target, message), { status: "delivered" });
    const [, rejected, resent] = production.requests;
    assert.ok(rejected && resent);
    assert.equal(rejected.status, 403);
    assert.notEqual(resent.jwt, rejected.jwt);
    assert.equal(resent.jwtClaims!.iat, clock.now / 1000);
    assert.equal(resent.status, 200);
    assert.deepEqual(production.problems(), []);

    clock.now += 25 * 60_000;
    production.answer(apnsError(403, "ExpiredProviderToken"), apnsError(403, "ExpiredProviderToken"));
    const twice = await provider.send(target, message);
    assert.deepEqual(twice, { status: "failed", reason: "APNs 403 ExpiredProviderToken" });
    assert.equal(production.requests.length, 5, "one re-sign, not a loop");
  });

  it("fails with InvalidProviderToken when the key is not the team's (the fake verifies the signature)", async (t) => {
    const { production, provider } = await setup(t, { privateKey: p256Keys().pem });
    const outcome = await provider.send(target, message);
    assert.deepEqual(outcome, { status: "failed", reason: "APNs 403 InvalidProviderToken" });
    assert.deepEqual(production.problems(), [
      "request 0: provider token signature does not verify with the team's key",
      "request 1: provider token signature does not verify with the team's key",
    ]);
  });

  it("fails when the kid or team id do not match", async (t) => {
    const { production, provider } = await setup(t, { keyId: "OTHERKEY00" });
    assert.equal(reasonOf(await provider.send(target, message)), "APNs 403 InvalidProviderToken");
    assert.match(production.problems()[0] ?? "", /kid OTHERKEY00/);

    const team2 = await setup(t, { teamId: "OTHERTEAM0" });
    assert.equal(reasonOf(await team2.provider.send(target, message)), "APNs 403 InvalidProviderToken");
    assert.match(team2.production.problems()[0] ?? "", /iss OTHERTEAM0/);
  });

  it("maps APNs answers to outcomes", async (t) => {
    const { production, provider, clock } = await setup(t);
    const cases: Array<[ReturnType<typeof apnsError>, unknown]> = [
      [apnsError(400, "BadDeviceToken"), { status: "gone", reason: "APNs 400 BadDeviceToken" }],
      [
        apnsError(400, "DeviceTokenNotForTopic"),
        { status: "gone", reason: "APNs 400 DeviceTokenNotForTopic" },
      ],
      [apnsError(410, "ExpiredToken"), { status: "gone", reason: "APNs 410 ExpiredToken" }],
      [
        apnsError(429, "TooManyRequests", { "retry-after": "7" }),
        { status: "retry", reason: "APNs 429 TooManyRequests", retryAfterMs: 7000 },
      ],
      [apnsError(429, "TooManyRequests"), { status: "retry", reason: "APNs 429 TooManyRequests" }],
      [apnsError(503, "ServiceUnavailable"), { status: "retry", reason: "APNs 503 ServiceUnavailable" }],
      [
        apnsError(500, "InternalServerError", { "retry-after": new Date(clock.now + 60_000).toUTCString() }),
        { status: "retry", reason: "APNs 500 InternalServerError", retryAfterMs: 60_000 },
      ],
      [apnsError(400, "BadCollapseId"), { status: "failed", reason: "APNs 400 BadCollapseId" }],
      [apnsError(400, "TopicDisallowed"), { status: "failed", reason: "APNs 400 TopicDisallowed" }],
      [
        apnsError(403, "BadCertificateEnvironment"),
        { status: "failed", reason: "APNs 403 BadCertificateEnvironment" },
      ],
      [apnsError(413, "PayloadTooLarge"), { status: "failed", reason: "APNs 413 PayloadTooLarge" }],
      [
        { status: 502, body: "<html>bad gateway</html>" },
        { status: "retry", reason: "APNs 502 <html>bad gateway</html>" },
      ],
    ];
    for (const [answer, expected] of cases) {
      production.answer(answer);
      assert.deepEqual(await provider.send(target, message), expected);
    }
    assert.equal(production.requests.length, cases.length, "none of these answers causes a resend");
    assert.deepEqual(production.problems(), []);
  });

  it("reports an unregistered device as gone (410 Unregistered)", async (t) => {
    const { production, provider } = await setup(t);
    production.unregister(deviceToken);
    assert.deepEqual(await provider.send(target, message), {
      status: "gone",
      reason: "APNs 410 Unregistered",
    });
  });

  it("treats a token that is not hex as gone without sending it", async (t) => {
    const { production, provider } = await setup(t);
    const outcome = await provider.send({ ...target, token: "../../3/device/ab?x" }, message);
    assert.equal(outcome.status, "gone");
    assert.equal(production.requests.length, 0);
  });

  it("fails a topic that is not a bundle id without sending it", async (t) => {
    const { production, provider } = await setup(t);
    assert.equal((await provider.send({ ...target, topic: "org.app\r\nx: y" }, message)).status, "failed");
    assert.equal((await provider.send({ ...target, topic: "" }, message)).status, "failed");
    assert.equal(production.requests.length, 0);
  });

  it("sends apns-expiration 0 for a zero ttl (deliver once, do not store)", async (t) => {
    const { production, provider } = await setup(t);
    await provider.send(target, { ...message, ttlSeconds: 0 });
    assert.equal(production.requests[0]!.headers["apns-expiration"], "0");
    assert.deepEqual(production.problems(), []);
  });

  it("retries when APNs is unreachable or does not answer in time", async (t) => {
    const { production, provider } = await setup(t, {
      productionEndpoint: `http://127.0.0.1:${await closedPort()}`,
      timeoutMs: 200,
    });
    const refused = await provider.send(target, message);
    assert.equal(refused.status, "retry");
    assert.match(reasonOf(refused), /ECONNREFUSED/);

    const slow = new ApnsProvider({
      teamId: TEAM,
      keyId: KEY_ID,
      privateKey: team.pem,
      productionEndpoint: production.origin,
      timeoutMs: 200,
    });
    t.after(() => slow.close());
    production.answer({ status: 200, hang: true });
    const started = Date.now();
    const timedOut = await slow.send(target, message);
    assert.equal(timedOut.status, "retry");
    assert.match(reasonOf(timedOut), /no answer within 200 ms/);
    assert.ok(Date.now() - started < 1500);
    assert.deepEqual(await slow.send(target, message), { status: "delivered" }, "the connection still works");
  });

  it("opens a new connection after APNs closes one (GOAWAY)", async (t) => {
    const { production, provider } = await setup(t);
    await provider.send(target, message);
    production.closeConnections();
    for (let i = 0; i < 100 && production.openConnections() > 0; i++) await sleep(10);
    assert.deepEqual(await provider.send(target, message), { status: "delivered" });
    assert.deepEqual(
      production.requests.map((r) => r.session),
      [1, 2],
    );
    assert.deepEqual(production.problems(), []);
  });

  it("refuses targets of other kinds and sends nothing after close", async (t) => {
    const { production, provider } = await setup(t);
    assert.equal((await provider.send({ kind: "fcm", token: "x" }, message)).status, "failed");
    await provider.close();
    assert.equal((await provider.send(target, message)).status, "retry");
    assert.equal(production.requests.length, 0);
  });

  it("rejects a key that is not an EC P-256 private key at construction", () => {
    const base = { teamId: TEAM, keyId: KEY_ID };
    assert.throws(
      () => new ApnsProvider({ ...base, privateKey: "-----BEGIN PRIVATE KEY-----\nxx\n" }),
      /not a PEM/,
    );
    const rsa = generateKeyPairSync("rsa", { modulusLength: 1024 }).privateKey.export({
      type: "pkcs8",
      format: "pem",
    });
    assert.throws(() => new ApnsProvider({ ...base, privateKey: rsa as string }), /EC P-256/);
    const p384 = generateKeyPairSync("ec", { namedCurve: "secp384r1" }).privateKey.export({
      type: "pkcs8",
      format: "pem",
    });
    assert.throws(() => new ApnsProvider({ ...base, privateKey: p384 as string }), /EC P-256/);
  });
});

describe("FakeApnsService", () => {
  it("rejects requests that break Apple's format or carry content", async (t) => {
    const { production, provider, clock } = await setup(t);
    await provider.send(target, message);
    const jwt = production.requests[0]!.jwt!;
    const session = connect(production.origin);
    t.after(() => session.close());
    const send = (headers: Record<string, string>, body: unknown) =>
      new Promise<{ status: number; reason: string }>((resolve, reject) => {
        const stream = session.request({ ...apnsHeaders(target, message, jwt, clock.now), ...headers });
        let status = 0;
        let text = "";
        stream.on("response", (h) => {
          status = Number(h[":status"]);
        });
        stream.on("data", (c: Buffer) => {
          text += c.toString();
        });
        stream.on("end", () =>
          resolve({ status, reason: text === "" ? "" : (JSON.parse(text) as { reason: string }).reason }),
        );
        stream.on("error", reject);
        stream.end(typeof body === "string" ? body : JSON.stringify(body));
      });
    const good = apnsPayload(message);
    assert.deepEqual(await send({}, good), { status: 200, reason: "" });
    assert.deepEqual(await send({ "apns-priority": "10" }, good), { status: 400, reason: "BadPriority" });
    assert.deepEqual(await send({ "apns-topic": "com.other.app" }, good), {
      status: 400,
      reason: "TopicDisallowed",
    });
    assert.deepEqual(await send({ "apns-expiration": "soon" }, good), {
      status: 400,
      reason: "BadExpirationDate",
    });
    assert.deepEqual(await send({ ":path": "/3/device/xyz" }, good), {
      status: 400,
      reason: "BadDeviceToken",
    });
    assert.deepEqual(await send({ authorization: "bearer not.a.jwt" }, good), {
      status: 403,
      reason: "InvalidProviderToken",
    });
    assert.deepEqual(await send({}, { ...good, aps: { "content-available": 1, alert: "secret" } }), {
      status: 400,
      reason: "ContentNotAllowed",
    });
    assert.deepEqual(await send({}, ""), { status: 400, reason: "PayloadEmpty" });
    assert.equal(production.problems().length, 7);
  });

  it("answers ExpiredProviderToken for a token older than an hour", async (t) => {
    const { production, provider, clock } = await setup(t);
    // The provider's clock runs two hours behind APNs': every token it signs is already too old.
    const lagging = new ApnsProvider({
      teamId: TEAM,
      keyId: KEY_ID,
      privateKey: team.pem,
      productionEndpoint: production.origin,
      now: () => clock.now - 2 * 3600_000,
    });
    t.after(() => lagging.close());
    assert.deepEqual(await provider.send(target, message), { status: "delivered" });
    assert.deepEqual(await lagging.send(target, message), {
      status: "failed",
      reason: "APNs 403 ExpiredProviderToken",
    });
    assert.equal(production.requests.length, 3);
  });
});

runPushProviderConformance("APNs", async ({ timeoutMs }) => {
  const service = await FakeApnsService.start({
    teamId: TEAM,
    keyId: KEY_ID,
    publicKey: team.publicKey,
    topics: [TOPIC],
  });
  const provider = new ApnsProvider({
    teamId: TEAM,
    keyId: KEY_ID,
    privateKey: team.pem,
    productionEndpoint: service.origin,
    sandboxEndpoint: service.origin,
    timeoutMs,
  });
  return {
    provider,
    newTarget: () => ({
      kind: "apns",
      token: randomBytes(32).toString("hex"),
      topic: TOPIC,
      environment: "production",
    }),
    foreignTarget: { kind: "fcm", token: "not-for-apns" },
    forgetTarget: (t) => service.unregister((t as ApnsTarget).token),
    throttleNext: (seconds) =>
      service.answer(apnsError(429, "TooManyRequests", { "retry-after": String(seconds) })),
    stallNext: () => service.answer({ status: 200, hang: true }),
    received: async (t) =>
      service.requests
        .filter((r) => r.deviceToken === (t as ApnsTarget).token && r.status === 200)
        .map((r) => {
          // aps is for iOS itself; the app receives the other keys.
          const { aps: _aps, ...data } = r.body as Record<string, unknown>;
          return { data, collapseKey: r.headers["apns-collapse-id"] as string | undefined };
        }),
    requestCount: () => service.requests.length,
    problems: () => service.problems(),
    close: async () => {
      await provider.close();
      await service.close();
    },
  };
});
