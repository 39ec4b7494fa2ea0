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

/** A suite's temporary directory and the server process keeping its data there. */
export interface TempServerSuite {
  /** The suite's temporary directory (the server's data under server/). */
  readonly base: string;
  /** The running server; a test that restarts it puts the new process here. */
  server: ServerProcess;
}

/**
 * Before the suite, makes a temporary directory named with prefix and starts a server process
 * with its data in it; after the suite, runs beforeStop (closing clients), stops the server and
 * removes the directory.
 */
export function tempServerSuite(prefix: string, beforeStop?: () => Promise<void>): TempServerSuite {
  let base: string | undefined;
  let server: ServerProcess | undefined;
  before(async () => {
    base = await mkdtemp(join(tmpdir(), prefix));
    server = await startServerProcess({ dataDir: join(base, "server") });
  });
  after(async () => {
    await beforeStop?.();
    await server?.stop();
    if (base !== undefined) await removeDir(base);
  });
  return {
    get base() {
      if (base === undefined) throw new Error("the suite starts in before()");
      return base;
    },
    get server() {
      if (server === undefined) throw new Error("the suite starts in before()");
      return server;
    },
    set server(next) {
      server = next;
    },
  };
}
