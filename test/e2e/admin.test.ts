import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import * as http2 from "node:http2";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type Client, Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { AdminService } from "../../gen/switchboard/internal/v1/admin_pb.js";
import { ROLES } from "../../services/common/config.js";
import { INTERNAL_HEADER, internalCredential } from "../../services/common/internal-auth.js";
import type { TestDevice } from "../helpers/device.js";
import { rejectsWith } from "../helpers/expect.js";
import { serverFixture } from "../helpers/fixture.js";
import { type Finished, runSwitchboard } from "../helpers/process.js";

const _root = new URL("../../", import.meta.url).pathname;

/** Runs `switchboard admin ...` as its own process, as an operator would. */
function cli(args: readonly string[], env: Record<string, string> = {}): Promise<Finished> {
  const { SWITCHBOARD_TOKEN_KEY: _ignored, ...inherited } = process.env;
  return runSwitchboard(["admin", ...args], { ...inherited, ...env });
}

/** GET over h2c (the server answers /readyz on its h2c port when it has no admin port). */
function h2get(url: string, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(url);
    session.once("error", reject);
    const req = session.request({ ":path": path });
    let body = "";
    let status = 0;
    req.on("response", (headers) => (status = Number(headers[":status"])));
    req.setEncoding("utf8").on("data", (c: string) => (body += c));
    req.once("end", () => {
      session.close();
      resolve({ status, body });
    });
    req.once("error", reject);
    req.end();
  });
}

async function connected(device: TestDevice): Promise<string> {
  device.connect();
  await device.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up");
  return device.ofCase("ready")[0]!.sessionId;
}

