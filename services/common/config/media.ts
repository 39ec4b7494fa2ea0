/**
 * The media service's settings: limits, the sweep, and the object store engine with its settings.
 * Unlike the other sections, these messages have no "configuration: " prefix (they never had).
 */
import { join } from "node:path";
import { z } from "zod";
import { ConfigurationError } from "./error.js";
import { check, type Env, flag, nonEmptyText, refuse } from "./schema.js";

/** Limits and lifetimes (the media service's MediaLimits). */
export interface MediaLimits {
  /** Largest object, in bytes (104,857,600 = 100 MiB by default). */
  maxBytes: number;
  /** How long an upload URL works, in seconds. */
  uploadUrlTtlSeconds: number;
  /** How long a download URL works, in seconds. */
  downloadUrlTtlSeconds: number;
  /** How long an upload may stay unclaimed before the sweep deletes it, in milliseconds. */
  unclaimedTtlMs: number;
  /** Bytes one user may reserve for uploads per day; 0 turns the quota off. */
  uploadBytesPerDay: number;
  /** Uploads one user may have created and not yet claimed (per media process); 0: no bound. */
  maxUploadsInFlight: number;
}

/** The defaults: 100 MiB, 15-minute URLs, 24 hours to claim, 1 GiB a day and 64 in flight per user. */
export const defaultMediaLimits: MediaLimits = {
  maxBytes: 100 * 1024 * 1024,
  uploadUrlTtlSeconds: 15 * 60,
  downloadUrlTtlSeconds: 15 * 60,
  unclaimedTtlMs: 24 * 60 * 60 * 1000,
  uploadBytesPerDay: 1024 * 1024 * 1024,
  maxUploadsInFlight: 64,
};

/** A MinIO (or any S3 API) address. */
export interface ObjectStoreEndpoint {
  /** Host name or address. */
  host: string;
  /** Port. */
  port: number;
  /** https when true. */
  useSSL: boolean;
}

/** The MinIO engine's settings (the media service's MinioObjectStoreOptions). */
export interface MinioSettings {
  /** Where this process reaches MinIO. */
  endpoint: ObjectStoreEndpoint;
  /** Where devices reach MinIO, when that differs; presigned URLs name this host. */
  publicEndpoint?: ObjectStoreEndpoint;
  /** Access key. */
  accessKey: string;
  /** Secret key. */
  secretKey: string;
  /** The bucket. */
  bucket: string;
  /** The region URLs are signed for. */
  region?: string;
  /** Create the bucket at start-up if it does not exist. */
  createBucket?: boolean;
}

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
    | { kind: "minio"; options: MinioSettings };
}

/** A positive integer variable, or fallback when unset or empty. */
const positive = (name: string, fallback: number) =>
  z
    .string()
    .optional()
    .transform((raw, ctx) => {
      if (raw === undefined || raw === "") return fallback;
      if (!/^\d+$/.test(raw) || !Number.isSafeInteger(Number(raw)) || Number(raw) < 1)
        return refuse(ctx, `${name} must be a positive integer, got "${raw}"`);
      return Number(raw);
    });

/** A non-negative integer variable (0: off), or fallback when unset or empty. */
const count = (name: string, fallback: number) =>
  z
    .string()
    .optional()
    .transform((raw, ctx) => {
      if (raw === undefined || raw === "") return fallback;
      if (!/^\d+$/.test(raw) || !Number.isSafeInteger(Number(raw)))
        return refuse(ctx, `${name} must be a non-negative integer (0: off), got "${raw}"`);
      return Number(raw);
    });

/** An http(s) MinIO address without path or query. */
export function parseEndpoint(value: string): ObjectStoreEndpoint {
  const url = new URL(value);
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new Error("must be an http(s) URL");
  if (url.pathname !== "/" || url.search !== "") throw new Error("must have no path or query");
  const useSSL = url.protocol === "https:";
  return { host: url.hostname, port: url.port === "" ? (useSSL ? 443 : 80) : Number(url.port), useSSL };
}

