import { createHmac } from "node:crypto";
import { join } from "node:path";
import { DEFAULT_MEDIA_LIMITS, type MediaLimits } from "./media.js";
import { type MinioObjectStoreOptions, parseMinioEndpoint } from "./minio.js";

/** The media service's settings, read by loadMediaConfig. */
export interface MediaConfig {
  limits: MediaLimits;
  /** How often the sweep of unclaimed uploads runs, in milliseconds. */
  sweepIntervalMs: number;
  /** The engine and its settings. */
  engine:
    | {
        kind: "local";
        /** The directory of objects and records. */
        dir: string;
        /** Port of the HTTP/1.1 server for the presigned URLs (0: any free port). */
        port: number;
        /** Base URL devices use to reach that server; undefined: derived from host and bound port. */
        publicBaseUrl: string | undefined;
        /** URL signing key; undefined: derived from the token key. */
        urlKey: Uint8Array | undefined;
      }
    | { kind: "minio"; options: MinioObjectStoreOptions };
}

type Env = Record<string, string | undefined>;

function fail(message: string): never {
  throw new Error(message);
}

function positiveInt(env: Env, name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  if (!/^\d+$/.test(raw) || !Number.isSafeInteger(Number(raw)) || Number(raw) < 1) {
    fail(`${name} must be a positive integer, got "${raw}"`);
  }
  return Number(raw);
}

/**
 * Reads the media settings (all optional for the local engine):
 * SWITCHBOARD_MEDIA_STORE (`local` | `minio`; `minio` when SWITCHBOARD_MINIO_ENDPOINT is set),
 * SWITCHBOARD_MEDIA_MAX_BYTES, SWITCHBOARD_MEDIA_URL_TTL_SECONDS,
 * SWITCHBOARD_MEDIA_UNCLAIMED_TTL_SECONDS, SWITCHBOARD_MEDIA_SWEEP_INTERVAL_SECONDS,
 * SWITCHBOARD_MEDIA_UPLOAD_BYTES_PER_DAY, SWITCHBOARD_MEDIA_MAX_UPLOADS_IN_FLIGHT;
 * local: SWITCHBOARD_MEDIA_DIR, SWITCHBOARD_MEDIA_PORT, SWITCHBOARD_MEDIA_PUBLIC_URL,
 * SWITCHBOARD_MEDIA_URL_KEY; minio: SWITCHBOARD_MINIO_ENDPOINT, SWITCHBOARD_MINIO_PUBLIC_ENDPOINT,
 * SWITCHBOARD_MINIO_ACCESS_KEY, SWITCHBOARD_MINIO_SECRET_KEY, SWITCHBOARD_MINIO_BUCKET,
 * SWITCHBOARD_MINIO_REGION, SWITCHBOARD_MINIO_CREATE_BUCKET. A bad value throws naming it.
 */
