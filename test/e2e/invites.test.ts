import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type Client, Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { AccountService } from "../../gen/switchboard/v1/accounts_pb.js";
import { uniqueName } from "../helpers/device.js";
import { rejectsWith } from "../helpers/expect.js";
import { type ServerFixture, serverFixture } from "../helpers/fixture.js";
import { eventually } from "../helpers/inbox.js";
import { type Finished, runSwitchboard } from "../helpers/process.js";

const _root = new URL("../../", import.meta.url).pathname;

/** Runs `switchboard ...` as its own process, as an operator or a user would. */
function switchboard(args: readonly string[]): Promise<Finished> {
  const { SWITCHBOARD_TOKEN_KEY: _key, SWITCHBOARD_URL: _url, SWITCHBOARD_PROFILE: _p, ...env } = process.env;
  return runSwitchboard(args, env);
}

/** The public AccountService of a server, unauthenticated (Register needs no token). */
function accountsOf(fx: ServerFixture, sessions: Http2SessionManager[]): Client<typeof AccountService> {
  const sessionManager = new Http2SessionManager(fx.server.url);
  sessions.push(sessionManager);
  return createClient(AccountService, createGrpcTransport({ baseUrl: fx.server.url, sessionManager }));
}

interface CreatedInvite {
  token: string;
  invite: { inviteId: string; usesLeft: number; maxUses: number; expiresAtMs: string; note: string };
  registrationMode: string;
}

