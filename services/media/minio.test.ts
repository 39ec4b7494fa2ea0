import assert from "node:assert/strict";
import { createHash, createHmac } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import S3rver from "s3rver";
import { createLogger } from "../common/log.js";
import { openMedia } from "../server/engines.js";
import { runMediaConformance, type TestClock } from "./conformance.js";
import { DEFAULT_MEDIA_LIMITS } from "./media.js";
import { MinioObjectStore, parseMinioEndpoint } from "./minio.js";

// s3rver speaks the S3 API but checks no signatures, so the conformance suite proves the
// engine's S3 calls and the service's length checks; the signatures are checked separately
// below by recomputing SigV4 from the URL.
const ACCESS_KEY = "S3RVER";
const SECRET_KEY = "S3RVER";

let s3: S3rver;
let dir: string;
let port: number;
let bucketNo = 0;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "switchboard-s3rver-"));
  s3 = new S3rver({ address: "127.0.0.1", port: 0, silent: true, directory: dir });
  port = (await s3.run()).port;
});

after(async () => {
  await s3.close();
  await rm(dir, { recursive: true, force: true });
});

async function openMinio(region = "us-east-1") {
  return MinioObjectStore.open({
    endpoint: { host: "127.0.0.1", port, useSSL: false },
    accessKey: ACCESS_KEY,
    secretKey: SECRET_KEY,
    bucket: `media-${process.pid}-${bucketNo++}`,
    region,
    createBucket: true,
  });
}

runMediaConformance("MinIO engine on s3rver", async (_clock: TestClock) => {
  const store = await openMinio();
  return { store, refusesWrongLengthOnUpload: false, close: async () => {} };
});

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

describe("MinIO engine: presigned URL signatures", () => {
  test("a PUT URL is SigV4 with the expected scope, expiry and signed headers, and verifies", async () => {
    const store = await openMinio("eu-west-1");
    const now = Date.UTC(2030, 0, 2, 3, 4, 5, 678);
    const { url, expiresAtMs } = await store.presignPut("m_0123456789abcdefghjkmnpqrs", 10, 900, now);
    const u = new URL(url);
    assert.equal(u.host, `127.0.0.1:${port}`);
    assert.match(u.pathname, /\/objects\/m_0123456789abcdefghjkmnpqrs$/);
    const q = u.searchParams;
    assert.equal(q.get("X-Amz-Algorithm"), "AWS4-HMAC-SHA256");
    assert.equal(q.get("X-Amz-Credential"), `${ACCESS_KEY}/20300102/eu-west-1/s3/aws4_request`);
    assert.equal(q.get("X-Amz-Date"), "20300102T030405Z");
    assert.equal(q.get("X-Amz-Expires"), "900");
    assert.equal(q.get("X-Amz-SignedHeaders"), "host");
    assert.equal(expiresAtMs, Date.UTC(2030, 0, 2, 3, 4, 5) + 900_000);
    const signature = q.get("X-Amz-Signature")!;
    assert.match(signature, /^[0-9a-f]{64}$/);
    assert.equal(sigV4(u, "PUT", SECRET_KEY), signature);
    // The signature binds the method, the expiry, the object and the key.
    assert.notEqual(sigV4(u, "GET", SECRET_KEY), signature);
    assert.notEqual(sigV4(u, "PUT", "another secret"), signature);
    const longer = new URL(u);
    longer.searchParams.set("X-Amz-Expires", "604800");
    assert.notEqual(sigV4(longer, "PUT", SECRET_KEY), signature);
    const other = new URL(u);
    other.pathname = other.pathname.replace("m_0123", "m_9123");
    assert.notEqual(sigV4(other, "PUT", SECRET_KEY), signature);
  });

  test("a GET URL verifies for GET only, and is signed for the public endpoint when one is set", async () => {
    const store = await MinioObjectStore.open({
      endpoint: { host: "127.0.0.1", port, useSSL: false },
      publicEndpoint: parseMinioEndpoint("https://media.example.com"),
      accessKey: ACCESS_KEY,
      secretKey: SECRET_KEY,
      bucket: `media-${process.pid}-${bucketNo++}`,
      createBucket: true,
    });
    const { url } = await store.presignGet("m_0123456789abcdefghjkmnpqrs", 10, 300, Date.now());
    const u = new URL(url);
    assert.equal(u.protocol, "https:");
    assert.equal(u.host, "media.example.com");
    assert.equal(u.searchParams.get("X-Amz-Expires"), "300");
    assert.equal(sigV4(u, "GET", SECRET_KEY), u.searchParams.get("X-Amz-Signature"));
    assert.notEqual(sigV4(u, "PUT", SECRET_KEY), u.searchParams.get("X-Amz-Signature"));
  });

  test("a missing bucket is an error unless it may be created", async () => {
    await assert.rejects(
      MinioObjectStore.open({
        endpoint: { host: "127.0.0.1", port, useSSL: false },
        accessKey: ACCESS_KEY,
        secretKey: SECRET_KEY,
        bucket: "does-not-exist",
      }),
      /bucket does-not-exist does not exist/,
    );
  });
});

test("openMedia chooses the MinIO engine when configured, with no server of its own", async () => {
  const engine = await openMedia(
    {
      host: "127.0.0.1",
      media: {
        limits: DEFAULT_MEDIA_LIMITS,
        sweepIntervalMs: 60_000,
        engine: {
          kind: "minio",
          options: {
            endpoint: { host: "127.0.0.1", port, useSSL: false },
            accessKey: ACCESS_KEY,
            secretKey: SECRET_KEY,
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
