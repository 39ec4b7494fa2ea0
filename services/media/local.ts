import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { createWriteStream } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { link, mkdir, open, readdir, readFile, rm, stat, unlink } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import { join } from "node:path";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { syncDirectory, syncFile, writeFileDurably } from "../common/durable-file.js";
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

/** The path under which the local engine's URLs are served. */
export const LOCAL_OBJECTS_PATH = "/media/v1/objects/";

/** Options for the local engine. */
export interface LocalObjectStoreOptions {
  /** The directory holding objects and records (created if missing). */
  dir: string;
  /** Where clients reach the media HTTP server, e.g. "https://media.example.com"; no trailing slash. */
  publicBaseUrl: string;
  /** The URL signing key, at least 32 bytes. */
  urlKey: Uint8Array;
  /** The clock, in milliseconds since the Unix epoch; Date.now by default. */
  now?: () => number;
}

/** Why an HTTP request for an object was refused. */
class Refusal extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Attachments in a directory, served over HTTP by the media service itself.
 *
 * Layout: `objects/<id>` (ciphertext), `records/<id>.json` (the binding), `pending/<id>` (a marker
 * holding the creation time while unclaimed, so the sweep lists only those, pending.ts),
 * `expiring/<id>` (a marker while it is bound to expire), `claims/<conversation>/<claim
 * time>.<id>` (a marker while it is claimed, claims.ts), `tmp/` (uploads in flight). Every file
 * is written to tmp/, fsync'd and then renamed (records) or hard-linked (objects, so a second
 * upload to the same id can never replace the first) into place.
 *
 * URLs are `<base>/media/v1/objects/<id>?len=<bytes>&exp=<ms>&sig=<hmac>`, where sig is
 * base64url(HMAC-SHA256(key, "<METHOD>\n<id>\n<len>\n<exp>")), compared in constant time. The
 * declared length is enforced while the body streams: a longer body is cut off at len + 1
 * bytes, a shorter one is refused when it ends, and neither leaves anything behind.
 */
export class LocalObjectStore implements ObjectStore {
  readonly engine = "local";
  private readonly now: () => number;

  private constructor(private readonly options: LocalObjectStoreOptions) {
    this.now = options.now ?? Date.now;
  }

  /** Opens (creating) the directory. Leftovers of uploads cut short by a crash are removed. */
  static async open(options: LocalObjectStoreOptions): Promise<LocalObjectStore> {
    if (options.urlKey.length < 32) throw new Error("media URL key must be at least 32 bytes");
    const store = new LocalObjectStore(options);
    await rm(join(options.dir, "tmp"), { recursive: true, force: true });
    for (const sub of ["objects", "records", "pending", "expiring", "claims", "tmp"]) {
      await mkdir(join(options.dir, sub), { recursive: true });
    }
    return store;
  }

  private objectPath(id: string): string {
    return join(this.options.dir, "objects", id);
  }
  private recordPath(id: string): string {
    return join(this.options.dir, "records", `${id}.json`);
  }
  private pendingPath(id: string): string {
    return join(this.options.dir, "pending", id);
  }
  private expiringPath(id: string): string {
    return join(this.options.dir, "expiring", id);
  }
  private claimsDir(conversationId: string): string {
    return join(this.options.dir, "claims", conversationId);
  }
  private tmpPath(id: string): string {
    return join(this.options.dir, "tmp", `${id}.${randomBytes(6).toString("hex")}`);
  }

  private sign(method: string, id: string, len: number, exp: number): Buffer {
    return createHmac("sha256", this.options.urlKey).update(`${method}\n${id}\n${len}\n${exp}`).digest();
  }

  private url(
    method: "PUT" | "GET",
    id: string,
    len: number,
    ttlSeconds: number,
    nowMs: number,
  ): PresignedUrl {
    const exp = nowMs + ttlSeconds * 1000;
    const sig = this.sign(method, id, len, exp).toString("base64url");
    return {
      url: `${this.options.publicBaseUrl}${LOCAL_OBJECTS_PATH}${id}?len=${len}&exp=${exp}&sig=${sig}`,
      expiresAtMs: exp,
    };
  }

  async presignPut(
    id: string,
    lengthBytes: number,
    ttlSeconds: number,
    nowMs: number,
  ): Promise<PresignedUrl> {
    return this.url("PUT", id, lengthBytes, ttlSeconds, nowMs);
  }

  async presignGet(
    id: string,
    lengthBytes: number,
    ttlSeconds: number,
    nowMs: number,
  ): Promise<PresignedUrl> {
    return this.url("GET", id, lengthBytes, ttlSeconds, nowMs);
  }

