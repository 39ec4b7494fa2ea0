import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, test } from "node:test";
import { createLogger } from "../common/log.js";
import { putRecordStep, runMediaConformance, TestClock } from "./conformance.js";
import { localObjectsHttpHandler } from "./handler.js";
import { LocalObjectStore } from "./local.js";
import { newObjectId, type ObjectRecord } from "./types.js";

const log = createLogger({ level: "silent" });

/** A local engine in a temp directory behind a real HTTP server on a free port. */
async function openLocal(clock: TestClock) {
  const dir = await mkdtemp(join(tmpdir(), "switchboard-media-"));
  let store: LocalObjectStore | undefined;
  const server = http.createServer((req, res) => localObjectsHttpHandler(store!, log)(req, res));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  store = await LocalObjectStore.open({ dir, publicBaseUrl: base, urlKey: randomBytes(32), now: clock.now });
  return {
    store,
    dir,
    base,
    refusesWrongLengthOnUpload: true,
    removeBytes: (objectId: string) => rm(join(dir, "objects", objectId)),
    async writeStep(step: "marker" | "record", record: ObjectRecord) {
      const { key, body } = putRecordStep(step, record);
      await mkdir(dirname(join(dir, key)), { recursive: true });
      await writeFile(join(dir, key), body);
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await rm(dir, { recursive: true, force: true });
    },
  };
}

runMediaConformance("local directory", openLocal);

/** Sends a PUT whose body arrives in chunks with no content-length (chunked transfer encoding). */
function putChunked(url: string, chunks: Buffer[]): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: "PUT" }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => {
        body += d;
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    for (const c of chunks) req.write(c);
    req.end();
  });
}

