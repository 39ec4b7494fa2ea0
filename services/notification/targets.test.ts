import assert from "node:assert/strict";
import { createECDH, randomBytes } from "node:crypto";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { ApnsEnvironment, SetPushTargetRequestSchema } from "../../gen/switchboard/v1/accounts_pb.js";
import { InvalidInputError } from "../common/errors.js";
import { generateVapidKeys, WebPushProvider } from "./providers/webpush.js";
import {
  INTERNAL_ENDPOINT_CODE,
  isInternalAddress,
  publicOnlyLookup,
  targetFromRequest,
  targetFromWire,
  targetToWire,
} from "./targets.js";
import type { PushMessage } from "./types.js";

const p256dh = Buffer.concat([Buffer.from([4]), randomBytes(64)]).toString("base64url");
const auth = randomBytes(16).toString("base64url");

function web(endpoint: string, keys = { p256dh, auth }) {
  return create(SetPushTargetRequestSchema, { target: { case: "webPush", value: { endpoint, ...keys } } });
}

function refused(fn: () => unknown, pattern: RegExp): void {
  assert.throws(
    fn,
    (e: unknown) =>
      // INVALID_ARGUMENT at the boundary.
      e instanceof InvalidInputError && pattern.test(e.message),
  );
}

describe("push targets", () => {
  it("accepts well-formed targets of each kind and round-trips them through the wire form", () => {
    const targets = [
      targetFromRequest(web("https://push.example.com/abc"), false),
      targetFromRequest(
        create(SetPushTargetRequestSchema, { target: { case: "fcm", value: { token: "abc:DEF-123_x" } } }),
        false,
      ),
      targetFromRequest(
        create(SetPushTargetRequestSchema, {
          target: {
            case: "apns",
            value: {
              token: "AB".repeat(32),
              topic: "com.example.chat",
              environment: ApnsEnvironment.SANDBOX,
            },
          },
        }),
        false,
      ),
    ];
    assert.equal(
      targets[2]?.kind === "apns" && targets[2].token,
      "ab".repeat(32),
      "APNs tokens are normalised",
    );
    for (const t of targets) assert.deepEqual(targetFromWire(targetToWire(t)), t);
  });

  it("refuses malformed targets, http, and local or private endpoints unless the operator allows them", () => {
    refused(() => targetFromRequest(web("not a url"), false), /not a URL/);
    refused(() => targetFromRequest(web("http://push.example.com/x"), false), /https/);
    for (const host of [
      "127.0.0.1",
      "10.1.2.3",
      "192.168.0.10",
      "172.20.0.1",
      "169.254.169.254",
      "[::1]",
      "localhost",
    ]) {
      refused(() => targetFromRequest(web(`https://${host}/x`), false), /public push service/);
    }
    assert.equal(targetFromRequest(web("http://127.0.0.1:9999/push/1"), true).kind, "webpush");
    refused(
      () => targetFromRequest(web("https://push.example.com/x", { p256dh: "short", auth }), false),
      /p256dh/,
    );
    refused(
      () => targetFromRequest(web("https://push.example.com/x", { p256dh, auth: "AAAA" }), false),
      /auth/,
    );
    refused(
      () =>
        targetFromRequest(
          create(SetPushTargetRequestSchema, { target: { case: "fcm", value: { token: "" } } }),
          false,
        ),
      /fcm.token/,
    );
    refused(
      () =>
        targetFromRequest(
          create(SetPushTargetRequestSchema, {
            target: {
              case: "apns",
              value: { token: "zz", topic: "com.example.chat", environment: ApnsEnvironment.PRODUCTION },
            },
          }),
          false,
        ),
      /apns.token/,
    );
    refused(() => targetFromRequest(create(SetPushTargetRequestSchema, {}), false), /required/);
  });
});

