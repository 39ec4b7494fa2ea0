import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { type AttachmentPointer, AttachmentPointerSchema } from "../../gen/switchboard/v1/content_pb.js";
import {
  ATTACHMENT_OVERHEAD,
  type AttachmentSecrets,
  decryptAttachment,
  decryptAttachmentFile,
  encryptAttachment,
  encryptAttachmentFile,
} from "../crypto/attachments.js";
import { getObject, putObject } from "../media-http.js";
import type { OutgoingAttachment, SendResult } from "../types.js";
import { messageBody, payloadBytes, sealedContent } from "./bodies.js";
import type { ClientContext } from "./context.js";
import type { Sealer } from "./sealing.js";

/**
 * End-to-end encrypted attachments: encrypted with a fresh key, moved straight to and from the
 * media store through presigned URLs, the key and digest sent inside an encrypted message.
 */
export class Attachments {
  constructor(
    private readonly ctx: ClientContext,
    private readonly sealer: Sealer,
  ) {}

  /** Uploads a file and sends its pointer; see SwitchboardClient.sendAttachment. */
  async send(
    conversationId: string,
    file: OutgoingAttachment,
    options: { caption?: string | Uint8Array; clientMsgId?: string },
  ): Promise<SendResult & { attachment: AttachmentPointer }> {
    this.ctx.requireE2ee();
    const attachment = await this.upload(conversationId, file);
    const caption = options.caption === undefined ? new Uint8Array() : payloadBytes(options.caption);
    const result = await this.sealer.send(
      conversationId,
      sealedContent(conversationId, { case: "message", value: {} }, caption, [attachment]),
      options.clientMsgId,
      messageBody,
    );
    try {
      await this.ctx.conn.media.claimUpload({ objectId: attachment.objectId, conversationId });
    } catch (err) {
      // The message is sent; a recipient's first download claims the object too.
      this.ctx.events.reportError(err, Code.Unknown);
    }
    return { ...result, attachment };
  }

  /** Encrypts and uploads a file; see SwitchboardClient.uploadAttachment. */
  async upload(conversationId: string, file: OutgoingAttachment): Promise<AttachmentPointer> {
    const fileName = file.fileName ?? (file.path !== undefined ? basename(file.path) : "");
    const pointer = (objectId: string, secrets: AttachmentSecrets) =>
      create(AttachmentPointerSchema, {
        objectId,
        key: secrets.key,
        digest: secrets.digest,
        sizeBytes: BigInt(secrets.size - ATTACHMENT_OVERHEAD),
        ciphertextBytes: BigInt(secrets.size),
        fileName,
        contentType: file.contentType ?? "",
      });
    if (file.data !== undefined) {
      const sealed = encryptAttachment(file.data);
      const upload = await this.createUpload(conversationId, sealed.size);
      await putObject(upload.uploadUrl, sealed.ciphertext, sealed.size);
      return pointer(upload.objectId, sealed);
    }
    if (file.path === undefined)
      throw new ConnectError("an attachment needs data or a path", Code.InvalidArgument);
    const dir = await mkdtemp(join(tmpdir(), "switchboard-upload-"));
    try {
      const encrypted = join(dir, "ciphertext");
      const secrets = await encryptAttachmentFile(file.path, encrypted);
      const upload = await this.createUpload(conversationId, secrets.size);
      await putObject(upload.uploadUrl, { path: encrypted }, secrets.size);
      return pointer(upload.objectId, secrets);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** Downloads, checks and decrypts an attachment; see SwitchboardClient.downloadAttachment. */
  async download(
    conversationId: string,
    attachment: AttachmentPointer,
    options?: { path: string },
  ): Promise<Uint8Array | undefined> {
    const download = await this.ctx.conn.media.createDownload({
      objectId: attachment.objectId,
      conversationId,
    });
    if (options === undefined) {
      const ciphertext = (await getObject(download.downloadUrl)) as Uint8Array;
      return decryptAttachment(ciphertext, attachment.key, attachment.digest);
    }
    const dir = await mkdtemp(join(tmpdir(), "switchboard-download-"));
    try {
      const encrypted = join(dir, "ciphertext");
      await getObject(download.downloadUrl, { path: encrypted });
      await decryptAttachmentFile(encrypted, options.path, attachment.key, attachment.digest);
      return undefined;
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  private createUpload(conversationId: string, length: number) {
    return this.ctx.conn.media.createUpload({ conversationId, lengthBytes: BigInt(length) });
  }
}
