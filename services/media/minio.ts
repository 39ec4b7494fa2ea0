import type { Readable } from "node:stream";
// Types only: the driver is loaded by MinioObjectStore.open, so importing this module (for
// parseMinioEndpoint, or by the configuration) never loads minio in a process that does not use it.
import type { Client, ClientOptions } from "minio";
import { type ObjectStoreEndpoint, parseEndpoint } from "../common/config.js";
import { claimMarker, isClaimConversation, isStaleClaimMarker, parseClaimMarker } from "./claims.js";
import { isAbandonedPendingMarker, pendingMarkerBody } from "./pending.js";
import {
  isObjectId,
  type ObjectRecord,
  type ObjectStat,
  type ObjectStore,
  type PresignedUrl,
  parseRecord,
} from "./types.js";

/** Options for the MinIO (S3 API) engine. */
export interface MinioObjectStoreOptions {
  /** Where this process reaches MinIO. */
  endpoint: MinioEndpoint;
  /**
   * Where devices reach MinIO, when that differs (a public host in front of an in-cluster
   * service). Presigned URLs are signed for the host they name, so they are made with this one.
   */
  publicEndpoint?: MinioEndpoint;
  /** Access key. */
  accessKey: string;
  /** Secret key. */
  secretKey: string;
  /** The bucket; created at open if missing when createBucket is set. */
  bucket: string;
  /** The region the URLs are signed for ("us-east-1" unless given). Set, so presigning needs no round trip. */
  region?: string;
  /** Create the bucket if it does not exist. */
  createBucket?: boolean;
}

/** A MinIO (or any S3 API) address; parsed and checked by the configuration. */
export type MinioEndpoint = ObjectStoreEndpoint;

/** Parses "http://host:port" or "https://host[:port]" into an endpoint (the configuration's rule). */
export const parseMinioEndpoint = parseEndpoint;

const NOT_FOUND = new Set(["NotFound", "NoSuchKey"]);

function isNotFound(err: unknown): boolean {
  return NOT_FOUND.has(String((err as { code?: unknown }).code));
}

/**
 * Attachments in a MinIO bucket, uploaded and downloaded with SigV4 presigned URLs.
 *
 * Keys: `objects/<id>` (ciphertext), `records/<id>.json` (the binding), `pending/<id>` (a marker
 * holding the creation time while unclaimed, pending.ts), `expiring/<id>` (an empty marker while
 * it is bound to expire with a disappearing message), `claims/<conversation>/<claim time>.<id>`
 * (an empty marker while it is claimed, claims.ts). The binding is a separate small object rather than metadata or tags
 * on the ciphertext, because it must exist before the ciphertext does (the upload URL is handed
 * out first) and S3 metadata can only be set by whoever writes the object.
 *
 * The declared length: a presigned PUT signs the host only, so S3 accepts a body of any length
 * (up to 5 GiB). A presigned POST policy could bound it, but it would give clients a second
 * upload protocol (multipart form) besides the local engine's PUT. Instead the media service
 * checks `statObject`'s size against the record when an object is claimed and on every
 * download, and deletes a mismatch; an unclaimed object goes at the sweep either way. So a
 * wrong-length upload is never served, and costs storage at most until the next check or sweep.
 */
export class MinioObjectStore implements ObjectStore {
  readonly engine = "minio";

  private constructor(
    private readonly client: Client,
    private readonly presigner: Client,
    private readonly bucket: string,
  ) {}