describe("push endpoints at send time (SSRF)", () => {
  it("classifies loopback, private, link-local and mapped addresses as internal", () => {
    for (const a of [
      "127.0.0.1",
      "10.1.2.3",
      "172.16.0.1",
      "192.168.1.1",
      "169.254.169.254",
      "100.64.0.1",
      "0.0.0.0",
      "::1",
      "::",
      "fe80::1",
      "fd00::1",
      "::ffff:127.0.0.1",
      "::ffff:7f00:1",
      "64:ff9b::10.0.0.1",
      "2002:c0a8:0101::1",
      "[::1]",
    ]) {
      assert.equal(isInternalAddress(a), true, a);
    }
    for (const a of ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "push.example.com"]) {
      assert.equal(isInternalAddress(a), false, a);
    }
  });

  it("the lookup refuses a name that resolves to an internal address, with any resolver", async () => {
    const lookupOf = (lookup: ReturnType<typeof publicOnlyLookup>, host: string, all: boolean) =>
      new Promise<unknown>((resolve, reject) =>
        (lookup as unknown as (h: string, o: object, cb: (e: Error | null, a: unknown) => void) => void)(
          host,
          { all },
          (err, address) => (err ? reject(err) : resolve(address)),
        ),
      );
    const injected = publicOnlyLookup(async (host) =>
      host === "push.example.test"
        ? [
            { address: "93.184.216.34", family: 4 },
            { address: "127.0.0.1", family: 4 },
          ]
        : [{ address: "93.184.216.34", family: 4 }],
    );
    await assert.rejects(lookupOf(injected, "push.example.test", true), (e: NodeJS.ErrnoException) => {
      return e.code === INTERNAL_ENDPOINT_CODE && /resolves to 127\.0\.0\.1/.test(e.message);
    });
    assert.deepEqual(await lookupOf(injected, "public.example.test", true), [
      { address: "93.184.216.34", family: 4 },
    ]);
    // The system resolver: localhost is loopback.
    await assert.rejects(
      lookupOf(publicOnlyLookup(), "localhost", false),
      (e: NodeJS.ErrnoException) => e.code === INTERNAL_ENDPOINT_CODE,
    );
  });

  it("Web Push never connects to an internal endpoint, by name or literal; allowed only when configured", async () => {
    let received = 0;
    const server = http.createServer((req, res) => {
      received++;
      req.resume();
      res.writeHead(201).end();
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as AddressInfo).port;
    const keys = generateVapidKeys();
    const options = {
      vapidPublicKey: keys.publicKey,
      vapidPrivateKey: keys.privateKey,
      subject: "mailto:ops@example.com",
    };
    const p256 = createECDH("prime256v1");
    p256.generateKeys();
    const target = (endpoint: string) => ({
      kind: "webpush" as const,
      endpoint,
      p256dh: p256.getPublicKey().toString("base64url"),
      auth: randomBytes(16).toString("base64url"),
    });
    const message: PushMessage = {
      conversationId: "g_1",
      seq: 1,
      collapseKey: "c1",
      ttlSeconds: 60,
      urgency: "high",
    };
    // A name that resolves to 127.0.0.1 (the injected resolver stands in for an attacker's DNS).
    const attackerDns = async () => [{ address: "127.0.0.1", family: 4 }];
    const guarded = new WebPushProvider({ ...options, resolve: attackerDns });
    const open = new WebPushProvider({ ...options, allowPrivateEndpoints: true, resolve: attackerDns });
    try {
      for (const endpoint of [
        `http://push.example.test:${port}/p/1`,
        `http://localhost:${port}/p/2`,
        `http://127.0.0.1:${port}/p/3`,
        `http://[::ffff:127.0.0.1]:${port}/p/4`,
      ]) {
        const outcome = await (endpoint.includes("localhost") ? new WebPushProvider(options) : guarded).send(
          target(endpoint),
          message,
        );
        assert.equal(outcome.status, "failed", endpoint);
        assert.match((outcome as { reason: string }).reason, /endpoint refused/);
      }
      assert.equal(received, 0, "nothing reached the internal server");
      assert.equal(guarded.refusedEndpoints, 3);
      // The control: the same push where the operator allows private endpoints arrives.
      const delivered = await open.send(target(`http://push.example.test:${port}/p/5`), message);
      assert.equal(delivered.status, "delivered");
      assert.equal(received, 1);
    } finally {
      await guarded.close();
      await open.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});
