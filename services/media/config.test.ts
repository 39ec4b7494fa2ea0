import assert from "node:assert/strict";
import { test } from "node:test";
import { defaultMediaLimits, loadMediaConfig } from "../common/config.js";
import { deriveMediaUrlKey } from "./config.js";
import { DEFAULT_MEDIA_LIMITS, type MediaLimits } from "./media.js";
import { type MinioObjectStoreOptions, parseMinioEndpoint } from "./minio.js";

// The configuration cannot import the media service (a lower layer), so it keeps its own copy of
// the defaults and of the endpoint parsing; these keep the copies equal.
test("media settings: the configuration's defaults are the media service's", () => {
  const limits: MediaLimits = defaultMediaLimits;
  assert.deepEqual(limits, DEFAULT_MEDIA_LIMITS);
});

test("media settings: MinIO endpoints parse as the engine parses them", () => {
  for (const url of ["http://minio:9000", "https://media.example.com", "http://[::1]:9000"]) {
    const c = loadMediaConfig(
      {
        SWITCHBOARD_MINIO_ENDPOINT: url,
        SWITCHBOARD_MINIO_ACCESS_KEY: "a",
        SWITCHBOARD_MINIO_SECRET_KEY: "s",
      },
      "/d",
    );
    assert.equal(c.engine.kind, "minio");
    if (c.engine.kind === "minio") {
      const options: MinioObjectStoreOptions = c.engine.options;
      assert.deepEqual(options.endpoint, parseMinioEndpoint(url));
    }
  }
});

test("media settings: the derived URL key is stable and not the token key", () => {
  const tokenKey = Buffer.alloc(32, 9);
  assert.deepEqual(deriveMediaUrlKey(tokenKey), deriveMediaUrlKey(Buffer.alloc(32, 9)));
  assert.notDeepEqual(Buffer.from(deriveMediaUrlKey(tokenKey)), tokenKey);
  assert.equal(deriveMediaUrlKey(tokenKey).length, 32);
});