  /** Connects, checking that the bucket exists (or creating it). */
  static async open(options: MinioObjectStoreOptions): Promise<MinioObjectStore> {
    const region = options.region ?? "us-east-1";
    const { Client } = await import("minio");
    const make = (e: MinioEndpoint): Client => {
      const o: ClientOptions = {
        endPoint: e.host,
        port: e.port,
        useSSL: e.useSSL,
        accessKey: options.accessKey,
        secretKey: options.secretKey,
        region,
        pathStyle: true,
      };
      return new Client(o);
    };
    const client = make(options.endpoint);
    const presigner = options.publicEndpoint ? make(options.publicEndpoint) : client;
    if (!(await client.bucketExists(options.bucket))) {
      if (!options.createBucket) throw new Error(`MinIO bucket ${options.bucket} does not exist`);
      await client.makeBucket(options.bucket, region);
    }
    return new MinioObjectStore(client, presigner, options.bucket);
  }

  private async presign(method: "PUT" | "GET", id: string, ttlSeconds: number, nowMs: number) {
    // The request date is the service's clock, so the expiry it reports is the one signed.
    const signedAt = Math.floor(nowMs / 1000) * 1000;
    const url = await this.presigner.presignedUrl(
      method,
      this.bucket,
      `objects/${id}`,
      ttlSeconds,
      {},
      new Date(signedAt),
    );
    return { url, expiresAtMs: signedAt + ttlSeconds * 1000 };
  }

  presignPut(id: string, _lengthBytes: number, ttlSeconds: number, nowMs: number): Promise<PresignedUrl> {
    return this.presign("PUT", id, ttlSeconds, nowMs);
  }

  presignGet(id: string, _lengthBytes: number, ttlSeconds: number, nowMs: number): Promise<PresignedUrl> {
    return this.presign("GET", id, ttlSeconds, nowMs);
  }

