import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before } from "node:test";
import { SwitchboardClient } from "../../sdk/client.js";
import type { ClientTuning } from "../../sdk/types.js";
import { removeDir, type ServerProcess, startServerProcess } from "./server.js";

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
export interface SdkServerSuite {
  /** The suite's temporary directory: the server's data and the devices' profiles. */
  readonly base: string;
  /** The running server; a test that restarts it puts the new process here. */
  server: ServerProcess;
  /** SDK devices on the current server, closed after the suite. */
  readonly devices: TestDevices;
}

/**
 * Starts a server process (data under a new temporary directory named with prefix) and a device
 * factory before the suite; after it, closes the devices, stops the server and removes the
 * directory.
 */
export function sdkServerSuite(prefix: string): SdkServerSuite {
  let base: string | undefined;
  let server: ServerProcess | undefined;
  let devices: TestDevices | undefined;
  before(async () => {
    base = await mkdtemp(join(tmpdir(), prefix));
    server = await startServerProcess({ dataDir: join(base, "server") });
    devices = new TestDevices(base, () => suite.server.url);
  });
  after(async () => {
    await devices?.close();
    await server?.stop();
    if (base !== undefined) await removeDir(base);
  });
  const started = <T>(value: T | undefined): T => {
    if (value === undefined) throw new Error("the suite starts in before()");
    return value;
  };
  const suite: SdkServerSuite = {
    get base() {
      return started(base);
    },
    get server() {
      return started(server);
    },
    set server(next) {
      server = next;
    },
    get devices() {
      return started(devices);
    },
  };
  return suite;
}
