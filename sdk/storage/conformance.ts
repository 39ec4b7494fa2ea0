import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import type { ProfileStorage } from "./port.js";

// What every ProfileStorage engine must do, as node:test cases: the SDK's engines run it
// (storage.test.ts), and an app that writes its own engine can run it too
// (`import { storageConformance } from "@switchboard/sdk/storage-conformance"`).

/** How the suite makes and reopens stores of the engine under test. */
export interface ConformanceTarget {
  /** A new, empty store. */
  create(): Promise<ProfileStorage>;
  /**
   * The same data opened again as a new engine instance (a restart), or undefined for engines
   * whose data lives only in the instance (memory).
   */
  reopen?(storage: ProfileStorage): Promise<ProfileStorage>;
  /** Called once after the suite, to remove what it created. */
  cleanup?(): Promise<void>;
}

const bytes = (text: string) => new TextEncoder().encode(text);
const text = (value: Uint8Array | undefined) =>
  value === undefined ? undefined : new TextDecoder().decode(value);
const sorted = (entries: Array<[string, Uint8Array]>) =>
  entries.map(([k, v]): [string, string | undefined] => [k, text(v)]).sort(([a], [b]) => (a < b ? -1 : 1));

/** Registers the conformance cases of one engine under `describe(name)`. */
export function storageConformance(name: string, target: ConformanceTarget): void {
  describe(`storage conformance: ${name}`, () => {
    after(async () => {
      await target.cleanup?.();
    });

    it("gets what was put, replaces it, and forgets what was deleted", async () => {
      const s = await target.create();
      assert.equal(await s.get("state.json"), undefined);
      await s.put([["state.json", bytes("one")]]);
      assert.equal(text(await s.get("state.json")), "one");
      await s.put([["state.json", bytes("two")]]);
      assert.equal(text(await s.get("state.json")), "two");
      await s.delete(["state.json", "never-written"]);
      assert.equal(await s.get("state.json"), undefined);
    });

    it("stores bytes as given: empty values, every byte, and no sharing with the caller's buffers", async () => {
      const s = await target.create();
      const all = Uint8Array.from({ length: 256 }, (_, i) => i);
      const buffer = Buffer.from("a Buffer");
      await s.put([
        ["a/empty", new Uint8Array(0)],
        ["a/all", all],
        ["a/buffer", buffer],
      ]);
      all[0] = 99;
      buffer.fill(0);
      assert.equal(text(await s.get("a/buffer")), "a Buffer");
      assert.deepEqual(await s.get("a/empty"), new Uint8Array(0));
      const read = await s.get("a/all");
      assert.deepEqual(
        read,
        Uint8Array.from({ length: 256 }, (_, i) => i),
      );
      read?.fill(7);
      assert.equal((await s.get("a/all"))?.[5], 5);
    });

    it("lists a folder and everything below it, and nothing beside it", async () => {
      const s = await target.create();
      await s.put([
        ["credentials.json", bytes("c")],
        ["signal/local.json", bytes("l")],
        ["signal/sessions/6162", bytes("s1")],
        ["signal/sessions/6364", bytes("s2")],
        ["signal/sessions-old/6566", bytes("x")],
        ["e2ee/plaintexts/72", bytes("p")],
      ]);
      assert.deepEqual(sorted(await s.list("signal/sessions/")), [
        ["signal/sessions/6162", "s1"],
        ["signal/sessions/6364", "s2"],
      ]);
      assert.deepEqual(
        sorted(await s.list("signal/")).map(([k]) => k),
        ["signal/local.json", "signal/sessions-old/6566", "signal/sessions/6162", "signal/sessions/6364"],
      );
      assert.equal((await s.list("")).length, 6);
      assert.deepEqual(await s.list("nothing/here/"), []);
      await s.delete(["signal/sessions/6162"]);
      assert.deepEqual(sorted(await s.list("signal/sessions/")), [["signal/sessions/6364", "s2"]]);
    });

    it("writes a batch, and deletes several keys at once", async () => {
      const s = await target.create();
      const batch: Array<[string, Uint8Array]> = [];
      for (let i = 0; i < 100; i++) batch.push([`signal/prekeys/${(1000 + i).toString(16)}`, bytes(`k${i}`)]);
      await s.put(batch);
      assert.equal((await s.list("signal/prekeys/")).length, 100);
      await s.delete(batch.slice(0, 60).map(([k]) => k));
      const left = await s.list("signal/prekeys/");
      assert.equal(left.length, 40);
      assert.deepEqual(sorted(left)[0], [`signal/prekeys/${(1060).toString(16)}`, "k60"]);
    });

    it("refuses keys outside the key rules, changing nothing", async () => {
      const s = await target.create();
      for (const bad of ["", "/abs", "a//b", "a/", "../up", "a/../b", ".hidden", "a/.b", "sp ace", "é"]) {
        await assert.rejects(
          s.put([
            ["ok", bytes("x")],
            [bad, bytes("x")],
          ]),
          /not a storage/,
          `put ${bad}`,
        );
        await assert.rejects(s.get(bad), /not a storage/, `get ${bad}`);
      }
      await assert.rejects(s.list("signal"), /not a storage/, "a prefix that is not a folder");
      assert.equal(await s.get("ok"), undefined, "a refused batch writes nothing");
    });

    it("lets one holder take the lock at a time", async () => {
      const s = await target.create();
      const lock = await s.lock();
      await assert.rejects(s.lock(), /in use/);
      await lock.release();
      await lock.release();
      const again = await s.lock();
      await again.release();
    });

    it("keeps what resolved across a reopen", { skip: target.reopen === undefined }, async () => {
      const s = await target.create();
      await s.put([
        ["credentials.json", bytes("c")],
        ["signal/sessions/6162", bytes("s")],
      ]);
      await s.delete(["credentials.json"]);
      const again = await (target.reopen as NonNullable<ConformanceTarget["reopen"]>)(s);
      assert.equal(await again.get("credentials.json"), undefined);
      assert.deepEqual(sorted(await again.list("")), [["signal/sessions/6162", "s"]]);
    });
  });
}