  async stat(id: string): Promise<ObjectStat | undefined> {
    try {
      return { lengthBytes: (await this.client.statObject(this.bucket, `objects/${id}`)).size };
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  async delete(id: string): Promise<void> {
    // The claim marker's key is in the record: read before the record goes.
    const record = await this.getRecord(id).catch(() => undefined);
    const claim = record && claimMarker(record);
    // The markers go last: a delete cut short is finished by the next sweep.
    await this.client.removeObject(this.bucket, `objects/${id}`);
    await this.client.removeObject(this.bucket, `records/${id}.json`);
    await this.client.removeObject(this.bucket, `pending/${id}`);
    await this.client.removeObject(this.bucket, `expiring/${id}`);
    if (claim !== undefined) {
      await this.client.removeObject(this.bucket, `claims/${record!.conversationId}/${claim}`);
    }
  }

  async putRecord(record: ObjectRecord): Promise<void> {
    const id = record.objectId;
    // Marker first, as in the local engine: a record is never unclaimed without one.
    if (record.claimedAtMs === 0) {
      const body = Buffer.from(pendingMarkerBody(record));
      await this.client.putObject(this.bucket, `pending/${id}`, body, body.length);
    }
    // Likewise a record that expires always has its marker, so listExpired finds it.
    if ((record.expiresAtMs ?? 0) > 0)
      await this.client.putObject(this.bucket, `expiring/${id}`, Buffer.alloc(0), 0);
    // And a claimed record is always in its conversation's claims, for attachment retention.
    const claim = claimMarker(record);
    if (claim !== undefined) {
      await this.client.putObject(
        this.bucket,
        `claims/${record.conversationId}/${claim}`,
        Buffer.alloc(0),
        0,
      );
    }
    const body = Buffer.from(JSON.stringify(record));
    await this.client.putObject(this.bucket, `records/${id}.json`, body, body.length, {
      "Content-Type": "application/json",
    });
    if (record.claimedAtMs !== 0) await this.client.removeObject(this.bucket, `pending/${id}`);
  }

  async getRecord(id: string): Promise<ObjectRecord | undefined> {
    const text = await this.readText(`records/${id}.json`);
    return text === undefined ? undefined : parseRecord(text);
  }

  /** A small object's content as text, or undefined when there is none. */
  private async readText(key: string): Promise<string | undefined> {
    let stream: Readable;
    try {
      stream = await this.client.getObject(this.bucket, key);
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
    const chunks: Buffer[] = [];
    for await (const chunk of stream) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString("utf8");
  }

  async listUnclaimed(createdBeforeMs: number, limit: number): Promise<ObjectRecord[]> {
    const ids: string[] = [];
    for await (const item of this.client.listObjectsV2(this.bucket, "pending/", true)) {
      const name = (item as { name?: string }).name;
      const id = name?.slice("pending/".length);
      if (id !== undefined && isObjectId(id)) ids.push(id);
    }
    const out: ObjectRecord[] = [];
    for (const id of ids) {
      if (out.length >= limit) break;
      const record = await this.getRecord(id);
      if (record === undefined) {
        // A marker whose record is on its way, was never written (crash) or whose delete was
        // cut short: only the last two are deleted (pending.ts).
        const body = await this.readText(`pending/${id}`);
        if (body !== undefined && isAbandonedPendingMarker(body, createdBeforeMs)) await this.delete(id);
        continue;
      }
      if (record.claimedAtMs !== 0) {
        await this.client.removeObject(this.bucket, `pending/${id}`);
        continue;
      }
      if (record.createdAtMs < createdBeforeMs) out.push(record);
    }
    return out;
  }
  async listExpired(beforeMs: number, limit: number): Promise<ObjectRecord[]> {
    const ids: string[] = [];
    for await (const item of this.client.listObjectsV2(this.bucket, "expiring/", true)) {
      const name = (item as { name?: string }).name;
      const id = name?.slice("expiring/".length);
      if (id !== undefined && isObjectId(id)) ids.push(id);
    }
    const out: ObjectRecord[] = [];
    for (const id of ids) {
      if (out.length >= limit) break;
      const record = await this.getRecord(id);
      // A marker whose record was deleted (a delete cut short): finish it.
      if (record === undefined) await this.delete(id);
      else if ((record.expiresAtMs ?? 0) > 0 && (record.expiresAtMs ?? 0) <= beforeMs) out.push(record);
    }
    return out;
  }

  async listClaimConversations(after: string | undefined, limit: number): Promise<string[]> {
    const out: string[] = [];
    if (limit < 1) return out;
    // Not recursive: one common prefix per conversation, in key order, from after the last one.
    // "~" sorts after the digits every marker name starts with.
    const startAfter = after === undefined ? "" : `claims/${after}/~`;
    for await (const item of this.client.listObjectsV2(this.bucket, "claims/", false, startAfter)) {
      const prefix = (item as { prefix?: string }).prefix;
      const id = prefix?.slice("claims/".length, -1);
      if (id === undefined || !isClaimConversation(id) || (after !== undefined && id <= after)) continue;
      out.push(id);
      if (out.length >= limit) break;
    }
    return out;
  }

  async listClaimed(conversationId: string, claimedBeforeMs: number, limit: number): Promise<ObjectRecord[]> {
    if (!isClaimConversation(conversationId)) return [];
    const folder = `claims/${conversationId}/`;
    const markers: Array<{ name: string; objectId: string }> = [];
    // Keys sort by claim time: the listing stops at the first claim that is not old enough.
    for await (const item of this.client.listObjectsV2(this.bucket, folder, true)) {
      const name = (item as { name?: string }).name?.slice(folder.length) ?? "";
      const marker = parseClaimMarker(name);
      if (marker === undefined) continue;
      if (marker.claimedAtMs >= claimedBeforeMs || markers.length >= limit) break;
      markers.push({ name, objectId: marker.objectId });
    }
    const out: ObjectRecord[] = [];
    for (const { name, objectId } of markers) {
      const record = await this.getRecord(objectId);
      if (isStaleClaimMarker(record, name)) await this.client.removeObject(this.bucket, `${folder}${name}`);
      // Unclaimed yet: a claim in progress wrote the marker first (claims.ts).
      else if (record !== undefined && record.claimedAtMs !== 0) out.push(record);
    }
    return out;
  }

  async close(): Promise<void> {}
}
