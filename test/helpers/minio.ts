import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Client as MinioClient } from "minio";
import { cachedToolPath, GO_TOOLS, installHint } from "../../services/mesh/go-tools.js";
import { freePort } from "./backends.js";

/**
 * A real MinIO server for the tests, built from source once into the tool cache
 * (services/mesh/go-tools.ts pins the version; `.ci/run` builds it), started on free ports with
 * generated root credentials and stopped by PID. It checks SigV4 signatures, expiries and
 * everything else a deployment's MinIO does, which s3rver (the stand-in it replaced) did not.
 */
export interface MinioServer {
  /** "http://127.0.0.1:<port>", for SWITCHBOARD_MINIO_ENDPOINT. */
  endpoint: string;
  /** The S3 API port. */
  port: number;
  pid: number;
  /** The data directory: one drive, objects under `<directory>/<bucket>/<key>/` in MinIO's format. */
  directory: string;
  /** The root user, generated per server. */
  accessKey: string;
  /** The root password, generated per server. */
  secretKey: string;
  /**
   * The pinned Go module version for the cached build; a go-installed MinIO calls itself
   * "DEVELOPMENT.GOGET", so the module version (`go version -m <binary>`) is its name.
   */
  version: string;
  /** Stops the process (SIGTERM), waits for it to exit, and removes its directory. */
  close(): Promise<void>;
}

/** The MinIO binary: $SWITCHBOARD_MINIO_BIN, else the pinned build in the tool cache. */
export function minioBinary(): string | undefined {
  const chosen = process.env.SWITCHBOARD_MINIO_BIN;
  if (chosen !== undefined && chosen !== "") return chosen;
  const cached = cachedToolPath("minio");
  return existsSync(cached) ? cached : undefined;
}

/**
 * A reason to skip the MinIO tests (no binary: the message says how to build it), or false to run
 * them. Under CI=true a missing binary is never a skip: startMinio then fails, saying what to build.
 */
export function skipWithoutMinio(): string | false {
  if (minioBinary() !== undefined || process.env.CI === "true") return false;
  return `no MinIO binary at ${cachedToolPath("minio")}; to run these tests, build it: ${installHint("minio")}`;
}

/**
 * True once MinIO's liveness endpoint answers 200; else why not (the status, or the fetch's error
 * and its cause), for the error of a start that timed out.
 */
async function live(endpoint: string): Promise<true | string> {
  try {
    const res = await fetch(`${endpoint}/minio/health/live`, { signal: AbortSignal.timeout(500) });
    await res.arrayBuffer();
    return res.status === 200 ? true : `HTTP ${res.status}`;
  } catch (err) {
    const { cause } = err as { cause?: unknown };
    return cause instanceof Error ? `${(err as Error).message}: ${cause.message}` : String(err);
  }
}

/**
 * Starts `minio server <tmpdir>` on free API and console ports and waits (up to timeoutMs) until
 * /minio/health/live answers. Throws, with MinIO's output, if it exits or does not answer in time.
 */
export async function startMinio(
  options: { binary?: string; timeoutMs?: number } = {},
): Promise<MinioServer> {
  const binary = options.binary ?? minioBinary();
  if (binary === undefined) {
    const ci = process.env.CI === "true" ? ", and CI=true requires it" : "";
    throw new Error(
      `no MinIO binary at ${cachedToolPath("minio")}${ci}: build it with ${installHint("minio")}`,
    );
  }
  const directory = await mkdtemp(join(tmpdir(), "sb-minio-"));
  const port = await freePort();
  const consolePort = await freePort();
  const accessKey = `sb${randomBytes(6).toString("hex")}`;
  const secretKey = randomBytes(24).toString("base64url");
  const endpoint = `http://127.0.0.1:${port}`;
  const child: ChildProcess = spawn(
    binary,
    ["server", directory, "--address", `127.0.0.1:${port}`, "--console-address", `127.0.0.1:${consolePort}`],
    {
      stdio: ["ignore", "pipe", "pipe"],
      env: {
        ...process.env,
        MINIO_ROOT_USER: accessKey,
        MINIO_ROOT_PASSWORD: secretKey,
        // A test server never looks for updates or phones home.
        MINIO_UPDATE: "off",
        MINIO_CALLHOME_ENABLE: "off",
      },
    },
  );
  const output: string[] = [];
  child.stdout?.setEncoding("utf8").on("data", (chunk: string) => output.push(chunk));
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => output.push(chunk));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const cleanUp = () => rm(directory, { recursive: true, force: true });
  try {
    await new Promise<void>((resolve, reject) => {
      child.once("spawn", () => resolve());
      child.once("error", (err) =>
        reject(new Error(`cannot run ${binary} (${err.message}); ${installHint("minio")}`, { cause: err })),
      );
    });
  } catch (err) {
    await cleanUp();
    throw err;
  }
  const pid = child.pid;
  if (pid === undefined) throw new Error(`${binary} started without a PID`);
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) process.kill(pid, "SIGTERM");
    await exited;
  };
  const deadline = Date.now() + (options.timeoutMs ?? 30_000);
  for (;;) {
    if (child.exitCode !== null) {
      await cleanUp();
      throw new Error(`minio exited with ${child.exitCode} on port ${port}: ${output.join("")}`);
    }
    const answer = await live(endpoint);
    if (answer === true) break;
    if (Date.now() > deadline) {
      await stop();
      await cleanUp();
      throw new Error(
        `minio did not answer ${endpoint}/minio/health/live in time (the last check: ${answer}): ${output.join("")}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return {
    endpoint,
    port,
    pid,
    directory,
    accessKey,
    secretKey,
    version:
      binary === cachedToolPath("minio") ? GO_TOOLS.minio.version : `${binary} (SWITCHBOARD_MINIO_BIN)`,
    async close() {
      await stop();
      await cleanUp();
    },
  };
}

/**
 * An S3 client of the server with its root credentials: tests read and replace objects through
 * the S3 API, since MinIO keeps them on disk in its own format.
 */
export function minioAdmin(minio: MinioServer): MinioClient {
  return new MinioClient({
    endPoint: "127.0.0.1",
    port: minio.port,
    useSSL: false,
    accessKey: minio.accessKey,
    secretKey: minio.secretKey,
    pathStyle: true,
  });
}

/** The settings that point a Switchboard server's media store at this MinIO, in `bucket` (created at start). */
export function minioServerEnv(minio: MinioServer, bucket: string): Record<string, string> {
  return {
    SWITCHBOARD_MEDIA_STORE: "minio",
    SWITCHBOARD_MINIO_ENDPOINT: minio.endpoint,
    SWITCHBOARD_MINIO_ACCESS_KEY: minio.accessKey,
    SWITCHBOARD_MINIO_SECRET_KEY: minio.secretKey,
    SWITCHBOARD_MINIO_BUCKET: bucket,
    SWITCHBOARD_MINIO_CREATE_BUCKET: "true",
  };
}
