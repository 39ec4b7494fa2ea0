import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { rm } from "node:fs/promises";
import { afterEach, describe, test } from "node:test";
import { cachedToolPath, GO_TOOLS, onPath } from "./go-tools.js";
import { natsServerBinary, startNatsServer } from "./servers.js";

// Which nats-server the tests and the mesh start: the documented lookup, and the version the
// started server announces.
describe("startNatsServer's choice of binary", () => {
  const saved = process.env.SWITCHBOARD_NATS_SERVER_BIN;
  afterEach(() => {
    if (saved === undefined) delete process.env.SWITCHBOARD_NATS_SERVER_BIN;
    else process.env.SWITCHBOARD_NATS_SERVER_BIN = saved;
  });

  const cached = cachedToolPath("nats-server");
  const debian = onPath("nats-server");

  test("the pinned release in the tool cache comes before PATH, and says its version", {
    skip: existsSync(cached) ? false : `no cached build at ${cached}`,
  }, async () => {
    delete process.env.SWITCHBOARD_NATS_SERVER_BIN;
    assert.equal(natsServerBinary(), cached);
    const server = await startNatsServer();
    try {
      assert.equal(server.binary, cached);
      assert.equal(`v${server.version}`, GO_TOOLS["nats-server"].version);
    } finally {
      await server.stop("SIGTERM");
      await rm(server.storeDir, { recursive: true, force: true });
    }
  });

  test("SWITCHBOARD_NATS_SERVER_BIN comes first", {
    skip: debian === undefined ? "no nats-server on PATH" : false,
  }, async () => {
    process.env.SWITCHBOARD_NATS_SERVER_BIN = debian;
    assert.equal(natsServerBinary(), debian);
    const server = await startNatsServer();
    try {
      assert.equal(server.binary, debian);
      assert.match(server.version, /^\d+\.\d+\.\d+/);
    } finally {
      await server.stop("SIGTERM");
      await rm(server.storeDir, { recursive: true, force: true });
    }
  });

  test("a binary that cannot run is an error naming how to get one", async () => {
    process.env.SWITCHBOARD_NATS_SERVER_BIN = "/nonexistent/nats-server";
    await assert.rejects(
      startNatsServer(),
      /cannot run \/nonexistent\/nats-server .*go-tools\.ts install nats-server/,
    );
  });
});
