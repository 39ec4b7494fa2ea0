import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import S3rver from "s3rver";
import { freePort } from "./backends.js";

/**
 * An in-process s3rver (an S3 API server for tests, npm devDependency) on a free port, keeping its
 * objects as plain files under `directory`: `<directory>/<bucket>/<key>._S3rver_object`. It checks
 * no signatures; the MinIO engine's URLs are verified separately in services/media/minio.test.ts.
 */
export interface S3rverInstance {
  /** "http://127.0.0.1:<port>", for SWITCHBOARD_MINIO_ENDPOINT. */
  endpoint: string;
  port: number;
  directory: string;
  accessKey: string;
  secretKey: string;
  /** The file holding an object's bytes. */
  objectFile(bucket: string, key: string): string;
  /** Stops the server and removes its directory. */
  close(): Promise<void>;
}

export async function startS3rver(): Promise<S3rverInstance> {
  const directory = await mkdtemp(join(tmpdir(), "sb-s3rver-"));
  const port = await freePort();
  const server = new S3rver({ address: "127.0.0.1", port, silent: true, directory });
  try {
    await server.run();
  } catch (err) {
    await rm(directory, { recursive: true, force: true });
    throw err;
  }
  return {
    endpoint: `http://127.0.0.1:${port}`,
    port,
    directory,
    accessKey: "S3RVER",
    secretKey: "S3RVER",
    objectFile: (bucket, key) => join(directory, bucket, `${key}._S3rver_object`),
    async close() {
      await server.close();
      await rm(directory, { recursive: true, force: true });
    },
  };
}