  async stat(id: string): Promise<ObjectStat | undefined> {
    if (!isObjectId(id)) return undefined;
    try {
      return { lengthBytes: (await stat(this.objectPath(id))).size };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
  }

  async delete(id: string): Promise<void> {
    if (!isObjectId(id)) return;
    // The claim marker's name is in the record: read before the record goes.
    const record = await this.getRecord(id).catch(() => undefined);
    const claim = record && claimMarker(record);
    // The markers go last: a crash part-way leaves them, and the sweeps finish the job.
    await rm(this.objectPath(id), { force: true });
    await rm(this.recordPath(id), { force: true });
    await rm(this.pendingPath(id), { force: true });
    await rm(this.expiringPath(id), { force: true });
    if (claim !== undefined) await rm(join(this.claimsDir(record!.conversationId), claim), { force: true });
  }

  async putRecord(record: ObjectRecord): Promise<void> {
    const id = record.objectId;
    if (!isObjectId(id)) throw new Error("not an object id");
    // Marker before record: a crash between the two leaves a marker, which the sweep clears;
    // the other order could leave an unclaimed record nothing would ever sweep.
    if (record.claimedAtMs === 0) {
      await writeFileDurably(this.pendingPath(id), pendingMarkerBody(record), this.tmpPath(id));
    }
    // Likewise a record that expires always has its marker, so listExpired finds it.
    if ((record.expiresAtMs ?? 0) > 0) await writeFileDurably(this.expiringPath(id), "", this.tmpPath(id));
    // And a claimed record is always in its conversation's claims, for attachment retention.
    const claim = claimMarker(record);
    if (claim !== undefined) {
      const dir = this.claimsDir(record.conversationId);
      await mkdir(dir, { recursive: true });
      await writeFileDurably(join(dir, claim), "", this.tmpPath(id));
    }
    await writeFileDurably(this.recordPath(id), JSON.stringify(record), this.tmpPath(id));
    if (record.claimedAtMs !== 0) await rm(this.pendingPath(id), { force: true });
  }

  async getRecord(id: string): Promise<ObjectRecord | undefined> {
    if (!isObjectId(id)) return undefined;
    try {
      return parseRecord(await readFile(this.recordPath(id), "utf8"));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
  }

  async listUnclaimed(createdBeforeMs: number, limit: number): Promise<ObjectRecord[]> {
    const out: ObjectRecord[] = [];
    for (const id of await readdir(join(this.options.dir, "pending"))) {
      if (out.length >= limit) break;
      if (!isObjectId(id)) continue;
      const record = await this.getRecord(id);
      if (record === undefined) {
        // A marker whose record is on its way, was never written (crash) or whose delete was
        // cut short: only the last two are deleted (pending.ts).
        const body = await readFile(this.pendingPath(id), "utf8").catch((err: NodeJS.ErrnoException) => {
          if (err.code === "ENOENT") return undefined;
          throw err;
        });
        if (body !== undefined && isAbandonedPendingMarker(body, createdBeforeMs)) await this.delete(id);
        continue;
      }
      if (record.claimedAtMs !== 0) {
        await rm(this.pendingPath(id), { force: true });
        continue;
      }
      if (record.createdAtMs < createdBeforeMs) out.push(record);
    }
    return out;
  }

  async listExpired(beforeMs: number, limit: number): Promise<ObjectRecord[]> {
    const out: ObjectRecord[] = [];
    for (const id of await readdir(join(this.options.dir, "expiring"))) {
      if (out.length >= limit) break;
      if (!isObjectId(id)) continue;
      const record = await this.getRecord(id);
      // A marker whose record was deleted (a delete cut short): finish it.
      if (record === undefined) await this.delete(id);
      else if ((record.expiresAtMs ?? 0) > 0 && (record.expiresAtMs ?? 0) <= beforeMs) out.push(record);
    }
    return out;
  }

  async listClaimConversations(after: string | undefined, limit: number): Promise<string[]> {
    const names = (await readdir(join(this.options.dir, "claims"))).filter(
      (n) => isClaimConversation(n) && (after === undefined || n > after),
    );
    return names.sort().slice(0, Math.max(0, limit));
  }

  async listClaimed(conversationId: string, claimedBeforeMs: number, limit: number): Promise<ObjectRecord[]> {
    if (!isClaimConversation(conversationId)) return [];
    const dir = this.claimsDir(conversationId);
    let names: string[];
    try {
      names = (await readdir(dir)).sort();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw err;
    }
    // A folder whose claims all went stays: removing it could race a claim writing into it.
    const out: ObjectRecord[] = [];
    for (const name of names) {
      if (out.length >= limit) break;
      const marker = parseClaimMarker(name);
      if (marker === undefined) continue;
      // Names sort by claim time: the rest are later.
      if (marker.claimedAtMs >= claimedBeforeMs) break;
      const record = await this.getRecord(marker.objectId);
      if (isStaleClaimMarker(record, name)) await rm(join(dir, name), { force: true });
      // Unclaimed yet: a claim in progress wrote the marker first (claims.ts).
      else if (record !== undefined && record.claimedAtMs !== 0) out.push(record);
    }
    return out;
  }

  async close(): Promise<void> {}

  /**
   * Serves one request for `/media/v1/objects/<id>`: PUT stores, GET (and HEAD) serve. Answers
   * 403 for a bad or expired signature, 404 for an unknown object, 409 when an object is already
   * stored, 413 or 400 for a body longer or shorter than the signed length.
   */
  async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const url = new URL(req.url ?? "/", "http://media.invalid");
      if (!url.pathname.startsWith(LOCAL_OBJECTS_PATH)) throw new Refusal(404, "not found");
      const id = url.pathname.slice(LOCAL_OBJECTS_PATH.length);
      if (!isObjectId(id)) throw new Refusal(404, "not found");
      const method = req.method === "HEAD" ? "GET" : req.method;
      if (method !== "PUT" && method !== "GET") throw new Refusal(405, "method not allowed");
      const len = this.verify(method, id, url.searchParams);
      if (method === "PUT") await this.receive(id, len, req);
      else await this.send(id, len, req, res);
      if (method === "PUT") res.writeHead(200, { "content-type": "text/plain" }).end("stored\n");
    } catch (err) {
      if (!(err instanceof Refusal)) throw err;
      if (res.headersSent) {
        res.destroy();
        return;
      }
      // An unread body is not worth keeping the connection for.
      const unread = !req.readableEnded;
      res.writeHead(err.status, {
        "content-type": "text/plain",
        ...(unread ? { connection: "close" } : {}),
      });
      res.end(`${err.message}\n`);
      if (unread) req.resume();
    }
  }

