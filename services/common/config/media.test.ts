import assert from "node:assert/strict";
import { test } from "node:test";
import { loadMediaConfig } from "../config.js";

test("media settings: defaults are the local engine with 100 MiB and 24 h to claim", () => {
  const c = loadMediaConfig({}, "/data");
  assert.equal(c.limits.maxBytes, 100 * 1024 * 1024);
  assert.equal(c.limits.unclaimedTtlMs, 24 * 3600 * 1000);
  assert.equal(c.engine.kind, "local");
  if (c.engine.kind === "local") {
    assert.equal(c.engine.dir, "/data/media");
    assert.equal(c.engine.port, 7422);
  }
});

test("media settings: MinIO is chosen by its endpoint and needs its keys", () => {
  const env = {
    SWITCHBOARD_MINIO_ENDPOINT: "http://minio:9000",
    SWITCHBOARD_MINIO_PUBLIC_ENDPOINT: "https://media.example.com",
    SWITCHBOARD_MINIO_ACCESS_KEY: "a",
    SWITCHBOARD_MINIO_SECRET_KEY: "s",
  };
  const c = loadMediaConfig(env, "/data");
  assert.equal(c.engine.kind, "minio");
  if (c.engine.kind === "minio") {
    assert.deepEqual(c.engine.options.endpoint, { host: "minio", port: 9000, useSSL: false });
    assert.deepEqual(c.engine.options.publicEndpoint, { host: "media.example.com", port: 443, useSSL: true });
    assert.equal(c.engine.options.bucket, "switchboard-media");
  }
  assert.throws(
    () => loadMediaConfig({ ...env, SWITCHBOARD_MINIO_SECRET_KEY: "" }, "/d"),
    /SWITCHBOARD_MINIO_SECRET_KEY is required/,
  );
});

test("media settings: bad values name their variable", () => {
  assert.throws(
    () => loadMediaConfig({ SWITCHBOARD_MEDIA_MAX_BYTES: "10MB" }, "/d"),
    /SWITCHBOARD_MEDIA_MAX_BYTES/,
  );
  assert.throws(() => loadMediaConfig({ SWITCHBOARD_MEDIA_STORE: "s3" }, "/d"), /SWITCHBOARD_MEDIA_STORE/);
  assert.throws(
    () => loadMediaConfig({ SWITCHBOARD_MEDIA_UNCLAIMED_TTL_SECONDS: "60" }, "/d"),
    /must be longer than SWITCHBOARD_MEDIA_URL_TTL_SECONDS/,
  );
  assert.throws(() => loadMediaConfig({ SWITCHBOARD_MEDIA_URL_KEY: "c2hvcnQ" }, "/d"), /at least 32 bytes/);
  assert.throws(
    () => loadMediaConfig({ SWITCHBOARD_MEDIA_PUBLIC_URL: "https://media.example.com/" }, "/d"),
    /SWITCHBOARD_MEDIA_PUBLIC_URL/,
  );
  assert.throws(
    () => loadMediaConfig({ SWITCHBOARD_MINIO_ENDPOINT: "minio:9000" }, "/d"),
    /SWITCHBOARD_MINIO/,
  );
});
