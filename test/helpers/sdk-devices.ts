import { join } from "node:path";
import { before } from "node:test";
import { SwitchboardClient } from "../../sdk/client.js";
import type { ClientTuning } from "../../sdk/types.js";
import { type TempServerSuite, tempServerSuite } from "./fixture.js";

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

/** What sdkServerSuite gives the tests of a suite (available inside tests). */
export interface SdkServerSuite extends TempServerSuite {
  /** SDK devices on the current server, closed after the suite. */
  readonly devices: TestDevices;
}

/**
 * A server process in a temporary directory for the suite (tempServerSuite, prefix names the
 * directory) and a factory of SDK devices on it, closed before the server stops.
 */
export function sdkServerSuite(prefix: string): SdkServerSuite {
  let devices: TestDevices | undefined;
  const suite = tempServerSuite(prefix, async () => {
    await devices?.close();
  });
  before(() => {
    devices = new TestDevices(suite.base, () => suite.server.url);
  });
  return {
    get base() {
      return suite.base;
    },
    get server() {
      return suite.server;
    },
    set server(next) {
      suite.server = next;
    },
    get devices() {
      if (devices === undefined) throw new Error("the suite starts in before()");
      return devices;
    },
  };
}
