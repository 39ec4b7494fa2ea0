import type { IncomingMessage, ServerResponse } from "node:http";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import type { MediaService } from "../../gen/switchboard/v1/media_pb.js";
import type { Principal } from "../common/auth.js";
import { InvalidInputError, UnimplementedError } from "../common/errors.js";
import type { Logger } from "../common/log.js";
import { requireId } from "../common/validate.js";
import type { AvatarRules } from "./avatars.js";
import { LOCAL_OBJECTS_PATH, type LocalObjectStore } from "./local.js";
import type { Media } from "./media.js";
import { isObjectId } from "./types.js";

/** Establishes who a call acts for from its `authorization` header; throws Unauthenticated. */
export type Authenticate = (authorization: string | null) => Promise<Principal>;

/** Objects one DeleteAttachments names at most (a message's attachments, with room to spare). */
const MAX_DELETED_ATTACHMENTS = 32;

function requireObjectId(value: string): string {
  if (!isObjectId(value)) throw new InvalidInputError("object_id: not a valid object id");
  return value;
}

/**
 * The public MediaService. It authenticates every call itself (a gateway's GatewayCore.authenticate,
 * or the token key plus a device check where no gateway runs), so it can be served anywhere.
 */
export function mediaService(
  media: Media,
  authenticate: Authenticate,
  avatars?: AvatarRules,
): ServiceImpl<typeof MediaService> {
  const principal = (ctx: HandlerContext) => authenticate(ctx.requestHeader.get("authorization"));
  // Avatars need the accounts service's directory; a media service built without one says so.
  const avatarRules = (): AvatarRules => {
    if (avatars === undefined) throw new UnimplementedError("this media service does not serve avatars");
    return avatars;
  };
  return {
    async createUpload(req, ctx) {
      const p = await principal(ctx);
      const conversationId = requireId("conversation_id", req.conversationId, "conversation");
      const u = await media.createUpload(p.userId, conversationId, req.lengthBytes);
      return {
        objectId: u.objectId,
        uploadUrl: u.uploadUrl,
        expiresAtMs: BigInt(u.expiresAtMs),
        claimByMs: BigInt(u.claimByMs),
      };
    },
    async claimUpload(req, ctx) {
      const p = await principal(ctx);
      const objectId = requireObjectId(req.objectId);
      const conversationId = requireId("conversation_id", req.conversationId, "conversation");
      const r = await media.claimUpload(p.userId, objectId, conversationId);
      return { lengthBytes: BigInt(r.lengthBytes) };
    },
    async deleteAttachments(req, ctx) {
      const p = await principal(ctx);
      const conversationId = requireId("conversation_id", req.conversationId, "conversation");
      const ids = req.objectIds;
      if (ids.length < 1 || ids.length > MAX_DELETED_ATTACHMENTS) {
        throw new InvalidInputError(
          `object_ids: between 1 and ${MAX_DELETED_ATTACHMENTS} ids, got ${ids.length}`,
        );
      }
      for (const id of ids) requireObjectId(id);
      if (new Set(ids).size !== ids.length) throw new InvalidInputError("object_ids: duplicates");
      return { deletedObjectIds: await media.deleteAttachments(p.userId, conversationId, ids) };
    },
    async createDownload(req, ctx) {
      const p = await principal(ctx);
      const objectId = requireObjectId(req.objectId);
      const conversationId = requireId("conversation_id", req.conversationId, "conversation");
      const d = await media.createDownload(p.userId, objectId, conversationId);
      return {
        downloadUrl: d.downloadUrl,
        expiresAtMs: BigInt(d.expiresAtMs),
        lengthBytes: BigInt(d.lengthBytes),
      };
    },
    async createAvatarUpload(req, ctx) {
      const p = await principal(ctx);
      const u = await avatarRules().createUpload(p.userId, req.lengthBytes);
      return {
        objectId: u.objectId,
        uploadUrl: u.uploadUrl,
        expiresAtMs: BigInt(u.expiresAtMs),
        claimByMs: BigInt(u.claimByMs),
      };
    },
    async setAvatar(req, ctx) {
      const p = await principal(ctx);
      const objectId = requireObjectId(req.objectId);
      return { lengthBytes: BigInt(await avatarRules().set(p.userId, objectId)) };
    },
    async removeAvatar(_req, ctx) {
      const p = await principal(ctx);
      return { removed: await avatarRules().remove(p.userId) };
    },
    async getAvatar(req, ctx) {
      const p = await principal(ctx);
      const owner = requireId("user_id", req.userId, "u");
      const d = await avatarRules().get(p.userId, owner);
      return {
        objectId: d.objectId,
        downloadUrl: d.downloadUrl,
        expiresAtMs: BigInt(d.expiresAtMs),
        lengthBytes: BigInt(d.lengthBytes),
      };
    },
  };
}

/**
 * The HTTP/1.1 handler for the local engine's presigned URLs (`/media/v1/objects/<id>`), for
 * `http.createServer`. Anything else is 404. A fault is logged and answered 500 without detail.
 */
export function localObjectsHttpHandler(
  store: LocalObjectStore,
  log: Logger,
): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    if (!(req.url ?? "").startsWith(LOCAL_OBJECTS_PATH)) {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
      req.resume();
      return;
    }
    store.serve(req, res).catch((err: unknown) => {
      log.error({ err, method: req.method }, "media request failed");
      if (!res.headersSent) res.writeHead(500, { "content-type": "text/plain", connection: "close" });
      res.end("internal error\n");
      req.resume();
    });
  };
}