const endpoint = (name: string) =>
  nonEmptyText().transform((raw, ctx) => {
    if (raw === undefined) return undefined;
    try {
      return parseEndpoint(raw);
    } catch (err) {
      return refuse(ctx, `${name}: ${(err as Error).message}`);
    }
  });

/** The limits and the engine choice, in the order they are checked. */
export const mediaVariables = z.object({
  SWITCHBOARD_MEDIA_URL_TTL_SECONDS: positive(
    "SWITCHBOARD_MEDIA_URL_TTL_SECONDS",
    defaultMediaLimits.uploadUrlTtlSeconds,
  ).refine((ttl) => ttl <= 7 * 24 * 3600, {
    message: "SWITCHBOARD_MEDIA_URL_TTL_SECONDS must be at most 604800 (7 days, the S3 limit)",
    abort: true,
  }),
  SWITCHBOARD_MEDIA_MAX_BYTES: positive("SWITCHBOARD_MEDIA_MAX_BYTES", defaultMediaLimits.maxBytes),
  SWITCHBOARD_MEDIA_UNCLAIMED_TTL_SECONDS: positive(
    "SWITCHBOARD_MEDIA_UNCLAIMED_TTL_SECONDS",
    defaultMediaLimits.unclaimedTtlMs / 1000,
  ),
  SWITCHBOARD_MEDIA_UPLOAD_BYTES_PER_DAY: count(
    "SWITCHBOARD_MEDIA_UPLOAD_BYTES_PER_DAY",
    defaultMediaLimits.uploadBytesPerDay,
  ),
  SWITCHBOARD_MEDIA_MAX_UPLOADS_IN_FLIGHT: count(
    "SWITCHBOARD_MEDIA_MAX_UPLOADS_IN_FLIGHT",
    defaultMediaLimits.maxUploadsInFlight,
  ),
  SWITCHBOARD_MEDIA_SWEEP_INTERVAL_SECONDS: positive("SWITCHBOARD_MEDIA_SWEEP_INTERVAL_SECONDS", 600),
  /** Unset or empty: "minio" when SWITCHBOARD_MINIO_ENDPOINT is set, else "local". */
  SWITCHBOARD_MEDIA_STORE: nonEmptyText(),
});

