/**
 * One server process per store engine, for the suites that run the same tests on LMDB and on
 * ScyllaDB. test/run.mjs starts Cassandra for the files that use this helper, as for scylla.ts.
 */
import assert from "node:assert/strict";
import { after, before } from "node:test";
import { TestDevice, uniqueName } from "./device.js";
import { type MinioServer, minioServerEnv, startMinio } from "./minio.js";
import { type ScratchKeyspace, scratchKeyspace, scyllaServerEnv } from "./scylla.js";
import { removeDir, type ServerProcess, startServerProcess } from "./server.js";

export type StoreEngine = "lmdb" | "scylla";

export interface EngineServerOptions {
  /** The server's settings besides those of its store (and media store). */
  env?: Record<string, string>;
  /** Media in a MinIO of the suite's own, in this bucket; else the embedded media store. */
  minioBucket?: string | undefined;
}

/**
 * A `switchboard start` process on `engine` (on ScyllaDB, in a scratch keyspace named after
 * `name`), started in before(); after() closes every device it made, stops it, removes its data
 * directory, drops the keyspace, stops the MinIO, and fails unless the server exited with 0.
 */
export function engineServerSuite(engine: StoreEngine, name: string, options: EngineServerOptions = {}) {
  let server: ServerProcess | undefined;
  let keyspace: ScratchKeyspace | undefined;
  let minio: MinioServer | undefined;
  const env: Record<string, string> = { ...options.env };
  const devices: TestDevice[] = [];

  before(async () => {
    if (engine === "scylla") {
      keyspace = await scratchKeyspace(name);
      Object.assign(env, scyllaServerEnv(keyspace));
    }
    if (options.minioBucket !== undefined) {
      minio = await startMinio();
      Object.assign(env, minioServerEnv(minio, options.minioBucket));
    }
    server = await startServerProcess({ env });
  });

  after(async () => {
    await Promise.all(devices.map((d) => d.close()));
    const code = await server?.stop();
    if (server !== undefined) await removeDir(server.dataDir);
    await keyspace?.drop();
    await minio?.close();
    assert.equal(code, 0, `server exited with ${code}:\n${server?.logs.slice(-20).join("\n")}`);
  });

  return {
    /** The running server (after before(); a new process after restart()). */
    get server(): ServerProcess {
      if (server === undefined) throw new Error("the server starts in before()");
      return server;
    },
    /** The scratch keyspace of a ScyllaDB suite. */
    get keyspace(): ScratchKeyspace {
      if (keyspace === undefined)
        throw new Error(`a ${engine} suite has no keyspace (it is made in before())`);
      return keyspace;
    },
    /** Closes the device with the server. */
    track(device: TestDevice): TestDevice {
      devices.push(device);
      return device;
    },
    /** A new user with one device on the server. */
    async user(prefix: string): Promise<TestDevice> {
      return this.track(await TestDevice.register(this.server.url, uniqueName(prefix)));
    },
    /**
     * Stops the server (if the test has not: stop it first to check its exit code) and starts a
     * new process on its data directory, with the same settings.
     */
    async restart(): Promise<ServerProcess> {
      const { dataDir } = this.server;
      await this.server.stop();
      server = await startServerProcess({ dataDir, env });
      return server;
    },
  };
}
