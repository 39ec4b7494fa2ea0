import {
  type ClientHttp2Session,
  connect,
  constants,
  type IncomingHttpHeaders,
  type OutgoingHttpHeaders,
} from "node:http2";
import type { PushOutcome } from "../types.js";

// HTTP/2 plumbing shared by the FCM and APNs providers. Each provider owns its own SessionPool.

/** A whole HTTP/2 answer, its body cut at the caller's limit. */
export interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

export function isAnswer(value: Answer | PushOutcome): value is Answer {
  return typeof value.status === "number";
}

/**
 * One HTTP/2 session per origin, reused by every send: Apple treats a connection per push as a
 * denial-of-service attack, and Google multiplexes too. A closed or refused one is replaced.
 */
export class SessionPool {
  private readonly sessions = new Map<string, ClientHttp2Session>();

  get(origin: string): ClientHttp2Session {
    const existing = this.sessions.get(origin);
    if (existing !== undefined && !existing.closed && !existing.destroyed) return existing;
    const session = connect(origin);
    // Connection errors reach the streams waiting on the session; this only keeps an unheard
    // 'error' from crashing the process.
    session.on("error", () => {});
    const drop = () => {
      if (this.sessions.get(origin) === session) this.sessions.delete(origin);
    };
    // After GOAWAY the session takes no new streams, so the next send must open another.
    session.on("goaway", drop);
    session.on("close", drop);
    this.sessions.set(origin, session);
    return session;
  }

  /** A timed-out request may mean a dead connection; a ping that goes unanswered proves it. */
  probe(session: ClientHttp2Session, timeoutMs: number): void {
    if (session.destroyed) return;
    if (session.connecting) {
      session.destroy();
      return;
    }
    const timer = setTimeout(() => session.destroy(), timeoutMs);
    timer.unref();
    const sent = session.ping((err) => {
      clearTimeout(timer);
      if (err !== null) session.destroy();
    });
    if (!sent) {
      clearTimeout(timer);
      session.destroy();
    }
  }

  async close(): Promise<void> {
    const sessions = [...this.sessions.values()];
    this.sessions.clear();
    await Promise.all(
      sessions.map(
        (session) =>
          new Promise<void>((resolve) => {
            if (session.destroyed) resolve();
            else session.close(() => resolve());
          }),
      ),
    );
  }
}

/**
 * One request on the origin's pooled session; rejects on timeout, reset or connection failure.
 * Error bodies are short; anything past maxBodyBytes is not worth buffering.
 */
export function h2Request(
  pool: SessionPool,
  origin: string,
  headers: OutgoingHttpHeaders,
  body: string,
  timeoutMs: number,
  maxBodyBytes = 64 * 1024,
): Promise<Answer> {
  return new Promise<Answer>((resolve, reject) => {
    const session = pool.get(origin);
    let stream: ReturnType<ClientHttp2Session["request"]>;
    try {
      stream = session.request(headers);
    } catch (e) {
      reject(e);
      return;
    }
    let status = 0;
    let responseHeaders: IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    let size = 0;
    const timer = setTimeout(() => {
      reject(new Error(`no answer within ${timeoutMs} ms`));
      stream.close(constants.NGHTTP2_CANCEL);
      pool.probe(session, timeoutMs);
    }, timeoutMs);
    stream.on("response", (h) => {
      status = Number(h[constants.HTTP2_HEADER_STATUS]);
      responseHeaders = h;
    });
    stream.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size <= maxBodyBytes) chunks.push(chunk);
    });
    stream.on("end", () => {
      clearTimeout(timer);
      resolve({ status, headers: responseHeaders, body: Buffer.concat(chunks).toString("utf8") });
    });
    stream.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    stream.on("close", () => {
      clearTimeout(timer);
      // Settles only if neither 'end' nor 'error' did: a reset without an error event.
      reject(new Error(`stream closed without an answer (HTTP/2 code ${stream.rstCode})`));
    });
    stream.end(body);
  });
}

export function header(headers: IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** An error as one line, with its code and, for fetch failures, the underlying cause. */
export function errorText(e: unknown): string {
  if (!(e instanceof Error)) return String(e);
  const code = (e as NodeJS.ErrnoException).code;
  const text = code !== undefined && !e.message.includes(code) ? `${code} ${e.message}` : e.message;
  // fetch reports every network failure as "fetch failed" and keeps the reason in cause.
  return e.cause !== undefined ? `${text} (${errorText(e.cause)})` : text;
}
