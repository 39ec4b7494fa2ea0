import { createPrivateKey, type KeyObject } from "node:crypto";
import type { OutgoingHttpHeaders } from "node:http2";
import type { PushOutcome } from "../types.js";
import { type Answer, errorText, h2Request, isAnswer, SessionPool } from "./http2.js";

// What the APNs and FCM providers share: both POST one JSON request per push over a pooled HTTP/2
// session, authorized by a bearer token they mint from a private key and reuse until it is due
// for renewal, and both retry a push once with a fresh token when the answer says the token was
// stale. Only the token (a self-signed JWT for APNs, an OAuth2 access token for FCM), the request
// and the reading of the answer differ.

/**
 * Parses a provider's PEM private key at construction, so a broken key file is a start-up error
 * rather than a failure on every push. `provider` names it in the message ("APNs", "FCM").
 */
export function parsePrivateKey(provider: string, pem: string): KeyObject {
  try {
    return createPrivateKey(pem);
  } catch (e) {
    throw new Error(
      `${provider}: privateKey is not a PEM private key (${e instanceof Error ? e.message : String(e)})`,
    );
  }
}

/** A token as its issuer hands it over. */
export interface IssuedToken {
  /** The bearer token. */
  value: string;
  /** When to stop reusing it and mint another, in milliseconds since the epoch. */
  refreshAtMs: number;
}

/**
 * One bearer token reused by every send until its refresh time; when it is due, one issue call
 * is shared by every send waiting for it (a token per push would hit the issuer's rate limits).
 */
export class TokenCache {
  private cached: IssuedToken | undefined;
  private pending: Promise<string> | undefined;

  /**
   * `issue` mints a token (it may reject; the rejection reaches every waiting send). `now` is the
   * clock, in milliseconds since the epoch.
   */
  constructor(
    private readonly issue: () => Promise<IssuedToken>,
    private readonly now: () => number,
  ) {}

  /** The current token, or the one being issued. */
  get(): Promise<string> {
    if (this.cached !== undefined && this.now() < this.cached.refreshAtMs) {
      return Promise.resolve(this.cached.value);
    }
    this.pending ??= this.issue()
      .then((token) => {
        this.cached = token;
        return token.value;
      })
      .finally(() => {
        this.pending = undefined;
      });
    return this.pending;
  }

  /** Drops the token only if it is still the current one: concurrent refusals share one refresh. */
  forget(value: string): void {
    if (this.cached?.value === value) this.cached = undefined;
  }
}

/** How a token-authorized provider talks to its service. */
export interface TokenAuthorizedClientOptions {
  /** Names the service in outcomes ("APNs", "FCM"). */
  service: string;
  /** The provider's token cache. */
  tokens: TokenCache;
  /** The outcome of a push for which no token could be had (the issuer's error). */
  tokenFailure: (err: unknown) => PushOutcome;
  /** Per request, including connecting, in milliseconds. */
  timeoutMs: number;
}

/** The HTTP/2 side of a token-authorized push provider: sessions, the token, one retry. */
export class TokenAuthorizedClient {
  private readonly sessions = new SessionPool();
  private isClosed = false;

  constructor(private readonly options: TokenAuthorizedClientOptions) {}

  /** True once close has been called: sends answer retry without a request. */
  get closed(): boolean {
    return this.isClosed;
  }

  /**
   * POSTs body to origin with the headers `headersFor(token)` builds. When `stale(answer)` says
   * the service refused the token itself (expired early, revoked, clock skew), the token is
   * dropped and the push sent once more with a fresh one; a token the service still refuses is
   * the answer. Returns the service's answer, or the outcome that ended the push before one
   * (no token, unreachable).
   */
  async post(
    origin: string,
    headersFor: (token: string) => OutgoingHttpHeaders,
    body: string,
    stale: (answer: Answer) => boolean,
  ): Promise<Answer | PushOutcome> {
    let token: string;
    try {
      token = await this.options.tokens.get();
    } catch (e) {
      return this.options.tokenFailure(e);
    }
    const answer = await this.request(origin, headersFor(token), body);
    if (!isAnswer(answer) || !stale(answer)) return answer;
    this.options.tokens.forget(token);
    try {
      token = await this.options.tokens.get();
    } catch (e) {
      return this.options.tokenFailure(e);
    }
    return this.request(origin, headersFor(token), body);
  }

  /** Closes the sessions; later sends answer retry. */
  async close(): Promise<void> {
    this.isClosed = true;
    await this.sessions.close();
  }

  private async request(
    origin: string,
    headers: OutgoingHttpHeaders,
    body: string,
  ): Promise<Answer | PushOutcome> {
    try {
      return await h2Request(this.sessions, origin, headers, body, this.options.timeoutMs);
    } catch (e) {
      return { status: "retry", reason: `${this.options.service} unreachable: ${errorText(e)}` };
    }
  }
}
