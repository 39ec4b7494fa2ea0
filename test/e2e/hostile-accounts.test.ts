import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { connect } from "node:net";
import { describe, it } from "node:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { IdentityKeyPair, KEMKeyPair, PrivateKey } from "@signalapp/libsignal-client";
import { AccountService } from "../../gen/switchboard/v1/accounts_pb.js";
import { KeyService } from "../../gen/switchboard/v1/keys_pb.js";
import { MediaService } from "../../gen/switchboard/v1/media_pb.js";
import { TestDevice, uniqueName } from "../helpers/device.js";
import { serverFixture } from "../helpers/fixture.js";
import { loggedLine } from "../helpers/server.js";

/** Rejects with `code` and a message matching `pattern`; returns the error. */
async function refused(call: Promise<unknown>, code: Code, pattern: RegExp): Promise<ConnectError> {
  try {
    await call;
  } catch (err) {
    const e = ConnectError.from(err);
    assert.equal(Code[e.code], Code[code], e.rawMessage);
    assert.match(e.rawMessage, pattern);
    return e;
  }
  assert.fail(`expected ${Code[code]}`);
}

/** An AccountService client whose connections leave from `localAddress` (any 127.x.y.z is loopback). */
function accountsFrom(url: string, localAddress: string, headers: Record<string, string> = {}) {
  const { hostname, port } = new URL(url);
  const sessions = new Http2SessionManager(
    url,
    {},
    { createConnection: () => connect({ host: hostname, port: Number(port), localAddress }) },
  );
  const transport = createGrpcTransport({
    baseUrl: url,
    sessionManager: sessions,
    interceptors: [
      (next) => (req) => {
        for (const [k, v] of Object.entries(headers)) req.header.set(k, v);
        return next(req);
      },
    ],
  });
  return { client: createClient(AccountService, transport), close: () => sessions.abort() };
}

function signed(identity: IdentityKeyPair, keyId: number, key: Uint8Array) {
  const publicKey = new Uint8Array(key);
  return { keyId, publicKey, signature: identity.privateKey.sign(publicKey) };
}

/** A first upload with `ec` one-time EC prekeys and `kyber` one-time Kyber prekeys. */
function firstUpload(identity: IdentityKeyPair, ec: number, kyber: number) {
  return {
    identityKey: identity.publicKey.serialize(),
    registrationId: 1 + Math.floor(Math.random() * 16_000),
    signedPrekey: signed(identity, 1, PrivateKey.generate().getPublicKey().serialize()),
    kyberLastResortPrekey: signed(identity, 1_000_000, KEMKeyPair.generate().getPublicKey().serialize()),
    oneTimePrekeys: Array.from({ length: ec }, (_, i) => ({
      keyId: 1 + i,
      publicKey: PrivateKey.generate().getPublicKey().serialize(),
    })),
    oneTimeKyberPrekeys: Array.from({ length: kyber }, (_, i) =>
      signed(identity, 1 + i, KEMKeyPair.generate().getPublicKey().serialize()),
    ),
  };
}