describe("switchboard admin against a running server", () => {
  const fx = serverFixture();
  const sessions: Http2SessionManager[] = [];
  let admin: Client<typeof AdminService>;
  let dataDirArgs: string[];

  const adminClient = (header?: string): Client<typeof AdminService> => {
    const sessionManager = new Http2SessionManager(fx.server.url);
    sessions.push(sessionManager);
    return createClient(
      AdminService,
      createGrpcTransport({
        baseUrl: fx.server.url,
        sessionManager,
        interceptors: header
          ? [
              (next) => (req) => {
                req.header.set(INTERNAL_HEADER, header);
                return next(req);
              },
            ]
          : [],
      }),
    );
  };

  before(async () => {
    const key = Buffer.from(
      (await readFile(join(fx.server.dataDir, "token.key"), "utf8")).trim(),
      "base64url",
    );
    admin = adminClient(internalCredential(key));
    dataDirArgs = ["--url", fx.server.url, "--data-dir", fx.server.dataDir];
  });
  after(() => {
    for (const s of sessions) s.abort();
  });

  it("refuses callers without the internal credential with UNAUTHENTICATED", async () => {
    await rejectsWith(adminClient().getStats({}), Code.Unauthenticated, /internal credential/);
    await rejectsWith(adminClient("forged").drainGateway({}), Code.Unauthenticated, /internal credential/);
    // A device token is no substitute either.
    const a = await fx.user("adm_anon");
    const asDevice = createClient(AdminService, a.transport);
    await rejectsWith(asDevice.getStats({}), Code.Unauthenticated, /internal credential/);

    const missing = await cli(["stats", "--url", fx.server.url]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /no internal credential: set SWITCHBOARD_TOKEN_KEY .* --data-dir/);
    const wrong = await cli(["stats", "--url", fx.server.url], {
      SWITCHBOARD_TOKEN_KEY: Buffer.alloc(32, 9).toString("base64url"),
    });
    assert.equal(wrong.code, 1);
    assert.match(wrong.stderr, /refused the internal credential/);
    // The server is still fine, and nothing was drained.
    assert.equal((await admin.getStats({})).gateway?.draining, false);
  });

  it("stats shows the open streams, per process", async () => {
    const a = await fx.user("adm_stats");
    const laptop = fx.track(await a.link("laptop"));
    await connected(a);
    await connected(laptop);
    const s = await admin.getStats({});
    assert.equal(s.roles.length, ROLES.length);
    assert.equal(s.gateway?.streams, 2);
    assert.equal(s.gateway?.devices, 2);
    assert.deepEqual(s.sequencer?.ownedShards.length, 16);

    const text = await cli(["stats", ...dataDirArgs]);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, new RegExp(`instance ${s.instanceId}`));
    assert.match(text.stdout, /gateway\s+streams\s+2\n/);
    assert.match(text.stdout, /owned shards\s+0-15/);
    const json = await cli(["stats", "--json", ...dataDirArgs]);
    assert.equal(json.code, 0, json.stderr);
    const parsed = JSON.parse(json.stdout.trim()) as { url: string; gateway: { streams: number } };
    assert.equal(parsed.url, fx.server.url);
    assert.equal(parsed.gateway.streams, 2);
    await a.disconnect();
    await laptop.disconnect();
  });

  it("user lists the devices and the live route", async () => {
    const a = await fx.user("adm_user");
    const laptop = fx.track(await a.link("laptop"));
    const session = await connected(a);
    const { instanceId } = await admin.getStats({});

    const r = await admin.lookupUser({ user: a.username });
    assert.equal(r.user?.userId, a.userId);
    assert.deepEqual(r.devices.map((d) => d.deviceId).sort(), [a.deviceId, laptop.deviceId].sort());
    assert.equal(r.online, true);
    assert.deepEqual(
      r.routes.map((x) => [x.deviceId, x.gatewayId, x.sessionId]),
      [[a.deviceId, instanceId, session]],
    );

    const out = await cli(["user", a.username, ...dataDirArgs]);
    assert.equal(out.code, 0, out.stderr);
    assert.match(out.stdout, new RegExp(`user @${a.username} \\(${a.userId}\\)`));
    assert.match(out.stdout, /online \(1 live route\)/);
    assert.match(out.stdout, new RegExp(`${a.deviceId}\\s+test\\s.*${instanceId} \\(session ${session}\\)`));
    assert.match(out.stdout, new RegExp(`${laptop.deviceId}\\s+laptop\\s.*offline`));
    const byId = await cli(["user", a.userId, ...dataDirArgs]);
    assert.equal(byId.code, 0, byId.stderr);
    assert.match(byId.stdout, new RegExp(`user @${a.username}`));

    const unknown = await cli(["user", "adm_nobody_at_all", ...dataDirArgs]);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /no user "adm_nobody_at_all" \[NotFound\]/);
    await a.disconnect();
  });

  it("revoke closes the device's stream with UNAUTHENTICATED and stops its credential", async () => {
    const a = await fx.user("adm_rev");
    const laptop = fx.track(await a.link("laptop"));
    await connected(a);
    await connected(laptop);
    const out = await cli(["revoke", laptop.deviceId, ...dataDirArgs]);
    assert.equal(out.code, 0, out.stderr);
    assert.match(
      out.stdout,
      new RegExp(`revoked device ${laptop.deviceId} \\("laptop", user ${a.userId}\\)`),
    );
    const err = await laptop.ended();
    assert.equal(err?.code, Code.Unauthenticated);
    assert.match(err?.rawMessage ?? "", /revoked/);
    await rejectsWith(laptop.login(), Code.Unauthenticated, /revoked/);
    // The other device is untouched.
    assert.equal(a.streamEnded, false);
    const again = await cli(["revoke", laptop.deviceId, ...dataDirArgs]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /already revoked/);
    const bad = await cli(["revoke", "not-a-device", ...dataDirArgs]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /device_id: not a valid id \[InvalidArgument\]/);
    await a.disconnect();
  });

  // Last: a drained gateway takes no more streams.
  it("drain closes every stream with UNAVAILABLE, turns readiness off and refuses new streams", async () => {
    assert.equal((await h2get(fx.server.url, "/readyz")).status, 200);
    const a = await fx.user("adm_drain");
    const b = await fx.user("adm_drain");
    await connected(a);
    await connected(b);
    const out = await cli(["drain", ...dataDirArgs]);
    assert.equal(out.code, 0, out.stderr);
    // At least these two: streams of earlier tests may still be closing.
    const closed = Number(/drained gateway .*: closed (\d+) streams/.exec(out.stdout)?.[1]);
    assert.ok(closed >= 2, out.stdout);
    for (const device of [a, b]) {
      const err = await device.ended();
      assert.equal(err?.code, Code.Unavailable);
      assert.match(err?.rawMessage ?? "", /gateway is shutting down; reconnect/);
    }
    const ready = await h2get(fx.server.url, "/readyz");
    assert.equal(ready.status, 503);
    assert.match(ready.body, /drained by an operator/);
    assert.equal((await h2get(fx.server.url, "/healthz")).status, 200);
    // A device that comes back to this gateway is sent elsewhere.
    a.connect();
    const refused = await a.ended();
    assert.equal(refused?.code, Code.Unavailable);
    const s = await admin.getStats({});
    assert.equal(s.gateway?.streams, 0);
    assert.equal(s.gateway?.draining, true);
    // The process keeps serving until it is stopped; the fixture checks it then exits cleanly.
    assert.equal((await admin.lookupUser({ user: b.username })).user?.userId, b.userId);
  });
});
