import assert from "node:assert/strict";
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { Profile } from "../profile.js";
import { storageConformance } from "./conformance.js";
import { FileStorage } from "./file.js";
import { MemoryStorage } from "./memory.js";
import { JsonDoc, RecordSet, SerialWrite } from "./records.js";

// Both engines the SDK ships pass the same conformance suite; then what only the file engine
// promises (its layout on disk, which existing profiles and the CLI rely on), and the shapes the
// SDK keeps in any engine.

const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "sb-storage-"));
  dirs.push(dir);
  return dir;
}
after(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

storageConformance("files", {
  create: async () => new FileStorage(join(await tempDir(), "profile")),
  reopen: async (s) => new FileStorage((s as FileStorage).dir),
});

storageConformance("memory", { create: async () => new MemoryStorage() });

describe("the file engine", () => {
  it("keeps one file per key, folders 0700 and files 0600, and hides the lock file from list", async () => {
    const dir = join(await tempDir(), "profile");
    const s = new FileStorage(dir);
    await s.put([
      ["credentials.json", new TextEncoder().encode("{}")],
      ["signal/sessions/6162", new Uint8Array([1])],
    ]);
    assert.equal(await readFile(join(dir, "credentials.json"), "utf8"), "{}");
    assert.deepEqual([...(await readFile(join(dir, "signal", "sessions", "6162")))], [1]);
    assert.equal((await stat(join(dir, "signal", "sessions"))).mode & 0o777, 0o700);
    assert.equal((await stat(join(dir, "credentials.json"))).mode & 0o777, 0o600);
    const lock = await s.lock();
    assert.ok((await readdir(dir)).includes("profile.lock"));
    assert.deepEqual((await s.list("")).map(([k]) => k).sort(), ["credentials.json", "signal/sessions/6162"]);
    await lock.release();
    assert.ok(!(await readdir(dir)).includes("profile.lock"));
  });

  it("removes the leftovers of interrupted writes from a folder it reads, and never lists them", async () => {
    const dir = join(await tempDir(), "profile");
    await mkdir(join(dir, "signal", "sessions"), { recursive: true });
    await writeFile(join(dir, "signal", "sessions", "6162"), "ok");
    await writeFile(join(dir, "signal", "sessions", "6162.tmp-99999-deadbeef"), "half");
    const s = new FileStorage(dir);
    assert.deepEqual(
      (await s.list("signal/")).map(([k]) => k),
      ["signal/sessions/6162"],
    );
    assert.deepEqual(await readdir(join(dir, "signal", "sessions")), ["6162"]);
    await assert.rejects(s.put([["a.tmp-1-2", new Uint8Array()]]), /not a storage key/);
  });

  it("takes over the lock of a process that died", async () => {
    const dir = join(await tempDir(), "profile");
    await mkdir(dir, { recursive: true });
    // Pid 2^22 + 1 is above Linux's pid_max limit, so no process has it.
    await writeFile(join(dir, "profile.lock"), `${2 ** 22 + 1}\n`);
    const lock = await new FileStorage(dir).lock();
    assert.equal(await readFile(join(dir, "profile.lock"), "utf8"), `${process.pid}\n`);
    await lock.release();
  });
});

describe("what the SDK keeps in an engine", () => {
  it("SerialWrite: writes asked for before a write starts share it, and it writes the latest value", async () => {
    const s = new MemoryStorage();
    let value = 0;
    let snapshots = 0;
    const writer = new SerialWrite(s, "doc.json", () => {
      snapshots += 1;
      return String(value);
    });
    value = 1;
    const first = writer.write();
    value = 2;
    const second = writer.write();
    value = 3;
    const third = writer.write();
    assert.equal(second, third);
    await Promise.all([first, second, third]);
    assert.equal(new TextDecoder().decode(await s.get("doc.json")), "3");
    assert.ok(snapshots <= 2, `${snapshots} snapshots for three writes`);
    await writer.settled();
  });

  it("RecordSet names records by the hex of any string and reloads them; JsonDoc reloads its value", async () => {
    const s = new MemoryStorage();
    const records = await RecordSet.open(s, "e2ee/plaintexts/");
    await records.put([
      ["r/c_1/7", new Uint8Array([7])],
      ["s/Ünïcode", new Uint8Array([8])],
    ]);
    await records.delete(["r/c_1/7"]);
    assert.deepEqual(
      (await s.list("e2ee/")).map(([k]) => k),
      [`e2ee/plaintexts/${Buffer.from("s/Ünïcode").toString("hex")}`],
    );
    const again = await RecordSet.open(s, "e2ee/plaintexts/");
    assert.deepEqual(again.keys(), ["s/Ünïcode"]);
    const doc = await JsonDoc.open(s, "e2ee/devices.json", () => ({ n: 1 }));
    doc.value.n = 2;
    await doc.save();
    assert.equal((await JsonDoc.open(s, "e2ee/devices.json", () => ({ n: 0 }))).value.n, 2);
  });

  it("a profile in memory: created, refused twice, reopened with its cursors and outbox", async () => {
    const s = new MemoryStorage("memory:alice");
    const credentials = {
      serverUrl: "http://127.0.0.1:1",
      userId: "u_a",
      username: "alice",
      deviceId: "dv_a",
      deviceSecret: "secret",
      encrypted: true,
    };
    const p = await Profile.create(s, credentials);
    await assert.rejects(Profile.create(s, credentials), /already exists in memory:alice/);
    p.setDelivered("c_1", 5n);
    await p.flushCursors();
    await p.addToOutbox({ clientMsgId: "m1", conversationId: "c_1", createdAtMs: 1, outgoing: "" });
    const again = await Profile.open(s);
    assert.equal(again.credentials.encrypted, true);
    assert.equal(again.cursor("c_1")?.delivered, 5n);
    assert.deepEqual(
      again.outbox().map((i) => i.clientMsgId),
      ["m1"],
    );
    await assert.rejects(Profile.open(new MemoryStorage("memory:empty")), /no profile in memory:empty/);
  });
});