describe("hostile clients against the accounts service (one server process, real gRPC)", () => {
  const fx = serverFixture({
    SWITCHBOARD_LOOKUPS_PER_MINUTE: "20",
    SWITCHBOARD_BUNDLE_FETCHES_PER_MINUTE: "160",
  });

  it("a link code stops working when the device that made it is revoked (finding 3)", async () => {
    const phone = await fx.user("owner");
    const laptop = fx.track(await phone.link("laptop"));
    // The thief holds the phone and makes a code; the owner revokes the phone from the laptop.
    const { code } = await phone.accounts.createLinkCode({});
    await laptop.accounts.revokeDevice({ deviceId: phone.deviceId });
    const bootstrap = new TestDevice(fx.server.url, "", "", "", phone.username);
    try {
      await refused(
        bootstrap.accounts.linkDevice({ code, deviceName: "thief" }),
        Code.PermissionDenied,
        /device that created it has been revoked/,
      );
    } finally {
      bootstrap.sessions.abort();
    }
    const { devices } = await laptop.accounts.listDevices({});
    assert.deepEqual(
      devices.map((d) => d.deviceId),
      [laptop.deviceId],
      "no device was linked",
    );
  });

  it("a link code made before any revocation on the account is void too", async () => {
    const phone = await fx.user("owner2");
    const tablet = fx.track(await phone.link("tablet"));
    const { code } = await phone.accounts.createLinkCode({});
    // The owner revokes another device (say a stolen tablet that also saw the code): void.
    await phone.accounts.revokeDevice({ deviceId: tablet.deviceId });
    const bootstrap = new TestDevice(fx.server.url, "", "", "", phone.username);
    try {
      await refused(
        bootstrap.accounts.linkDevice({ code, deviceName: "new" }),
        Code.PermissionDenied,
        /revoked after it was created/,
      );
      // A code made after the revocation links as usual.
      const fresh = await phone.accounts.createLinkCode({});
      const linked = await bootstrap.accounts.linkDevice({ code: fresh.code, deviceName: "new" });
      assert.equal(linked.user?.userId, phone.userId);
    } finally {
      bootstrap.sessions.abort();
    }
  });

  it("refuses reserved, dotted and look-alike usernames and reserved display names", async () => {
    const anon = new TestDevice(fx.server.url, "", "", "", "");
    try {
      for (const username of ["admin", "adm1n", "support_", "switchboard", "r00t", "security"]) {
        await refused(
          anon.accounts.register({ username, deviceName: "x" }),
          Code.InvalidArgument,
          /reserved name/,
        );
      }
      await refused(
        anon.accounts.register({ username: `${uniqueName("dot")}.`, deviceName: "x" }),
        Code.InvalidArgument,
        /dot/,
      );
      // Cyrillic Ѕ and р: reads as "Support".
      await refused(
        anon.accounts.register({ username: uniqueName("x"), displayName: "Ѕuррort", deviceName: "x" }),
        Code.InvalidArgument,
        /display_name: too close to the reserved name "support"/,
      );
      const base = `paypal_${Math.random()
        .toString(36)
        .slice(2, 8)
        .replace(/[01lom]/g, "x")}`;
      await anon.accounts.register({ username: base, deviceName: "x" });
      for (const lookAlike of [
        base.replace("l", "1"),
        base.replace("o", "0"),
        `${base}`.replace("pal", "pa1"),
      ]) {
        if (lookAlike === base) continue;
        await refused(
          anon.accounts.register({ username: lookAlike, deviceName: "x" }),
          Code.AlreadyExists,
          /looks like an existing user's/,
        );
      }
      const moon = `moon_${Math.random()
        .toString(36)
        .slice(2, 8)
        .replace(/[01lom]/g, "x")}`;
      await anon.accounts.register({ username: moon, deviceName: "x" });
      await refused(
        anon.accounts.register({ username: `rn${moon.slice(1)}`, deviceName: "x" }),
        Code.AlreadyExists,
        /looks like/,
      );
    } finally {
      anon.sessions.abort();
    }
  });

  it("a stranger cannot drain a user's one-time prekeys; sessions stay possible (issue 17 item 9)", async () => {
    const bob = await fx.user("bob");
    const stranger = await fx.user("stranger");
    const bobKeys = createClient(KeyService, bob.transport);
    const strangerKeys = createClient(KeyService, stranger.transport);
    await bobKeys.uploadKeys(firstUpload(IdentityKeyPair.generate(), 100, 32));

    // 150 fetches in a burst, all answered (under the 160 per minute call limit).
    const answers = await Promise.all(
      Array.from({ length: 150 }, () => strangerKeys.getBundles({ userId: bob.userId })),
    );
    const withOneTime = answers.filter((a) => a.bundles[0]?.oneTimePrekey !== undefined).length;
    assert.equal(withOneTime, 4, "the default is 4 one-time prekeys per requester and device per day");
    for (const a of answers) {
      const b = a.bundles[0];
      assert.ok(b?.signedPrekey, "every answer can open a session");
      assert.ok(b.kyberPrekey, "with a Kyber prekey");
      if (b.oneTimePrekey === undefined) assert.equal(b.kyberPrekeyIsLastResort, true);
    }
    const { counts } = await bobKeys.getPrekeyCounts({});
    assert.equal(counts?.oneTimeEcPrekeys, 96);
    assert.equal(counts?.oneTimeKyberPrekeys, 28);

    // Another user still gets one-time prekeys: the limit is per requester.
    const friend = await fx.user("friend");
    const fromFriend = await createClient(KeyService, friend.transport).getBundles({ userId: bob.userId });
    assert.ok(fromFriend.bundles[0]?.oneTimePrekey);
    assert.equal(fromFriend.bundles[0]?.kyberPrekeyIsLastResort, false);

    // Past the per-user call limit (160 per minute, 10 left), fetches are refused with a retry
    // hint; the bucket refills 2.7 a second, far fewer than the 50 extra calls in this burst.
    const more = await Promise.allSettled(
      Array.from({ length: 60 }, () => strangerKeys.getBundles({ userId: bob.userId })),
    );
    const refusals = more.filter((r) => r.status === "rejected").map((r) => ConnectError.from(r.reason));
    assert.ok(refusals.length >= 10, `${refusals.length} refused`);
    for (const e of refusals) {
      assert.equal(e.code, Code.ResourceExhausted);
      assert.match(e.rawMessage, /per minute per user/);
      assert.ok(Number(e.metadata.get("retry-after-ms")) > 0);
    }
  });

  it("LookupUsers is limited per requester, in names looked up", async () => {
    const carol = await fx.user("carol");
    const names = Array.from(
      { length: 15 },
      (_, i) => `nobody_${i}_${Math.random().toString(36).slice(2, 6)}`,
    );
    await carol.accounts.lookupUsers({ usernames: names });
    const e = await refused(
      carol.accounts.lookupUsers({ usernames: names.slice(0, 10) }),
      Code.ResourceExhausted,
      /20 names per minute per user/,
    );
    assert.ok(Number(e.metadata.get("retry-after-ms")) > 0);
    // Another user is not affected.
    const dave = await fx.user("dave");
    await dave.accounts.lookupUsers({ usernames: names.slice(0, 6) });
  });
});

