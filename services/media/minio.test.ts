import assert from "node:assert/strict";
import { createHash, createHmac, randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { Client } from "minio";
import { type MinioServer, skipWithoutMinio, startMinio } from "../../test/helpers/minio.js";
import { createLogger } from "../common/log.js";
import { openMedia } from "../server/engines.js";
import { putRecordStep, runMediaConformance, type TestClock } from "./conformance.js";
import { DEFAULT_MEDIA_LIMITS } from "./media.js";
import { MinioObjectStore, parseMinioEndpoint } from "./minio.js";
import { newObjectId, type ObjectRecord } from "./types.js";

// Against a real MinIO server (test/helpers/minio.ts starts the pinned build on free ports), so
// the conformance suite's uploads and downloads, the presigned URLs' signatures and expiries and
// the stored sizes are all checked by the S3 server a deployment runs.
const skip = skipWithoutMinio();
let minio: MinioServer;
let bucketNo = 0;

before(async () => {
  if (skip === false) minio = await startMinio();
});

after(async () => {
  await minio?.close();
});

async function openMinio(region = "us-east-1", bucket = `media-${process.pid}-${bucketNo++}`) {
  return MinioObjectStore.open({
    endpoint: { host: "127.0.0.1", port: minio.port, useSSL: false },
    accessKey: minio.accessKey,
    secretKey: minio.secretKey,
    bucket,
    region,
    createBucket: true,
  });
}

runMediaConformance(
  "MinIO engine on a real MinIO server",
  async (_clock: TestClock) => {
    const bucket = `media-${process.pid}-${bucketNo++}`;
    const store = await openMinio("us-east-1", bucket);
    // Straight to the bucket, past the store, as a delete cut short between its steps leaves it.
    const direct = new Client({
      endPoint: "127.0.0.1",
      port: minio.port,
      useSSL: false,
      accessKey: minio.accessKey,
      secretKey: minio.secretKey,
    });
    return {
      store,
      refusesWrongLengthOnUpload: false,
      // MinIO checks a URL's date and expiry against its own clock, the real one.
      urlClock: Date.now,
      removeBytes: (objectId: string) => direct.removeObject(bucket, `objects/${objectId}`),
      async writeStep(step: "marker" | "record", record: ObjectRecord) {
        const { key, body } = putRecordStep(step, record);
        await direct.putObject(bucket, key, Buffer.from(body));
      },
      close: async () => {},
    };
  },
  { skip },
);

/** Recomputes a SigV4 query-string signature (host the only signed header, unsigned payload). */
function sigV4(url: URL, method: string, secretKey: string): string {
  const params = [...url.searchParams.entries()]
    .filter(([k]) => k !== "X-Amz-Signature")
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`)
    .join("&");
  const canonical = [method, url.pathname, params, `host:${url.host}\n`, "host", "UNSIGNED-PAYLOAD"].join(
    "\n",
  );
  const date = url.searchParams.get("X-Amz-Date")!;
  const scope = url.searchParams.get("X-Amz-Credential")!.split("/").slice(1).join("/");
  const toSign = ["AWS4-HMAC-SHA256", date, scope, createHash("sha256").update(canonical).digest("hex")].join(
    "\n",
  );
  const [day, region, service] = scope.split("/");
  let key: Buffer = createHmac("sha256", `AWS4${secretKey}`).update(day!).digest();
  key = createHmac("sha256", key).update(region!).digest();
  key = createHmac("sha256", key).update(service!).digest();
  key = createHmac("sha256", key).update("aws4_request").digest();
  return createHmac("sha256", key).update(toSign).digest("hex");
}

/** An unclaimed record, so the store has a binding for the object as the service would. */
async function reserve(store: MinioObjectStore): Promise<string> {
  const record: ObjectRecord = {
    objectId: newObjectId(),
    conversationId: "g_cccccccccccccccccccccccccc",
    uploaderUserId: "u_aaaaaaaaaaaaaaaaaaaaaaaaaa",
    lengthBytes: 10,
    createdAtMs: Date.now(),
    claimedAtMs: 0,
  };
  await store.putRecord(record);
  return record.objectId;
}

/** MinIO's answer to a request: its status and S3 error code (empty when there is none). */
async function s3Answer(url: string, init?: RequestInit): Promise<{ status: number; code: string }> {
  const res = await fetch(url, init);
  const body = await res.text();
  return { status: res.status, code: /<Code>([^<]+)<\/Code>/.exec(body)?.[1] ?? "" };
}

const put = (body: Buffer): RequestInit => ({ method: "PUT", body });

describe("MinIO engine: presigned URL signatures", { skip }, () => {
  test("a PUT URL is SigV4 with the expected scope, expiry and signed headers, and verifies", async () => {
    const store = await openMinio("eu-west-1");
    const now = Date.UTC(2030, 0, 2, 3, 4, 5, 678);
    const { url, expiresAtMs } = await store.presignPut("m_0123456789abcdefghjkmnpqrs", 10, 900, now);
    const u = new URL(url);
    assert.equal(u.host, `127.0.0.1:${minio.port}`);
    assert.match(u.pathname, /\/objects\/m_0123456789abcdefghjkmnpqrs$/);
    const q = u.searchParams;
    assert.equal(q.get("X-Amz-Algorithm"), "AWS4-HMAC-SHA256");
    assert.equal(q.get("X-Amz-Credential"), `${minio.accessKey}/20300102/eu-west-1/s3/aws4_request`);
    assert.equal(q.get("X-Amz-Date"), "20300102T030405Z");
    assert.equal(q.get("X-Amz-Expires"), "900");
    assert.equal(q.get("X-Amz-SignedHeaders"), "host");
    assert.equal(expiresAtMs, Date.UTC(2030, 0, 2, 3, 4, 5) + 900_000);
    const signature = q.get("X-Amz-Signature")!;
    assert.match(signature, /^[0-9a-f]{64}$/);
    assert.equal(sigV4(u, "PUT", minio.secretKey), signature);
  });

  test("MinIO accepts an untampered PUT and GET URL, and the object is what was sent", async () => {
    const store = await openMinio();
    const id = await reserve(store);
    const bytes = randomBytes(10);
    const { url: putUrl } = await store.presignPut(id, 10, 60, Date.now());
    assert.deepEqual(await s3Answer(putUrl, put(bytes)), { status: 200, code: "" });
    assert.deepEqual(await store.stat(id), { lengthBytes: 10 });
    const { url: getUrl } = await store.presignGet(id, 10, 60, Date.now());
    const got = await fetch(getUrl);
    assert.equal(got.status, 200);
    assert.deepEqual(Buffer.from(await got.arrayBuffer()), bytes);
  });

  test("MinIO refuses an expired URL, and one not valid yet", async () => {
    const store = await openMinio();
    const id = await reserve(store);
    // Signed two minutes ago for one minute.
    const { url: expired } = await store.presignPut(id, 10, 60, Date.now() - 120_000);
    assert.deepEqual(await s3Answer(expired, put(randomBytes(10))), { status: 403, code: "AccessDenied" });
    const { url: expiredGet } = await store.presignGet(id, 10, 60, Date.now() - 120_000);
    assert.equal((await s3Answer(expiredGet)).status, 403);
    // A service clock an hour ahead signs URLs MinIO refuses until their date comes.
    const { url: early } = await store.presignPut(id, 10, 7200, Date.now() + 3_600_000);
    assert.equal((await s3Answer(early, put(randomBytes(10)))).status, 403);
    assert.equal(await store.stat(id), undefined, "nothing was stored");
  });

  test("MinIO refuses a tampered signature, expiry, object, method or key", async () => {
    const store = await openMinio();
    const id = await reserve(store);
    const { url: putUrl } = await store.presignPut(id, 10, 60, Date.now());
    const url = new URL(putUrl);
    const tamper = (key: string, value: string): string => {
      const u = new URL(url);
      u.searchParams.set(key, value);
      return u.toString();
    };
    const sig = url.searchParams.get("X-Amz-Signature")!;
    const flipped = (sig[0] === "a" ? "b" : "a") + sig.slice(1);
    // A URL signed with another secret, as someone holding only the access key would make.
    const forged = new URL(url);
    forged.searchParams.set("X-Amz-Signature", sigV4(forged, "PUT", "not the secret key"));
    const mismatch = { status: 403, code: "SignatureDoesNotMatch" };
    for (const bad of [
      tamper("X-Amz-Signature", flipped),
      tamper("X-Amz-Expires", "604800"),
      tamper(
        "X-Amz-Date",
        url.searchParams.get("X-Amz-Date")!.replace(/\dZ$/, (d) => (d[0] === "0" ? "1Z" : "0Z")),
      ),
      putUrl.replace(id, newObjectId()),
      forged.toString(),
    ]) {
      assert.deepEqual(await s3Answer(bad, put(randomBytes(10))), mismatch, bad);
    }
    assert.equal((await s3Answer(tamper("X-Amz-Signature", "short"), put(randomBytes(10)))).status, 403);
    // A PUT URL does not download, and a GET URL does not upload.
    assert.deepEqual(await s3Answer(putUrl), mismatch);
    const { url: getUrl } = await store.presignGet(id, 10, 60, Date.now());
    assert.deepEqual(await s3Answer(getUrl, put(randomBytes(10))), mismatch);
    assert.equal(await store.stat(id), undefined, "nothing was stored");
    // The untampered URL still works.
    assert.equal((await s3Answer(putUrl, put(randomBytes(10)))).status, 200);
  });

  test("a presigned PUT signs no length: MinIO stores any size, which the service checks (minio.ts)", async () => {
    const store = await openMinio();
    const id = await reserve(store);
    const { url } = await store.presignPut(id, 10, 60, Date.now());
    assert.equal((await s3Answer(url, put(randomBytes(11)))).status, 200);
    assert.deepEqual(await store.stat(id), { lengthBytes: 11 });
  });

  test("a GET URL is signed for the public endpoint when one is set, for GET only", async () => {
    const store = await MinioObjectStore.open({
      endpoint: { host: "127.0.0.1", port: minio.port, useSSL: false },
      publicEndpoint: parseMinioEndpoint("https://media.example.com"),
      accessKey: minio.accessKey,
      secretKey: minio.secretKey,
      bucket: `media-${process.pid}-${bucketNo++}`,
      createBucket: true,
    });
    const { url } = await store.presignGet("m_0123456789abcdefghjkmnpqrs", 10, 300, Date.now());
    const u = new URL(url);
    assert.equal(u.protocol, "https:");
    assert.equal(u.host, "media.example.com");
    assert.equal(u.searchParams.get("X-Amz-Expires"), "300");
    assert.equal(sigV4(u, "GET", minio.secretKey), u.searchParams.get("X-Amz-Signature"));
    assert.notEqual(sigV4(u, "PUT", minio.secretKey), u.searchParams.get("X-Amz-Signature"));
    // Signed for another host, it is refused by the MinIO behind it.
    const direct = new URL(u);
    direct.protocol = "http:";
    direct.host = `127.0.0.1:${minio.port}`;
    assert.equal((await s3Answer(direct.toString())).code, "SignatureDoesNotMatch");
  });

  test("a missing bucket is an error unless it may be created", async () => {
    await assert.rejects(
      MinioObjectStore.open({
        endpoint: { host: "127.0.0.1", port: minio.port, useSSL: false },
        accessKey: minio.accessKey,
        secretKey: minio.secretKey,
        bucket: "does-not-exist",
      }),
      /bucket does-not-exist does not exist/,
    );
  });

  test("wrong credentials are refused at open", async () => {
    await assert.rejects(
      MinioObjectStore.open({
        endpoint: { host: "127.0.0.1", port: minio.port, useSSL: false },
        accessKey: minio.accessKey,
        secretKey: "not the secret key",
        bucket: `media-${process.pid}-${bucketNo++}`,
        createBucket: true,
      }),
      // A HEAD answer has no body; the driver names the 403 so.
      /Valid and authorized credentials required/,
    );
  });
});

test("openMedia chooses the MinIO engine when configured, with no server of its own", { skip }, async () => {
  const engine = await openMedia(
    {
      host: "127.0.0.1",
      media: {
        limits: DEFAULT_MEDIA_LIMITS,
        sweepIntervalMs: 60_000,
        engine: {
          kind: "minio",
          options: {
            endpoint: { host: "127.0.0.1", port: minio.port, useSSL: false },
            accessKey: minio.accessKey,
            secretKey: minio.secretKey,
            bucket: `media-${process.pid}-${bucketNo++}`,
            createBucket: true,
          },
        },
      },
    },
    new Uint8Array(32),
    createLogger({ level: "silent" }),
  );
  assert.equal(engine.store.engine, "minio");
  assert.equal(engine.objectsUrl, undefined);
  await engine.stop();
  await engine.store.close();
});
