import { join } from "node:path";
import { before } from "node:test";
import { SwitchboardClient } from "../../sdk/client.js";
import type { ClientTuning } from "../../sdk/types.js";
import { TempServerSuite } from "./fixture.js";

/** Quick reconnects, so tests that restart things do not wait out the production backoff. */
export const TEST_TUNING: ClientTuning = { backoffBaseMs: 20, backoffCapMs: 200 };

/**
 * SDK devices of one test server, each with its own profile under `base`, end-to-end encrypted
 * unless told otherwise. Closes them all in close().
 */
export class TestDevices {
  readonly clients: SwitchboardClient[] = [];
  private n = 0;

  constructor(
    private readonly base: string,
    /** The server's URL, read when a device is made (servers often start after this is built). */
    private readonly serverUrl: () => string,
  ) {}

  /** A new user with its first device; the username is `name` plus a counter. */
  async register(name: string, options: { encryption?: boolean } = {}): Promise<SwitchboardClient> {
    const n = this.n++;
    const client = await SwitchboardClient.register({
      serverUrl: this.serverUrl(),
      profileDir: join(this.base, `profile-${name}-${n}`),
      username: `${name}_${n}`,
      encryption: options.encryption ?? true,
      ...TEST_TUNING,
    });
    this.clients.push(client);
    return client;
  }

  /** Another device of first's user, linked with a code from first. */
  async link(first: SwitchboardClient, name: string): Promise<SwitchboardClient> {
    const { code } = await first.createLinkCode();
    const client = await SwitchboardClient.link({
      serverUrl: this.serverUrl(),
      profileDir: join(this.base, `profile-${name}-${this.n++}`),
      code,
      encryption: true,
      ...TEST_TUNING,
    });
    this.clients.push(client);
    return client;
  }

  /** Opens an existing profile again (after close()), tracked like the others. */
  async reopen(
    profileDir: string,
    options: { signedPrekeyMaxAgeMs?: number } = {},
  ): Promise<SwitchboardClient> {
    const client = await SwitchboardClient.open({ profileDir, encryption: true, ...options, ...TEST_TUNING });
    this.clients.push(client);
    return client;
  }

  async close(): Promise<void> {
    for (const c of this.clients) await c.close().catch(() => {});
  }
}

/** A server process in a temporary directory for the suite, and SDK devices on its current server. */
export class SdkServerSuite extends TempServerSuite {
  #devices: TestDevices | undefined;

  constructor(prefix: string, env: Record<string, string> = {}) {
    super(prefix, env);
    before(() => {
      this.#devices = new TestDevices(this.base, () => this.server.url);
    });
  }

  /** Closed before the server stops. */
  protected override async beforeStop(): Promise<void> {
    await this.#devices?.close();
  }

  /** SDK devices on the current server (available inside tests). */
  get devices(): TestDevices {
    if (this.#devices === undefined) throw new Error("the suite starts in before()");
    return this.#devices;
  }
}
