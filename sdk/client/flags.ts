/**
 * Feature flags (AccountService.GetFeatureFlags): the server assigns this user one variant of
 * each configured flag, the same on every device; the client keeps the answer for the time the
 * server says (cache_seconds, at most MAX_CACHE_MS here) and asks again after it.
 */
import type { ServerConnection } from "../transport.js";

/** Flags kept at most (the server's bound: services/common/config/flags.ts). */
export const MAX_FLAGS = 256;
/** The longest the client keeps assignments, whatever the server says, in milliseconds. */
export const MAX_CACHE_MS = 24 * 3_600_000;

/** `client.flags`: this user's feature flag variants, cached. */
export class FeatureFlags {
  private cached: { variants: Map<string, string>; expiresAtMs: number } | undefined;
  private inFlight: Promise<Map<string, string>> | undefined;

  constructor(
    private readonly conn: Pick<ServerConnection, "accounts">,
    /** The clock, in milliseconds since the Unix epoch. */
    private readonly now: () => number = Date.now,
  ) {}

  /** Every flag's variant for this user, by flag name (from the cache while it is fresh). */
  async all(): Promise<ReadonlyMap<string, string>> {
    const cached = this.cached;
    if (cached !== undefined && this.now() < cached.expiresAtMs) return cached.variants;
    // Callers at the same moment share one request.
    this.inFlight ??= this.fetch().finally(() => {
      this.inFlight = undefined;
    });
    return this.inFlight;
  }

  /** This user's variant of one flag; undefined when the server has no such flag. */
  async variant(flag: string): Promise<string | undefined> {
    return (await this.all()).get(flag);
  }

  /** Drops the cache: the next read asks the server. */
  invalidate(): void {
    this.cached = undefined;
  }

  private async fetch(): Promise<Map<string, string>> {
    const res = await this.conn.accounts.getFeatureFlags({});
    const variants = new Map<string, string>();
    for (const a of res.assignments.slice(0, MAX_FLAGS)) variants.set(a.flag, a.variant);
    const ttlMs = Math.min(res.cacheSeconds * 1000, MAX_CACHE_MS);
    this.cached = { variants, expiresAtMs: this.now() + ttlMs };
    return variants;
  }
}
