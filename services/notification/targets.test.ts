import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { ApnsEnvironment, SetPushTargetRequestSchema } from "../../gen/switchboard/v1/accounts_pb.js";
import { targetFromRequest, targetFromWire, targetToWire } from "./targets.js";

const p256dh = Buffer.concat([Buffer.from([4]), randomBytes(64)]).toString("base64url");
const auth = randomBytes(16).toString("base64url");

function web(endpoint: string, keys = { p256dh, auth }) {
  return create(SetPushTargetRequestSchema, { target: { case: "webPush", value: { endpoint, ...keys } } });
}

function refused(fn: () => unknown, pattern: RegExp): void {
  assert.throws(
    fn,
    (e: unknown) =>
      e instanceof ConnectError && e.code === Code.InvalidArgument && pattern.test(e.rawMessage),
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