  /** Checks a URL's signature and expiry; returns the signed length. */
  private verify(method: string, id: string, params: URLSearchParams): number {
    const len = params.get("len") ?? "";
    const exp = params.get("exp") ?? "";
    const sig = params.get("sig") ?? "";
    if (!/^\d{1,15}$/.test(len) || !/^\d{1,15}$/.test(exp) || !/^[A-Za-z0-9_-]{43}$/.test(sig)) {
      throw new Refusal(403, "malformed signed URL");
    }
    const expected = this.sign(method, id, Number(len), Number(exp));
    const given = Buffer.from(sig, "base64url");
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      throw new Refusal(403, "signature does not match");
    }
    if (this.now() >= Number(exp)) throw new Refusal(403, "URL has expired");
    return Number(len);
  }

  private async receive(id: string, len: number, req: IncomingMessage): Promise<void> {
    const record = await this.getRecord(id);
    if (record === undefined) throw new Refusal(404, "no such upload (expired or never created)");
    if (record.lengthBytes !== len) throw new Refusal(403, "URL does not match the upload");
    if ((await this.stat(id)) !== undefined) throw new Refusal(409, "object already uploaded");
    const declared = req.headers["content-length"];
    if (declared !== undefined) {
      const n = Number(declared);
      if (n > len) throw new Refusal(413, `body is ${n} bytes; this upload takes exactly ${len}`);
      if (n < len) throw new Refusal(400, `body is ${n} bytes; this upload takes exactly ${len}`);
    }
    const tmp = this.tmpPath(id);
    let received = 0;
    const counter = new Transform({
      transform(chunk: Buffer, _enc, done) {
        received += chunk.length;
        if (received > len) done(new Refusal(413, `body is longer than the ${len} bytes of this upload`));
        else done(null, chunk);
      },
    });
    // req is piped in rather than made part of the pipeline, so a refusal stops writing without
    // destroying the request, and the refusal can still be answered.
    req.pipe(counter);
    const onClose = () => {
      if (!req.complete) counter.destroy(new Refusal(400, "upload interrupted"));
    };
    req.once("close", onClose);
    try {
      await pipeline(counter, createWriteStream(tmp, { flags: "wx", mode: 0o600 }));
      if (received < len) {
        throw new Refusal(400, `body is ${received} bytes; this upload takes exactly ${len}`);
      }
      await syncFile(tmp);
      try {
        await link(tmp, this.objectPath(id));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "EEXIST")
          throw new Refusal(409, "object already uploaded");
        throw err;
      }
      await syncDirectory(join(this.options.dir, "objects"));
    } finally {
      req.off("close", onClose);
      req.unpipe(counter);
      await unlink(tmp).catch(() => {});
    }
  }

  private async send(id: string, len: number, req: IncomingMessage, res: ServerResponse): Promise<void> {
    let file: FileHandle;
    try {
      file = await open(this.objectPath(id), "r");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") throw new Refusal(404, "no such object");
      throw err;
    }
    try {
      const size = (await file.stat()).size;
      if (size !== len) throw new Refusal(404, "no such object");
      res.writeHead(200, {
        "content-type": "application/octet-stream",
        "content-length": String(size),
        "cache-control": "private, no-store",
      });
      if (req.method === "HEAD") {
        res.end();
        return;
      }
      // The stream closes the file when it ends.
      await pipeline(file.createReadStream(), res);
    } finally {
      await file.close().catch(() => {});
    }
  }
}