describe("registration limits, per source address and server-wide (one server process)", () => {
  const fx = serverFixture({
    SWITCHBOARD_REGISTRATIONS_PER_ADDRESS_PER_HOUR: "3",
    SWITCHBOARD_REGISTRATIONS_PER_HOUR: "5",
  });

  it("counts the TCP peer, not a header the client sends, and stops the whole server past its limit", async () => {
    const spoof = (i: number) => ({
      "x-switchboard-peer": `203.0.113.${i}`,
      "x-forwarded-for": `198.51.100.${i}`,
    });
    const first = accountsFrom(fx.server.url, "127.0.0.1", spoof(1));
    const second = accountsFrom(fx.server.url, "127.0.0.2");
    const third = accountsFrom(fx.server.url, "127.0.0.3");
    try {
      for (let i = 0; i < 3; i++) {
        // A new forged address on every call changes nothing: the socket's address counts.
        const c = accountsFrom(fx.server.url, "127.0.0.1", spoof(10 + i));
        await c.client.register({ username: uniqueName("reg"), deviceName: "x" });
        c.close();
      }
      const e = await refused(
        first.client.register({ username: uniqueName("reg"), deviceName: "x" }),
        Code.ResourceExhausted,
        /3 per hour per network address/,
      );
      assert.ok(Number(e.metadata.get("retry-after-ms")) > 0);
      // Another address has its own allowance, until the server-wide one (5) is spent.
      await second.client.register({ username: uniqueName("reg"), deviceName: "x" });
      await second.client.register({ username: uniqueName("reg"), deviceName: "x" });
      await refused(
        third.client.register({ username: uniqueName("reg"), deviceName: "x" }),
        Code.ResourceExhausted,
        /5 per hour on this server/,
      );
    } finally {
      first.close();
      second.close();
      third.close();
    }
    await loggedLine(
      fx.server,
      (l) => l.includes('"refusal":"register_rate_address"'),
      "register_rate_address",
    );
  });
});

describe("upload quota per user (one server process, local object store)", () => {
  const fx = serverFixture({
    SWITCHBOARD_MEDIA_MAX_BYTES: "1000",
    SWITCHBOARD_MEDIA_UPLOAD_BYTES_PER_DAY: "2500",
    SWITCHBOARD_MEDIA_MAX_UPLOADS_IN_FLIGHT: "3",
  });

  it("bounds objects in flight and bytes per day, per user", async () => {
    const alice = await fx.user("alice");
    const bob = await fx.user("bob");
    const { conversation } = await alice.conversations.openDirect({ peerUserId: bob.userId });
    const conversationId = conversation!.conversationId;
    const aliceMedia = createClient(MediaService, alice.transport);

    // Three uploads created and never claimed fill alice's slots.
    const held = [];
    for (let i = 0; i < 3; i++)
      held.push(await aliceMedia.createUpload({ conversationId, lengthBytes: 100n }));
    await refused(
      aliceMedia.createUpload({ conversationId, lengthBytes: 100n }),
      Code.ResourceExhausted,
      /at most 3 uploads may be in flight/,
    );
    // Claiming one frees its slot.
    const first = held[0]!;
    assert.equal((await fetch(first.uploadUrl, { method: "PUT", body: randomBytes(100) })).status, 200);
    await aliceMedia.claimUpload({ objectId: first.objectId, conversationId });
    const fourth = await aliceMedia.createUpload({ conversationId, lengthBytes: 1000n });
    assert.equal((await fetch(fourth.uploadUrl, { method: "PUT", body: randomBytes(1000) })).status, 200);
    await aliceMedia.claimUpload({ objectId: fourth.objectId, conversationId });

    // 1,300 of 2,500 bytes spent; 1,000 more fit, then 1,000 do not.
    const fifth = await aliceMedia.createUpload({ conversationId, lengthBytes: 1000n });
    assert.equal((await fetch(fifth.uploadUrl, { method: "PUT", body: randomBytes(1000) })).status, 200);
    await aliceMedia.claimUpload({ objectId: fifth.objectId, conversationId });
    const e = await refused(
      aliceMedia.createUpload({ conversationId, lengthBytes: 1000n }),
      Code.ResourceExhausted,
      /limited to 2500 bytes per user per day/,
    );
    assert.ok(Number(e.metadata.get("retry-after-ms")) > 0);
    // Bob's quota is his own.
    await createClient(MediaService, bob.transport).createUpload({ conversationId, lengthBytes: 1000n });
  });
});
