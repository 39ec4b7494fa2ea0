import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { writeFileAtomic } from "./durable-file.js";
import { Profile } from "./profile.js";
import type { DeviceCredentials, OutboxItem } from "./types.js";

const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "sb-profile-"));
  dirs.push(dir);
  return dir;
}
after(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

const credentials: DeviceCredentials = {
  serverUrl: "http://127.0.0.1:7420",
  userId: "u_alice",
  username: "alice",
  deviceId: "dv_laptop",
  deviceSecret: "c2VjcmV0",
};

function item(clientMsgId: string, createdAtMs: number): OutboxItem {
  return {
    clientMsgId,
    conversationId: "d_x",
    outgoing: Buffer.from(clientMsgId).toString("base64"),
    createdAtMs,
  };
}

describe("writeFileAtomic", () => {
  it("replaces the content and leaves no temporary file", async () => {
    const dir = await tempDir();
    const path = join(dir, "f.json");
    await writeFileAtomic(path, "one");
    await writeFileAtomic(path, "two");
    assert.equal(await readFile(path, "utf8"), "two");
    assert.deepEqual(await readdir(dir), ["f.json"]);
  });

  it("never shows a reader a partial file while it is rewritten", async () => {
    const dir = await tempDir();
    const path = join(dir, "state.json");
    const big = "y".repeat(512 * 1024);
    await writeFileAtomic(path, JSON.stringify({ i: -1, big }));
    let writing = true;
    const writer = (async () => {
      for (let i = 0; i < 30; i++) await writeFileAtomic(path, JSON.stringify({ i, big }));
      writing = false;
    })();
    let reads = 0;
    while (writing) {
      const parsed = JSON.parse(await readFile(path, "utf8")) as { big: string };
      assert.equal(parsed.big.length, big.length);
      reads += 1;
    }
    await writer;
    assert.ok(reads > 5, `only ${reads} reads overlapped the writes`);
  });

  it("leaves a complete old or new file when the writer is killed mid-stream", async () => {
    const dir = await tempDir();
    const path = join(dir, "state.json");
    // A child rewrites a large file as fast as it can; we kill it at an arbitrary moment.
    const script = `
      import { writeFileAtomic } from ${JSON.stringify(new URL("./durable-file.ts", import.meta.url).href)};
      const big = "x".repeat(256 * 1024);
      for (let i = 0; ; i++) {
        await writeFileAtomic(${JSON.stringify(path)}, JSON.stringify({ i, big }));
        if (i === 3) process.stdout.write("go\\n");
      }
    `;
    const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    await new Promise<void>((resolve, reject) => {
      child.stdout.once("data", () => resolve());
      child.once("exit", (code) => reject(new Error(`writer exited early with ${code}`)));
    });
    await new Promise((resolve) => setTimeout(resolve, 30 + Math.random() * 50));
    child.kill("SIGKILL");
    await new Promise((resolve) => child.once("exit", resolve));
    const parsed = JSON.parse(await readFile(path, "utf8")) as { i: number; big: string };
    assert.ok(parsed.i >= 3);
    assert.equal(parsed.big.length, 256 * 1024);
  });
});

describe("Profile", () => {
  it("creates, then reopens with the same credentials", async () => {
    const dir = join(await tempDir(), "nested", "profile");
    await Profile.create(dir, credentials);
    const reopened = await Profile.open(dir);
    assert.deepEqual(reopened.credentials, credentials);
    assert.deepEqual(reopened.cursors(), []);
    assert.deepEqual(reopened.outbox(), []);
  });

  it("refuses to overwrite an existing profile, and explains a missing one", async () => {
    const dir = await tempDir();
    await Profile.create(dir, credentials);
    await assert.rejects(Profile.create(dir, { ...credentials, userId: "u_other" }), /already exists/);
    assert.equal((await Profile.open(dir)).credentials.userId, "u_alice");
    await assert.rejects(Profile.open(join(dir, "nope")), /no profile/);
  });

  it("persists cursors on flush, monotonic, as exact bigints", async () => {
    const dir = await tempDir();
    const p = await Profile.create(dir, credentials);
    p.setDelivered("d_x", 5n);
    p.setDelivered("d_x", 3n);
    p.setRead("d_x", 2n);
    p.setDelivered("g_big", 9_007_199_254_740_993n);
    await p.flushCursors();
    p.setDelivered("d_x", 6n); // not flushed: the device has not acked it either
    const reopened = await Profile.open(dir);
    assert.deepEqual(reopened.cursor("d_x"), { delivered: 5n, read: 2n });
    assert.deepEqual(reopened.cursor("g_big"), { delivered: 9_007_199_254_740_993n, read: 0n });
  });

  it("keeps the stream port a connection learned across reopen, and forgets it", async () => {
    const dir = await tempDir();
    const p = await Profile.create(dir, credentials);
    assert.equal(p.streamUrl, undefined);
    p.setDelivered("d_x", 3n);
    await p.flushCursors();
    await p.rememberStreamUrl("http://127.0.0.1:7431");
    const reopened = await Profile.open(dir);
    assert.equal(reopened.streamUrl, "http://127.0.0.1:7431");
    assert.deepEqual(reopened.cursor("d_x"), { delivered: 3n, read: 0n });
    await reopened.rememberStreamUrl(undefined);
    assert.equal((await Profile.open(dir)).streamUrl, undefined);
    // A state file written before the field existed opens without one.
    await writeFile(
      join(dir, "state.json"),
      '{"version":1,"cursors":{"d_x":{"delivered":"4","read":"1"}}}\n',
    );
    const old = await Profile.open(dir);
    assert.equal(old.streamUrl, undefined);
    assert.deepEqual(old.cursor("d_x"), { delivered: 4n, read: 1n });
  });

  it("does not report cursors durable while another caller's write still runs", async () => {
    const dir = await tempDir();
    const p = await Profile.create(dir, credentials);
    for (let i = 1; i <= 50; i++) {
      p.setDelivered("d_x", BigInt(i));
      const first = p.flushCursors();
      const second = p.flushCursors(); // nothing dirty any more, yet must wait for the first
      await second;
      const onDisk = JSON.parse(await readFile(join(dir, "state.json"), "utf8")) as {
        cursors: Record<string, { delivered: string }>;
      };
      assert.equal(onDisk.cursors.d_x?.delivered, String(i));
      await first;
    }
  });

  it("keeps the outbox across reopen, oldest first, and forgets answered sends", async () => {
    const dir = await tempDir();
    const p = await Profile.create(dir, credentials);
    await p.addToOutbox(item("b", 2));
    await p.addToOutbox(item("a", 1));
    await p.addToOutbox(item("c", 3));
    await p.removeFromOutbox("b");
    const reopened = await Profile.open(dir);
    assert.deepEqual(
      reopened.outbox().map((i) => i.clientMsgId),
      ["a", "c"],
    );
    assert.deepEqual(reopened.outbox()[0], item("a", 1));
  });

  it("makes every concurrent outbox addition durable before it resolves", async () => {
    const dir = await tempDir();
    const p = await Profile.create(dir, credentials);
    const adds = Array.from({ length: 100 }, (_, i) =>
      p.addToOutbox(item(`m${i}`, i)).then(async () => {
        const onDisk = JSON.parse(await readFile(join(dir, "outbox.json"), "utf8")) as {
          items: OutboxItem[];
        };
        assert.ok(
          onDisk.items.some((x) => x.clientMsgId === `m${i}`),
          `m${i} not on disk when its add resolved`,
        );
      }),
    );
    await Promise.all(adds);
    assert.equal((await Profile.open(dir)).outbox().length, 100);
  });

  it("ignores and removes temporary files left by a crash", async () => {
    const dir = await tempDir();
    const p = await Profile.create(dir, credentials);
    p.setDelivered("d_x", 4n);
    await p.flushCursors();
    await writeFile(join(dir, "state.json.tmp-99999-deadbeef"), '{"version":1,"cursors":{"d_x":{"deliv');
    const reopened = await Profile.open(dir);
    assert.deepEqual(reopened.cursor("d_x"), { delivered: 4n, read: 0n });
    assert.ok(!(await readdir(dir)).some((n) => n.includes(".tmp-")));
  });

  it("lets one holder lock a profile and takes over a dead holder's lock", async () => {
    const dir = await tempDir();
    const a = await Profile.create(dir, credentials);
    const b = await Profile.open(dir);
    await a.lock();
    await assert.rejects(b.lock(), /in use by process/);
    await a.unlock();
    await b.lock();
    await b.unlock();

    const dead = spawn(process.execPath, ["-e", ""]);
    await new Promise((resolve) => dead.once("exit", resolve));
    await writeFile(join(dir, "profile.lock"), `${dead.pid}\n`);
    await a.lock();
    assert.equal((await readFile(join(dir, "profile.lock"), "utf8")).trim(), String(process.pid));
    await a.unlock();
  });

  it("releases a lock that is still being taken when unlocked", async () => {
    // A client closed while its connect() waits for the lock (the CLI's `chat` with its input
    // already ended) must not keep the profile locked for the rest of its process's life.
    const dir = await tempDir();
    const a = await Profile.create(dir, credentials);
    const taking = a.lock();
    await a.unlock();
    await taking;
    const b = await Profile.open(dir);
    await b.lock();
    await b.unlock();
    await assert.rejects(readFile(join(dir, "profile.lock")), { code: "ENOENT" });
  });
});
