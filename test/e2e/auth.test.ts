import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Code } from "@connectrpc/connect";
import { SignJWT } from "jose";
import { outgoingText, TestDevice } from "../helpers/device.js";
import { rejectsWith } from "../helpers/expect.js";
import { serverFixture } from "../helpers/fixture.js";

describe("authentication and authorization", () => {
  const fx = serverFixture({ SWITCHBOARD_MAX_DEVICES_PER_USER: "3" });
  const user = (prefix: string) => fx.user(prefix);

  it("refuses calls and streams without a valid token", async () => {
    const a = await user("auth");
    const anon = new TestDevice(fx.server.url, "", "", "", "anon");
    fx.track(anon);
    await rejectsWith(
      anon.conversations.listConversations({}),
      Code.Unauthenticated,
      /missing authorization/,
    );
    anon.token = "not-a-jwt";
    await rejectsWith(anon.conversations.listConversations({}), Code.Unauthenticated, /invalid/);
    // Signed with another key.
    anon.token = await new SignJWT({ did: a.deviceId })
      .setProtectedHeader({ alg: "HS256" })
      .setSubject(a.userId)
      .setIssuer("switchboard")
      .setAudience("switchboard-device")
      .setExpirationTime("1h")
      .sign(new Uint8Array(32).fill(7));
    await rejectsWith(anon.conversations.listConversations({}), Code.Unauthenticated, /invalid/);
    anon.connect();
    const err = await anon.ended();
    assert.equal(err?.code, Code.Unauthenticated);
    // Expired: a token with the server's own key but an expiry in the past.
    const key = Buffer.from(
      (await readFile(join(fx.server.dataDir, "token.key"), "utf8")).trim(),
      "base64url",
    );
    anon.token = await new SignJWT({ did: a.deviceId })
      .setProtectedHeader({ alg: "HS256" })
      .setSubject(a.userId)
      .setIssuer("switchboard")
      .setAudience("switchboard-device")
      .setIssuedAt(Math.floor(Date.now() / 1000) - 7200)
      .setExpirationTime(Math.floor(Date.now() / 1000) - 3600)
      .sign(key);
    await rejectsWith(anon.conversations.listConversations({}), Code.Unauthenticated, /expired/);
    await rejectsWith(
      anon.accounts.createToken({ deviceId: a.deviceId, deviceSecret: "wrong" }),
      Code.Unauthenticated,
      /wrong secret/,
    );
  });

  it("revoking a device closes its stream and stops its token and credential", async () => {
    const a = await user("rev");
    const laptop = await a.link("laptop");
    fx.track(laptop);
    laptop.connect();
    await laptop.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up");
    await a.accounts.revokeDevice({ deviceId: laptop.deviceId });
    const err = await laptop.ended();
    assert.equal(err?.code, Code.Unauthenticated);
    assert.match(err?.rawMessage ?? "", /revoked/);
    await rejectsWith(laptop.conversations.listConversations({}), Code.Unauthenticated, /revoked/);
    await rejectsWith(laptop.login(), Code.Unauthenticated, /revoked/);
    const { devices: listed } = await a.accounts.listDevices({ includeRevoked: true });
    assert.ok(listed.find((d) => d.deviceId === laptop.deviceId)!.revokedAtMs > 0n);
    const other = await user("other");
    await rejectsWith(other.accounts.revokeDevice({ deviceId: a.deviceId }), Code.NotFound);
  });

  it("link codes work once and the device limit holds", async () => {
    const a = await user("link");
    const { code } = await a.accounts.createLinkCode({});
    const anon = new TestDevice(fx.server.url, "", "", "", "anon");
    fx.track(anon);
    await anon.accounts.linkDevice({ code, deviceName: "one" });
    await rejectsWith(
      anon.accounts.linkDevice({ code, deviceName: "two" }),
      Code.NotFound,
      /unknown, used or expired/,
    );
    fx.track(await a.link("three"));
    await rejectsWith(a.link("four"), Code.ResourceExhausted, /at most 3 active devices/);
    await rejectsWith(anon.accounts.register({ username: a.username, deviceName: "x" }), Code.AlreadyExists);
  });

  it("only members read, send, type in or inspect a conversation", async () => {
    const [a, b, eve] = [await user("ma"), await user("mb"), await user("eve")];
    const { conversation } = await a.conversations.openDirect({ peerUserId: b.userId });
    const id = conversation!.conversationId;
    await rejectsWith(
      eve.gateway.send({ entry: outgoingText(id, "x", "intrude") }),
      Code.PermissionDenied,
      /not a member/,
    );
    await rejectsWith(eve.conversations.getHistory({ conversationId: id }), Code.PermissionDenied);
    await rejectsWith(eve.conversations.getConversation({ conversationId: id }), Code.PermissionDenied);
    await rejectsWith(
      eve.conversations.openDirect({ peerUserId: eve.userId }),
      Code.InvalidArgument,
      /yourself/,
    );
    await rejectsWith(
      eve.conversations.openDirect({ peerUserId: "u_00000000000000000000000000" }),
      Code.NotFound,
    );
    eve.connect();
    await eve.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up");
    eve.sendText(id, "s1", "intrude");
    const refused = await eve.waitFor(() => eve.ofCase("sendError")[0], "send error");
    assert.equal(refused.code, Code.PermissionDenied);
    eve.write({ case: "typing", value: { conversationId: id, active: true } as never });
    const typing = await eve.waitFor(
      () => eve.ofCase("error").find((e) => e.frame === "typing"),
      "typing refused",
    );
    assert.equal(typing.code, Code.PermissionDenied);
    eve.write({
      case: "presenceSubscribe",
      value: { subscribeUserIds: [a.userId], unsubscribeUserIds: [] } as never,
    });
    const presence = await eve.waitFor(
      () => eve.ofCase("error").find((e) => e.frame === "presence_subscribe"),
      "presence refused",
    );
    assert.equal(presence.code, Code.PermissionDenied);
    eve.write({
      case: "syncRequest",
      value: { requestId: 9, conversationId: id, afterSeq: 0n, limit: 10 } as never,
    });
    const page = await eve.waitFor(() => eve.ofCase("syncPage").find((p) => p.requestId === 9), "sync page");
    assert.equal(page.errorCode, Code.PermissionDenied);
    assert.equal(page.entries.length, 0);
    const history = await b.conversations.getHistory({ conversationId: id });
    assert.equal(history.lastSeq, 1n, "nothing eve did reached the log");
  });
});