describe("local engine: signed URLs", () => {
  const clock = new TestClock();
  let local: Awaited<ReturnType<typeof openLocal>>;
  before(async () => {
    local = await openLocal(clock);
  });
  after(async () => {
    await local.close();
  });

  async function reserve(length: number): Promise<{ id: string; putUrl: string }> {
    const record: ObjectRecord = {
      objectId: newObjectId(),
      conversationId: "g_cccccccccccccccccccccccccc",
      uploaderUserId: "u_aaaaaaaaaaaaaaaaaaaaaaaaaa",
      lengthBytes: length,
      createdAtMs: clock.ms,
      claimedAtMs: 0,
    };
    await local.store.putRecord(record);
    const { url } = await local.store.presignPut(record.objectId, length, 60, clock.ms);
    return { id: record.objectId, putUrl: url };
  }

  async function nothingLeft(id: string): Promise<void> {
    assert.equal(await local.store.stat(id), undefined);
    assert.deepEqual(await readdir(join(local.dir, "tmp")), []);
  }

  test("an expired URL is refused", async () => {
    const { id, putUrl } = await reserve(10);
    clock.advance(60_000);
    const res = await fetch(putUrl, { method: "PUT", body: randomBytes(10) });
    assert.equal(res.status, 403);
    assert.match(await res.text(), /expired/);
    await nothingLeft(id);
  });

  test("a tampered signature, length, expiry, id or method is refused", async () => {
    const { id, putUrl } = await reserve(10);
    const url = new URL(putUrl);
    const tamper = (key: string, value: string): string => {
      const u = new URL(url);
      u.searchParams.set(key, value);
      return u.toString();
    };
    const sig = url.searchParams.get("sig")!;
    const flipped = (sig[0] === "A" ? "B" : "A") + sig.slice(1);
    for (const bad of [
      tamper("sig", flipped),
      tamper("sig", "short"),
      tamper("len", "11"),
      tamper("exp", String(Number(url.searchParams.get("exp")) + 3_600_000)),
      putUrl.replace(id, newObjectId()),
    ]) {
      const res = await fetch(bad, { method: "PUT", body: randomBytes(bad.includes("len=11") ? 11 : 10) });
      assert.equal(res.status, 403, bad);
      await res.arrayBuffer();
    }
    // A PUT URL does not download, and a GET URL does not upload.
    assert.equal((await fetch(putUrl)).status, 403);
    const { url: getUrl } = await local.store.presignGet(id, 10, 60, clock.ms);
    assert.equal((await fetch(getUrl, { method: "PUT", body: randomBytes(10) })).status, 403);
    await nothingLeft(id);
    // The untampered URL still works.
    assert.equal((await fetch(putUrl, { method: "PUT", body: randomBytes(10) })).status, 200);
  });

  test("paths outside the objects, and traversal, are not found", async () => {
    for (const path of [
      "/",
      "/media/v1/objects/",
      "/media/v1/objects/..%2f..%2fetc%2fpasswd",
      "/media/v1/objects/../../etc/passwd",
      "/media/v1/objects/m_aaaaaaaaaaaaaaaaaaaaaaaaaa/x",
    ]) {
      const res = await new Promise<number>((resolve, reject) => {
        http
          .get(`${local.base}${path}`, (r) => {
            r.resume();
            resolve(r.statusCode ?? 0);
          })
          .on("error", reject);
      });
      assert.equal(res, 404, path);
    }
  });

  test("the declared length is enforced while a chunked body streams", async () => {
    const long = await reserve(1000);
    const tooLong = await putChunked(long.putUrl, [randomBytes(600), randomBytes(600)]);
    assert.equal(tooLong.status, 413);
    assert.match(tooLong.body, /longer than the 1000 bytes/);
    await nothingLeft(long.id);

    const short = await reserve(1000);
    const tooShort = await putChunked(short.putUrl, [randomBytes(400), randomBytes(599)]);
    assert.equal(tooShort.status, 400);
    assert.match(tooShort.body, /999 bytes; this upload takes exactly 1000/);
    await nothingLeft(short.id);

    const exact = await reserve(1000);
    const ok = await putChunked(exact.putUrl, [randomBytes(400), randomBytes(600)]);
    assert.equal(ok.status, 200);
    assert.deepEqual(await local.store.stat(exact.id), { lengthBytes: 1000 });
  });

  test("an upload cut off mid-body leaves nothing", async () => {
    const { id, putUrl } = await reserve(100_000);
    await new Promise<void>((resolve) => {
      const req = http.request(putUrl, { method: "PUT", headers: { "content-length": "100000" } });
      req.on("error", () => resolve());
      req.write(randomBytes(10_000), () => {
        setTimeout(() => {
          req.destroy();
          resolve();
        }, 50);
      });
    });
    // The server notices the close asynchronously.
    for (let i = 0; i < 50 && (await readdir(join(local.dir, "tmp"))).length > 0; i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    await nothingLeft(id);
  });

  test("a stored object cannot be replaced, and an unknown upload is not accepted", async () => {
    const { id, putUrl } = await reserve(10);
    const first = randomBytes(10);
    assert.equal((await fetch(putUrl, { method: "PUT", body: first })).status, 200);
    const again = await fetch(putUrl, { method: "PUT", body: randomBytes(10) });
    assert.equal(again.status, 409);
    const { url } = await local.store.presignGet(id, 10, 60, clock.ms);
    assert.deepEqual(Buffer.from(await (await fetch(url)).arrayBuffer()), first);

    // Signed, but no record (swept, or never created): nothing is written.
    const ghost = newObjectId();
    const { url: ghostUrl } = await local.store.presignPut(ghost, 10, 60, clock.ms);
    assert.equal((await fetch(ghostUrl, { method: "PUT", body: randomBytes(10) })).status, 404);
    await nothingLeft(ghost);
  });

  test("records survive reopening the directory", async () => {
    const { id } = await reserve(7);
    const again = await LocalObjectStore.open({
      dir: local.dir,
      publicBaseUrl: local.base,
      urlKey: randomBytes(32),
      now: clock.now,
    });
    assert.equal((await again.getRecord(id))?.lengthBytes, 7);
    assert.ok((await again.listUnclaimed(clock.ms + 1, 1000)).some((r) => r.objectId === id));
  });
});
