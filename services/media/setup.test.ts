import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { createClient, createRouterTransport } from "@connectrpc/connect";
import { MediaService } from "../../gen/switchboard/v1/media_pb.js";
import { errorBoundary } from "../common/boundary.js";
import { createLogger } from "../common/log.js";
import { openMedia } from "../server/engines.js";
import { loadMediaConfig } from "./config.js";
import { as, fakeMembers } from "./conformance.js";
import { startMedia } from "./setup.js";

test("startMedia: the local engine serves its URLs on its own HTTP port", async () => {
  const dataDir = await mkdtemp(join(tmpdir(), "switchboard-media-setup-"));
  const log = createLogger({ level: "silent" });
  const config = loadMediaConfig({ SWITCHBOARD_MEDIA_PORT: "0" }, dataDir);
  const engine = await openMedia({ media: config, host: "127.0.0.1" }, randomBytes(32), log);
  const started = await startMedia({
    config,
    engine,
    members: fakeMembers({ g_cccccccccccccccccccccccccc: ["u_aaaaaaaaaaaaaaaaaaaaaaaaaa"] }),
    authenticate: async (h) => ({ userId: h!.slice(7), deviceId: "dv_x", expiresAtMs: Date.now() + 60_000 }),
    log,
  });
  try {
    assert.equal(engine.store.engine, "local");
    const client = createClient(
      MediaService,
      createRouterTransport((r) => r.service(MediaService, started.service), {
        router: { interceptors: [errorBoundary(log)] },
      }),
    );
    const user = as("u_aaaaaaaaaaaaaaaaaaaaaaaaaa");
    const conversationId = "g_cccccccccccccccccccccccccc";
    const bytes = randomBytes(5000);
    const up = await client.createUpload({ conversationId, lengthBytes: 5000n }, user);
    assert.ok(started.objectsUrl && up.uploadUrl.startsWith(`${started.objectsUrl}/media/v1/objects/`));
    assert.equal((await fetch(up.uploadUrl, { method: "PUT", body: bytes })).status, 200);
    const down = await client.createDownload({ objectId: up.objectId, conversationId }, user);
    assert.deepEqual(Buffer.from(await (await fetch(down.downloadUrl)).arrayBuffer()), bytes);
    assert.equal((await fetch(`${started.objectsUrl}/other`)).status, 404);
  } finally {
    await started.close();
    await rm(dataDir, { recursive: true, force: true });
  }
});