export function loadMediaConfig(env: Env, dataDir: string): MediaConfig {
  const ttl = positiveInt(env, "SWITCHBOARD_MEDIA_URL_TTL_SECONDS", DEFAULT_MEDIA_LIMITS.uploadUrlTtlSeconds);
  if (ttl > 7 * 24 * 3600)
    fail("SWITCHBOARD_MEDIA_URL_TTL_SECONDS must be at most 604800 (7 days, the S3 limit)");
  const limits: MediaLimits = {
    maxBytes: positiveInt(env, "SWITCHBOARD_MEDIA_MAX_BYTES", DEFAULT_MEDIA_LIMITS.maxBytes),
    uploadUrlTtlSeconds: ttl,
    downloadUrlTtlSeconds: ttl,
    unclaimedTtlMs:
      positiveInt(
        env,
        "SWITCHBOARD_MEDIA_UNCLAIMED_TTL_SECONDS",
        DEFAULT_MEDIA_LIMITS.unclaimedTtlMs / 1000,
      ) * 1000,
    uploadBytesPerDay: DEFAULT_MEDIA_LIMITS.uploadBytesPerDay,
    maxUploadsInFlight: DEFAULT_MEDIA_LIMITS.maxUploadsInFlight,
  };
  const count = (name: string, fallback: number): number => {
    const raw = env[name];
    if (raw === undefined || raw === "") return fallback;
    if (!/^\d+$/.test(raw) || !Number.isSafeInteger(Number(raw))) {
      fail(`${name} must be a non-negative integer (0: off), got "${raw}"`);
    }
    return Number(raw);
  };
  limits.uploadBytesPerDay = count(
    "SWITCHBOARD_MEDIA_UPLOAD_BYTES_PER_DAY",
    DEFAULT_MEDIA_LIMITS.uploadBytesPerDay,
  );
  limits.maxUploadsInFlight = count(
    "SWITCHBOARD_MEDIA_MAX_UPLOADS_IN_FLIGHT",
    DEFAULT_MEDIA_LIMITS.maxUploadsInFlight,
  );
  if (limits.uploadBytesPerDay > 0 && limits.uploadBytesPerDay < limits.maxBytes) {
    fail("SWITCHBOARD_MEDIA_UPLOAD_BYTES_PER_DAY must be 0 (off) or at least SWITCHBOARD_MEDIA_MAX_BYTES");
  }
  if (limits.unclaimedTtlMs <= ttl * 1000) {
    fail("SWITCHBOARD_MEDIA_UNCLAIMED_TTL_SECONDS must be longer than SWITCHBOARD_MEDIA_URL_TTL_SECONDS");
  }
  const sweepIntervalMs = positiveInt(env, "SWITCHBOARD_MEDIA_SWEEP_INTERVAL_SECONDS", 600) * 1000;
  const kind = env.SWITCHBOARD_MEDIA_STORE || (env.SWITCHBOARD_MINIO_ENDPOINT ? "minio" : "local");
  if (kind === "local") {
    const rawKey = env.SWITCHBOARD_MEDIA_URL_KEY;
    const urlKey = rawKey ? Buffer.from(rawKey, "base64url") : undefined;
    if (urlKey !== undefined && urlKey.length < 32)
      fail("SWITCHBOARD_MEDIA_URL_KEY must be at least 32 bytes, base64url");
    const publicBaseUrl = env.SWITCHBOARD_MEDIA_PUBLIC_URL || undefined;
    if (publicBaseUrl !== undefined && !/^https?:\/\/[^/?#]+(\/[^?#]*[^/?#])?$/.test(publicBaseUrl)) {
      fail("SWITCHBOARD_MEDIA_PUBLIC_URL must be an http(s) URL without a trailing slash, query or fragment");
    }
    const rawPort = env.SWITCHBOARD_MEDIA_PORT || "7422";
    if (!/^\d{1,5}$/.test(rawPort) || Number(rawPort) > 65535) {
      fail(`SWITCHBOARD_MEDIA_PORT must be a port number (0 for any free port), got "${rawPort}"`);
    }
    const port = Number(rawPort);
    return {
      limits,
      sweepIntervalMs,
      engine: { kind, dir: env.SWITCHBOARD_MEDIA_DIR || join(dataDir, "media"), port, publicBaseUrl, urlKey },
    };
  }
  if (kind !== "minio") fail(`SWITCHBOARD_MEDIA_STORE must be "local" or "minio", got "${kind}"`);
  const need = (name: string): string =>
    env[name] || fail(`${name} is required with SWITCHBOARD_MEDIA_STORE=minio`);
  const endpoint = (name: string, value: string) => {
    try {
      return parseMinioEndpoint(value);
    } catch (err) {
      return fail(`${name}: ${(err as Error).message}`);
    }
  };
  const publicRaw = env.SWITCHBOARD_MINIO_PUBLIC_ENDPOINT;
  const options: MinioObjectStoreOptions = {
    endpoint: endpoint("SWITCHBOARD_MINIO_ENDPOINT", need("SWITCHBOARD_MINIO_ENDPOINT")),
    accessKey: need("SWITCHBOARD_MINIO_ACCESS_KEY"),
    secretKey: need("SWITCHBOARD_MINIO_SECRET_KEY"),
    bucket: env.SWITCHBOARD_MINIO_BUCKET || "switchboard-media",
    region: env.SWITCHBOARD_MINIO_REGION || "us-east-1",
    createBucket: env.SWITCHBOARD_MINIO_CREATE_BUCKET === "true",
    ...(publicRaw ? { publicEndpoint: endpoint("SWITCHBOARD_MINIO_PUBLIC_ENDPOINT", publicRaw) } : {}),
  };
  return { limits, sweepIntervalMs, engine: { kind: "minio", options } };
}

/**
 * The local engine's URL key when none is configured: derived from the access-token key, so
 * every media process of a deployment signs alike and the token key itself is never reused.
 */
export function deriveMediaUrlKey(tokenKey: Uint8Array): Uint8Array {
  return createHmac("sha256", tokenKey).update("switchboard media url key v1").digest();
}
