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
