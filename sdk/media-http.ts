import { createReadStream, createWriteStream } from "node:fs";
import { request as httpRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import { pipeline } from "node:stream/promises";
import { Code, ConnectError } from "@connectrpc/connect";

// Transfers to and from the media store's presigned URLs. node:http rather than fetch: a PUT
// must carry its exact Content-Length (S3 and the local engine refuse chunked uploads), which
// fetch does not let a caller set for a streamed body.

function send(
  url: string,
  method: "GET" | "PUT",
  length?: number,
): {
  req: ReturnType<typeof httpRequest>;
  response: Promise<IncomingMessage>;
} {
  const target = new URL(url);
  const request = target.protocol === "https:" ? httpsRequest : httpRequest;
  const headers: Record<string, string> =
    length === undefined
      ? {}
      : { "content-length": String(length), "content-type": "application/octet-stream" };
  const req = request(target, { method, headers });
  const response = new Promise<IncomingMessage>((resolve, reject) => {
    req.once("response", resolve);
    req.once("error", reject);
  });
  return { req, response };
}

async function refused(res: IncomingMessage, what: string): Promise<ConnectError> {
  let detail = "";
  for await (const chunk of res) if (detail.length < 300) detail += String(chunk);
  const status = res.statusCode ?? 0;
  return new ConnectError(
    `the media store refused the ${what}: HTTP ${status} ${detail.slice(0, 300)}`.trim(),
    status >= 500 ? Code.Unavailable : Code.FailedPrecondition,
  );
}

function unreachable(what: string, err: unknown): ConnectError {
  return new ConnectError(`the attachment ${what} failed: ${String(err)}`, Code.Unavailable);
}

/** PUTs bytes, or a file's contents streamed, of exactly `length` bytes. */
export async function putObject(
  url: string,
  body: Uint8Array | { path: string },
  length: number,
): Promise<void> {
  const { req, response } = send(url, "PUT", length);
  const writing =
    body instanceof Uint8Array
      ? new Promise<void>((resolve) => req.end(body, resolve))
      : pipeline(createReadStream(body.path), req);
  // A store that refuses early answers before the body is written; its answer is what counts.
  writing.catch(() => {});
  try {
    const res = await response;
    if ((res.statusCode ?? 0) >= 300) throw await refused(res, "upload");
    res.resume();
    await writing;
  } catch (err) {
    req.destroy();
    throw err instanceof ConnectError ? err : unreachable("upload", err);
  }
}

/**
 * GETs an object into memory, or streamed into a file. With `maxBytes`, a body longer than that
 * is cut off and refused (RESOURCE_EXHAUSTED): a store that sends more than it announced cannot
 * make the device hold it.
 */
export async function getObject(
  url: string,
  into?: { path: string },
  maxBytes?: number,
): Promise<Uint8Array | undefined> {
  const { req, response } = send(url, "GET");
  req.end();
  try {
    const res = await response;
    if ((res.statusCode ?? 0) >= 300) throw await refused(res, "download");
    if (into !== undefined) {
      await pipeline(res, createWriteStream(into.path, { mode: 0o600 }));
      return undefined;
    }
    const chunks: Buffer[] = [];
    let length = 0;
    for await (const chunk of res) {
      length += (chunk as Buffer).length;
      if (maxBytes !== undefined && length > maxBytes) {
        throw new ConnectError(
          `the media store sent more than the ${maxBytes} bytes expected; refused`,
          Code.ResourceExhausted,
        );
      }
      chunks.push(chunk as Buffer);
    }
    return new Uint8Array(Buffer.concat(chunks));
  } catch (err) {
    req.destroy();
    throw err instanceof ConnectError ? err : unreachable("download", err);
  }
}