describe("invite-only registration (SWITCHBOARD_REGISTRATION=invite) against a server process", () => {
  const fx = serverFixture({ SWITCHBOARD_REGISTRATION: "invite" });
  const sessions: Http2SessionManager[] = [];
  let accounts: Client<typeof AccountService>;
  let admin: (...args: string[]) => Promise<Finished>;
  const tokens: string[] = [];

  /** `admin invite create` with the given flags, as JSON. */
  async function createInvite(...flags: string[]): Promise<CreatedInvite> {
    const r = await admin("invite", "create", "--json", ...flags);
    assert.equal(r.code, 0, r.stderr);
    const created = JSON.parse(r.stdout.trim()) as CreatedInvite;
    tokens.push(created.token);
    return created;
  }

  /** The invite as `admin invite list --json` shows it. */
  async function listed(inviteId: string): Promise<CreatedInvite["invite"] & { revokedAtMs: string }> {
    const r = await admin("invite", "list", "--json");
    assert.equal(r.code, 0, r.stderr);
    const { invites } = JSON.parse(r.stdout.trim()) as {
      invites: Array<CreatedInvite["invite"] & { revokedAtMs: string }>;
    };
    const found = invites.find((i) => i.inviteId === inviteId);
    assert.ok(found, `invite ${inviteId} is listed`);
    return found;
  }

  const register = (username: string, inviteToken?: string) =>
    accounts.register({ username, deviceName: "test", ...(inviteToken !== undefined && { inviteToken }) });

  before(() => {
    accounts = accountsOf(fx, sessions);
    admin = (...args) =>
      switchboard(["admin", ...args, "--url", fx.server.url, "--data-dir", fx.server.dataDir]);
  });
  after(() => {
    for (const s of sessions) s.abort();
    // No token ever reaches the server's log.
    const log = fx.server.logs.join("\n");
    assert.ok(tokens.length > 0, "the suite made tokens");
    for (const token of tokens) {
      assert.ok(!log.includes(token), "a token was logged");
      // The secret is the token's last 43 characters. It is base64url, so it may hold "_" itself:
      // splitting the token on "_" could give a fragment short enough to occur in any log.
      const secret = token.slice(-43);
      assert.match(secret, /^[A-Za-z0-9_-]{43}$/);
      assert.ok(!log.includes(secret), "a token's secret was logged");
    }
  });

  it("refuses a registration without an invite with PERMISSION_DENIED, counted and logged", async () => {
    const name = uniqueName("noinv");
    await rejectsWith(register(name), Code.PermissionDenied, /^registration needs an invite$/);
    await rejectsWith(register(name, ""), Code.PermissionDenied, /^registration needs an invite$/);
    await eventually(
      () => fx.server.logs.some((l) => l.includes('"refusal":"invite_required"')),
      () => "the refusal is logged with its reason",
      10_000,
    );
    // Nobody was created: the name is free for an invited registration.
    const { token } = await createInvite();
    const r = await register(name, token);
    assert.equal(r.user?.username, name);
  });

  it("accepts an invite for exactly its uses, and a taken username does not spend one", async () => {
    const created = await createInvite("--uses", "2", "--note", "for the bridge club");
    assert.equal(created.registrationMode, "invite");
    assert.equal(created.invite.maxUses, 2);
    assert.match(created.token, new RegExp(`^${created.invite.inviteId}_[A-Za-z0-9_-]{43}$`));
    const first = uniqueName("inv_a");
    assert.equal((await register(first, created.token)).user?.username, first);
    assert.equal((await listed(created.invite.inviteId)).usesLeft, 1);

    // The name is taken: refused as always, and the use is kept.
    await rejectsWith(register(first, created.token), Code.AlreadyExists, /is taken/);
    assert.equal((await listed(created.invite.inviteId)).usesLeft, 1);

    const second = uniqueName("inv_b");
    assert.equal((await register(second, created.token)).user?.username, second);
    const usedUp = await listed(created.invite.inviteId);
    assert.equal(usedUp.usesLeft, 0);
    assert.equal(usedUp.note, "for the bridge club");

    const third = uniqueName("inv_c");
    await rejectsWith(register(third, created.token), Code.PermissionDenied, /^invalid or used invite$/);
    // The server's log is written asynchronously: wait for the line rather than race it.
    await eventually(
      () => fx.server.logs.some((l) => l.includes('"refusal":"invite_invalid"') && l.includes("used_up")),
      () => "the used-up refusal is logged with its case",
      10_000,
    );

    const text = await admin("invite", "list");
    assert.equal(text.code, 0, text.stderr);
    assert.match(
      text.stdout,
      new RegExp(`${created.invite.inviteId}\\s+used up\\s+0/2 .*for the bridge club`),
    );
  });

  it("refuses a revoked invite, and revoking again says so", async () => {
    const created = await createInvite("--uses", "5");
    const revoked = await admin("invite", "revoke", created.invite.inviteId);
    assert.equal(revoked.code, 0, revoked.stderr);
    assert.match(
      revoked.stdout,
      new RegExp(`revoked invite ${created.invite.inviteId} at .* \\(5 unused uses\\)`),
    );
    await rejectsWith(
      register(uniqueName("inv_rev"), created.token),
      Code.PermissionDenied,
      /^invalid or used invite$/,
    );
    const shown = await listed(created.invite.inviteId);
    assert.notEqual(shown.revokedAtMs, "0");
    assert.equal(shown.usesLeft, 5, "a refused registration takes nothing");
    const again = await admin("invite", "revoke", created.invite.inviteId);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /was already revoked/);
    const unknown = await admin("invite", "revoke", "iv_0123456789abcdefghjkmnpqrs");
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /no invite iv_0123456789abcdefghjkmnpqrs \[NotFound\]/);
  });

  it("refuses an expired invite", async () => {
    const created = await createInvite("--ttl", "1s");
    const expiresAtMs = Number(created.invite.expiresAtMs);
    // Waits for the invite's own expiry time to pass; nothing here measures speed.
    while (Date.now() <= expiresAtMs + 50) await new Promise((r) => setTimeout(r, 100));
    await rejectsWith(
      register(uniqueName("inv_exp"), created.token),
      Code.PermissionDenied,
      /^invalid or used invite$/,
    );
    assert.equal((await listed(created.invite.inviteId)).usesLeft, 1);
    const text = await admin("invite", "list");
    assert.match(text.stdout, new RegExp(`${created.invite.inviteId}\\s+expired\\s+1/1`));
  });

  it("answers unknown, forged and malformed tokens exactly as used ones", async () => {
    const real = await createInvite();
    const [, secret] = /^iv_[0-9a-z]{26}_(.+)$/.exec(real.token) ?? [];
    const forged = [
      `iv_0123456789abcdefghjkmnpqrs_${secret}`, // an unknown id
      `${real.invite.inviteId}_${"A".repeat(43)}`, // the right id, a wrong secret
      "not a token",
      "x".repeat(5000),
    ];
    for (const token of forged) {
      await rejectsWith(
        register(uniqueName("inv_f"), token),
        Code.PermissionDenied,
        /^invalid or used invite$/,
      );
    }
    assert.equal((await listed(real.invite.inviteId)).usesLeft, 1, "the real invite is untouched");
  });

  it("rejects bad invite parameters with INVALID_ARGUMENT", async () => {
    const zero = await admin("invite", "create", "--uses", "0");
    assert.equal(zero.code, 1);
    assert.match(zero.stderr, /--uses 0: expected a whole number, at least 1/);
    for (const flags of [
      ["--uses", "10001"],
      ["--ttl", "366d"],
      ["--note", "x".repeat(201)],
    ]) {
      const r = await admin("invite", "create", ...flags);
      assert.equal(r.code, 1, `${flags.join(" ")} was accepted`);
      assert.match(r.stderr, /\[InvalidArgument\]/);
    }
    const badTtl = await admin("invite", "create", "--ttl", "tomorrow");
    assert.equal(badTtl.code, 1);
    assert.match(badTtl.stderr, /--ttl tomorrow: expected a number and a unit/);
  });

  it("the client CLI registers with --invite, and without one says how to get in", async () => {
    const base = await mkdtemp(join(tmpdir(), "switchboard-invite-cli-"));
    try {
      const created = await admin("invite", "create", "--note", "cli");
      assert.equal(created.code, 0, created.stderr);
      const token = created.stdout.trim();
      tokens.push(token);
      assert.match(created.stderr, /it is not shown again/);
      const name = uniqueName("inv_cli");
      const common = ["--server", fx.server.url, "--no-encryption"];
      const refused = await switchboard(["register", name, "--profile", join(base, "a"), ...common]);
      assert.equal(refused.code, 1);
      assert.match(refused.stderr, /registration needs an invite \[PermissionDenied\].*--invite <token>/);
      const ok = await switchboard([
        "register",
        name,
        "--profile",
        join(base, "b"),
        "--invite",
        token,
        ...common,
      ]);
      assert.equal(ok.code, 0, ok.stderr);
      assert.match(ok.stdout, new RegExp(`registered @${name} `));
    } finally {
      await rm(base, { recursive: true, force: true });
    }
  });
});

describe("open registration (the default) against a server process", () => {
  const fx = serverFixture();
  const sessions: Http2SessionManager[] = [];
  after(() => {
    for (const s of sessions) s.abort();
  });

  it("ignores an invite token, and the admin CLI says invites are not checked", async () => {
    const accounts = accountsOf(fx, sessions);
    const plain = uniqueName("open_a");
    assert.equal((await accounts.register({ username: plain, deviceName: "t" })).user?.username, plain);
    const withJunk = uniqueName("open_b");
    const r = await accounts.register({ username: withJunk, deviceName: "t", inviteToken: "not a token" });
    assert.equal(r.user?.username, withJunk);

    const created = await switchboard([
      "admin",
      "invite",
      "create",
      "--url",
      fx.server.url,
      "--data-dir",
      fx.server.dataDir,
    ]);
    assert.equal(created.code, 0, created.stderr);
    assert.match(
      created.stderr,
      /registration is open; invites are checked only with SWITCHBOARD_REGISTRATION=invite/,
    );
  });
});
