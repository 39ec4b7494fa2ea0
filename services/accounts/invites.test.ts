import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { InProcessBus } from "../bus/in-process.js";
import { Tokens } from "../common/auth.js";
import { toConnectError } from "../common/boundary.js";
import { DomainError } from "../common/errors.js";
import { createLogger } from "../common/log.js";
import { Refusals } from "../common/refusals.js";
import { type LmdbStoreEngine, openLmdbStore } from "../store/lmdb/engine.js";
import { Accounts } from "./accounts.js";
import { INVALID_INVITE, inviteIdOf } from "./invites.js";

const log = createLogger({ level: "silent" });

/** What a client gets for err: a manager's domain error as the boundary sends it. */
function wire(err: unknown): ConnectError {
  return err instanceof DomainError ? toConnectError(err) : ConnectError.from(err);
}

function deniedWith(message: string): (err: unknown) => boolean {
  return (thrown) => {
    const err = wire(thrown);
    assert.ok(err instanceof ConnectError, String(err));
    assert.equal(err.code, Code.PermissionDenied);
    assert.equal(err.rawMessage, message);
    return true;
  };
}

describe("registration by invite (accounts manager on LMDB)", () => {
  let dir: string;
  let engine: LmdbStoreEngine;
  let accounts: Accounts;
  let refusals: Refusals;
  let clock = 1_800_000_000_000;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "invites-test-"));
    engine = await openLmdbStore({ path: dir });
    refusals = new Refusals(log);
    accounts = new Accounts(
      engine.accounts,
      new Tokens(new Uint8Array(32).fill(1), 3600),
      new InProcessBus(log),
      log,
      {
        maxDevicesPerUser: 8,
        linkCodeTtlSeconds: 300,
        abuse: { registration: "invite" },
        refusals,
        now: () => clock,
      },
    );
  });
  after(async () => {
    await engine.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("of concurrent registrations with a 2-use invite, exactly 2 create users", async () => {
    const { invite, token } = await accounts.invites.create({ uses: 2 });
    const results = await Promise.allSettled(
      Array.from({ length: 6 }, (_, i) => accounts.register(`race_${i}`, "", "phone", "192.0.2.1", token)),
    );
    assert.equal(results.filter((r) => r.status === "fulfilled").length, 2);
    for (const r of results) if (r.status === "rejected") deniedWith(INVALID_INVITE)(r.reason);
    assert.equal((await engine.accounts.getInvite(invite.id))?.usesLeft, 0);
    assert.equal(refusals.counts.get("invite_invalid"), 4);
  });

  it("concurrent registrations of one name with one invite spend one use", async () => {
    const { invite, token } = await accounts.invites.create({ uses: 5 });
    const results = await Promise.allSettled(
      Array.from({ length: 4 }, () => accounts.register("same_name", "", "phone", "192.0.2.1", token)),
    );
    assert.equal(results.filter((r) => r.status === "fulfilled").length, 1);
    for (const r of results) {
      if (r.status === "rejected") assert.equal(wire(r.reason).code, Code.AlreadyExists);
    }
    assert.equal((await engine.accounts.getInvite(invite.id))?.usesLeft, 4);
  });

  it("a look-alike username gives its use back too", async () => {
    const { invite, token } = await accounts.invites.create({ uses: 2 });
    await accounts.register("bill", "", "phone", undefined, token);
    await assert.rejects(accounts.register("bi11", "", "phone", undefined, token), /looks like/);
    assert.equal((await engine.accounts.getInvite(invite.id))?.usesLeft, 1);
  });

  it("an invite works until its expiry and not at it", async () => {
    const { invite, token } = await accounts.invites.create({ ttlMs: 60_000 });
    clock = invite.expiresAtMs;
    await assert.rejects(
      accounts.register("late_one", "", "phone", undefined, token),
      deniedWith(INVALID_INVITE),
    );
    clock = invite.expiresAtMs - 1;
    await accounts.register("late_one", "", "phone", undefined, token);
  });

  it("a token names its invite and nothing else parses as one", async () => {
    const { invite, token } = await accounts.invites.create({});
    assert.equal(inviteIdOf(token), invite.id);
    assert.equal(inviteIdOf(`${token}x`), undefined);
    assert.equal(inviteIdOf(invite.id), undefined);
    assert.equal(inviteIdOf(""), undefined);
    // Only the hash is stored.
    const stored = await engine.accounts.getInvite(invite.id);
    assert.ok(stored !== undefined && !JSON.stringify(stored).includes(token.slice(invite.id.length + 1)));
  });

  it("refuses bad invite parameters", async () => {
    for (const params of [
      { uses: 0 },
      { uses: 10_001 },
      { ttlMs: 999 },
      { note: "a\u001b[2Jb" },
      { note: "é".repeat(201) },
    ]) {
      await assert.rejects(accounts.invites.create(params), (err: unknown) => {
        assert.equal(wire(err).code, Code.InvalidArgument, JSON.stringify(params));
        return true;
      });
    }
    await accounts.invites.create({ note: "é".repeat(200) });
  });
});
