import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before } from "node:test";
import { TestDevice, uniqueName } from "./device.js";
import { removeDir, type ServerProcess, startServerProcess } from "./server.js";

/** A server process shared by the tests of one suite, and the devices they create on it. */
export interface ServerFixture {
  /** The running server (available inside tests). */
  readonly server: ServerProcess;
  /** Registers a user with a unique name; its device is closed after the suite. */
  user(prefix: string): Promise<TestDevice>;
  /** Closes this device after the suite too. */
  track(device: TestDevice): TestDevice;
}

/**
 * Starts a server process before the suite (with extra environment, for limits) and stops it
 * after, checking that it exits cleanly on SIGTERM.
 */
export function serverFixture(env: Record<string, string> = {}): ServerFixture {
  let server: ServerProcess | undefined;
  const devices: TestDevice[] = [];
  before(async () => {
    server = await startServerProcess({ env });
  });
  after(async () => {
    await Promise.all(devices.map((d) => d.close()));
    if (server === undefined) return;
    const code = await server.stop();
    await removeDir(server.dataDir);
    if (code !== 0)
      throw new Error(`server exited with ${code} on SIGTERM:\n${server.logs.slice(-20).join("\n")}`);
  });
  const fixture: ServerFixture = {
    get server() {
      if (server === undefined) throw new Error("the server starts in before()");
      return server;
    },
    async user(prefix) {
      return fixture.track(await TestDevice.register(fixture.server.url, uniqueName(prefix)));
    },
    track(device) {
      devices.push(device);
      return device;
    },
  };
  return fixture;
}

/**
 * A suite's temporary directory and the server process keeping its data there: before the
 * suite, makes the directory (named with prefix) and starts the server with its data under
 * server/; after the suite, runs beforeStop (subclasses close their clients), stops the server
 * and removes the directory. Construct it inside describe().
 */
export class TempServerSuite {
  #base: string | undefined;
  #server: ServerProcess | undefined;

  constructor(prefix: string, env: Record<string, string> = {}) {
    before(async () => {
      this.#base = await mkdtemp(join(tmpdir(), prefix));
      this.#server = await startServerProcess({ dataDir: join(this.#base, "server"), env });
    });
    after(async () => {
      await this.beforeStop();
      await this.#server?.stop();
      if (this.#base !== undefined) await removeDir(this.#base);
    });
  }

  protected async beforeStop(): Promise<void> {}

  /** The suite's temporary directory (available inside tests). */
  get base(): string {
    if (this.#base === undefined) throw new Error("the suite starts in before()");
    return this.#base;
  }

  /** The running server; a test that restarts it puts the new process here. */
  get server(): ServerProcess {
    if (this.#server === undefined) throw new Error("the suite starts in before()");
    return this.#server;
  }

  set server(next: ServerProcess) {
    this.#server = next;
  }
}
