import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before } from "node:test";
import type { Client as MinioClient } from "minio";
import { type MinioServer, minioAdmin, minioServerEnv, skipWithoutMinio, startMinio } from "./minio.js";
import { TestDevices } from "./sdk-devices.js";
import { removeDir, type ServerProcess, startServerProcess } from "./server.js";

/**
 * A media engine the SDK end-to-end suites run against: the server's environment for it, and the
 * stored ciphertext read, replaced and removed behind the media service's back.
 */
export interface MediaBackend {
  /** Which engine the server runs, as its log names it ("engine":"local" or "minio"). */
  engine: "local" | "minio";
  /** Said in suite names. */
  name: string;
  /** Why this backend cannot run here, or false. */
  skip: string | false;
  /** Starts what the engine needs; returns the server's environment for it. */
  start(): Promise<Record<string, string>>;
  /** Ids of the objects the engine holds. */
  objectIds(dataDir: string): Promise<string[]>;
  /** An object's stored ciphertext. */
  readObject(dataDir: string, objectId: string): Promise<Buffer>;
  /** Replaces an object's stored ciphertext. */
  writeObject(dataDir: string, objectId: string, bytes: Buffer): Promise<void>;
  /** Removes an object's ciphertext (its record stays), as a store that lost it for a while. */
  removeObject(dataDir: string, objectId: string): Promise<void>;
  /** Where the engine keeps data outside the server's data directory (scanned for plaintext). */
  directories(): string[];
  /** Stops what start() started. */
  stop(): Promise<void>;
}

/** The names in a directory; none when it does not exist (yet). */
async function namesIn(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
}

function localBackend(): MediaBackend {
  const objects = (dataDir: string) => join(dataDir, "media", "objects");
  const file = (dataDir: string, objectId: string) => join(objects(dataDir), objectId);
  return {
    engine: "local",
    name: "local directory engine",
    skip: false,
    // The default engine: nothing to configure.
    start: async () => ({}),
    objectIds: (dataDir) => namesIn(objects(dataDir)),
    readObject: (dataDir, objectId) => readFile(file(dataDir, objectId)),
    writeObject: (dataDir, objectId, bytes) => writeFile(file(dataDir, objectId), bytes),
    removeObject: (dataDir, objectId) => rm(file(dataDir, objectId)),
    directories: () => [],
    stop: async () => {},
  };
}

function minioBackend(bucket: string): MediaBackend {
  let minio: MinioServer | undefined;
  // The test's own S3 client with the root credentials: MinIO keeps objects in its own format,
  // so the bytes are read and replaced through the S3 API, not the files.
  let admin: MinioClient | undefined;
  const s3 = (): MinioClient => {
    if (admin === undefined) throw new Error("the MinIO backend starts in before()");
    return admin;
  };
  const key = (objectId: string) => `objects/${objectId}`;
  return {
    engine: "minio",
    name: "MinIO engine on a real MinIO server",
    skip: skipWithoutMinio(),
    async start() {
      minio = await startMinio();
      admin = minioAdmin(minio);
      return minioServerEnv(minio, bucket);
    },
    async objectIds() {
      const ids: string[] = [];
      for await (const item of s3().listObjectsV2(bucket, "objects/", true)) {
        const name = (item as { name?: string }).name;
        if (name !== undefined) ids.push(name.slice("objects/".length));
      }
      return ids;
    },
    async readObject(_dataDir, objectId) {
      const chunks: Buffer[] = [];
      for await (const chunk of await s3().getObject(bucket, key(objectId))) chunks.push(chunk as Buffer);
      return Buffer.concat(chunks);
    },
    async writeObject(_dataDir, objectId, bytes) {
      await s3().putObject(bucket, key(objectId), bytes, bytes.length);
    },
    async removeObject(_dataDir, objectId) {
      await s3().removeObject(bucket, key(objectId));
    },
    directories: () => (minio === undefined ? [] : [minio.directory]),
    stop: async () => {
      await minio?.close();
    },
  };
}

/** The local directory engine and the MinIO engine (a real MinIO server; objects in `bucket`). */
export function mediaBackends(bucket: string): MediaBackend[] {
  return [localBackend(), minioBackend(bucket)];
}

/** What a suite reads inside its tests, once its before() has run. */
export interface SdkMediaSuite {
  /** The suite's temporary directory. */
  readonly base: string;
  /** The server process. */
  readonly server: ServerProcess;
  /** SDK devices on the server, each with its profile under `base`. */
  readonly devices: TestDevices;
}

/**
 * Registers, in the calling describe(), a before() that starts the backend and a server process on
 * it (in a temporary directory named after `prefix`, with `env` added) and an after() that closes
 * the devices, stops the server and the backend, removes the directory, and fails when the server
 * did not exit with 0 on SIGTERM.
 */
export function sdkMediaSuite(
  backend: MediaBackend,
  prefix: string,
  env: Record<string, string> = {},
): SdkMediaSuite {
  let base: string | undefined;
  let server: ServerProcess | undefined;
  let devices: TestDevices | undefined;

  before(async () => {
    base = await mkdtemp(join(tmpdir(), prefix));
    const backendEnv = await backend.start();
    server = await startServerProcess({ dataDir: join(base, "server"), env: { ...backendEnv, ...env } });
    const url = server.url;
    devices = new TestDevices(base, () => url);
  });

  after(async () => {
    await devices?.close();
    const code = await server?.stop();
    await backend.stop();
    if (base !== undefined) await removeDir(base);
    if (code !== undefined && code !== 0) {
      throw new Error(`server exited with ${code} on SIGTERM:\n${server?.logs.slice(-20).join("\n")}`);
    }
  });

  const started = <T>(value: T | undefined): T => {
    if (value === undefined) throw new Error("the suite starts in before()");
    return value;
  };
  return {
    get base() {
      return started(base);
    },
    get server() {
      return started(server);
    },
    get devices() {
      return started(devices);
    },
  };
}