/** The local engine's variables. */
export const localMediaVariables = z.object({
  SWITCHBOARD_MEDIA_URL_KEY: nonEmptyText().transform((raw, ctx) => {
    const key = raw === undefined ? undefined : Buffer.from(raw, "base64url");
    if (key !== undefined && key.length < 32)
      return refuse(ctx, "SWITCHBOARD_MEDIA_URL_KEY must be at least 32 bytes, base64url");
    return key;
  }),
  SWITCHBOARD_MEDIA_PUBLIC_URL: nonEmptyText().refine(
    (url) => url === undefined || /^https?:\/\/[^/?#]+(\/[^?#]*[^/?#])?$/.test(url),
    "SWITCHBOARD_MEDIA_PUBLIC_URL must be an http(s) URL without a trailing slash, query or fragment",
  ),
  SWITCHBOARD_MEDIA_PORT: nonEmptyText().transform((raw = "7422", ctx) => {
    if (!/^\d{1,5}$/.test(raw) || Number(raw) > 65535)
      return refuse(ctx, `SWITCHBOARD_MEDIA_PORT must be a port number (0 for any free port), got "${raw}"`);
    return Number(raw);
  }),
  /** Unset or empty: <data dir>/media. */
  SWITCHBOARD_MEDIA_DIR: nonEmptyText(),
});

/** The MinIO engine's variables. */
export const minioVariables = z.object({
  SWITCHBOARD_MINIO_ENDPOINT: endpoint("SWITCHBOARD_MINIO_ENDPOINT"),
  SWITCHBOARD_MINIO_ACCESS_KEY: nonEmptyText(),
  SWITCHBOARD_MINIO_SECRET_KEY: nonEmptyText(),
  SWITCHBOARD_MINIO_BUCKET: nonEmptyText().transform((v) => v ?? "switchboard-media"),
  SWITCHBOARD_MINIO_REGION: nonEmptyText().transform((v) => v ?? "us-east-1"),
  SWITCHBOARD_MINIO_CREATE_BUCKET: flag(),
  SWITCHBOARD_MINIO_PUBLIC_ENDPOINT: endpoint("SWITCHBOARD_MINIO_PUBLIC_ENDPOINT"),
});

/**
 * Reads the media settings (all optional for the local engine); the local engine's variables are
 * read only with the local engine, MinIO's only with MinIO. A bad value throws naming it.
 */
export function loadMediaConfig(env: Env, dataDir: string): MediaConfig {
  const vars = check(mediaVariables, env);
  const ttl = vars.SWITCHBOARD_MEDIA_URL_TTL_SECONDS;
  const limits: MediaLimits = {
    maxBytes: vars.SWITCHBOARD_MEDIA_MAX_BYTES,
    uploadUrlTtlSeconds: ttl,
    downloadUrlTtlSeconds: ttl,
    unclaimedTtlMs: vars.SWITCHBOARD_MEDIA_UNCLAIMED_TTL_SECONDS * 1000,
    uploadBytesPerDay: vars.SWITCHBOARD_MEDIA_UPLOAD_BYTES_PER_DAY,
    maxUploadsInFlight: vars.SWITCHBOARD_MEDIA_MAX_UPLOADS_IN_FLIGHT,
  };
  const fail = (message: string): never => {
    throw new ConfigurationError(message);
  };
  if (limits.uploadBytesPerDay > 0 && limits.uploadBytesPerDay < limits.maxBytes) {
    fail("SWITCHBOARD_MEDIA_UPLOAD_BYTES_PER_DAY must be 0 (off) or at least SWITCHBOARD_MEDIA_MAX_BYTES");
  }
  if (limits.unclaimedTtlMs <= ttl * 1000) {
    fail("SWITCHBOARD_MEDIA_UNCLAIMED_TTL_SECONDS must be longer than SWITCHBOARD_MEDIA_URL_TTL_SECONDS");
  }
  const sweepIntervalMs = vars.SWITCHBOARD_MEDIA_SWEEP_INTERVAL_SECONDS * 1000;
  const kind = vars.SWITCHBOARD_MEDIA_STORE ?? (env.SWITCHBOARD_MINIO_ENDPOINT ? "minio" : "local");
  if (kind === "local") {
    const local = check(localMediaVariables, env);
    return {
      limits,
      sweepIntervalMs,
      engine: {
        kind,
        dir: local.SWITCHBOARD_MEDIA_DIR ?? join(dataDir, "media"),
        port: local.SWITCHBOARD_MEDIA_PORT,
        publicBaseUrl: local.SWITCHBOARD_MEDIA_PUBLIC_URL,
        urlKey: local.SWITCHBOARD_MEDIA_URL_KEY,
      },
    };
  }
  if (kind !== "minio") fail(`SWITCHBOARD_MEDIA_STORE must be "local" or "minio", got "${kind}"`);
  const need = (name: string): never => fail(`${name} is required with SWITCHBOARD_MEDIA_STORE=minio`);
  if (!env.SWITCHBOARD_MINIO_ENDPOINT) need("SWITCHBOARD_MINIO_ENDPOINT");
  const minio = check(minioVariables, env);
  const options: MinioSettings = {
    endpoint: minio.SWITCHBOARD_MINIO_ENDPOINT ?? need("SWITCHBOARD_MINIO_ENDPOINT"),
    accessKey: minio.SWITCHBOARD_MINIO_ACCESS_KEY ?? need("SWITCHBOARD_MINIO_ACCESS_KEY"),
    secretKey: minio.SWITCHBOARD_MINIO_SECRET_KEY ?? need("SWITCHBOARD_MINIO_SECRET_KEY"),
    bucket: minio.SWITCHBOARD_MINIO_BUCKET,
    region: minio.SWITCHBOARD_MINIO_REGION,
    createBucket: minio.SWITCHBOARD_MINIO_CREATE_BUCKET,
    ...(minio.SWITCHBOARD_MINIO_PUBLIC_ENDPOINT && {
      publicEndpoint: minio.SWITCHBOARD_MINIO_PUBLIC_ENDPOINT,
    }),
  };
  return { limits, sweepIntervalMs, engine: { kind: "minio", options } };
}
