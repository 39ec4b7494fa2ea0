/**
 * Users of a test deployment with two SDK devices each, and what a failing test appends about
 * them: shared by the suites that run the mesh (test/e2e/mesh, mesh-faults, fault-matrix).
 */
import { writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type ClientTuning, SwitchboardClient } from "../../sdk/index.js";
import { uniqueName } from "./device.js";
import { DeviceLog } from "./mesh-traffic.js";

/** A user with two devices (and their connection logs). */
export interface MeshUser {
  name: string;
  userId: string;
  devices: SwitchboardClient[];
  logs: DeviceLog[];
}

/** Where device `index` of a user connects: its server, falling over to the rest. */
export type DeviceUrls = (index: number) => { serverUrl: string; alternateUrls: string[] };

/** The URLs that put device `index` on gateway `index` of `gatewayUrls`, the others as alternates. */
export function gatewayUrls(all: () => readonly string[]): DeviceUrls {
  return (index) => {
    const urls = all();
    return { serverUrl: urls[index]!, alternateUrls: urls.filter((_, i) => i !== index) };
  };
}

/** The users of one suite: registered, linked and connected, closed together. */
export class MeshUsers {
  readonly all: MeshUser[] = [];

  constructor(
    /** Profiles go in `<dir>/profiles`. */
    private readonly dir: string,
    private readonly urls: DeviceUrls,
    private readonly tuning: ClientTuning,
  ) {}

  /** Registers a user whose first device connects through urls(0) and second through urls(1). */
  async add(prefix: string): Promise<MeshUser> {
    const name = uniqueName(prefix);
    const first = await SwitchboardClient.register({
      ...this.urls(0),
      profileDir: join(this.dir, "profiles", `${name}-0`),
      username: name,
      // Plaintext, as before the SDK encrypted by default: the mesh suites are about delivery.
      encryption: false,
      ...this.tuning,
    });
    const { code } = await first.createLinkCode();
    const second = await SwitchboardClient.link({
      ...this.urls(1),
      profileDir: join(this.dir, "profiles", `${name}-1`),
      code,
      encryption: false,
      ...this.tuning,
    });
    const user: MeshUser = {
      name,
      userId: first.userId,
      devices: [first, second],
      logs: [new DeviceLog(`${prefix}/0`, first), new DeviceLog(`${prefix}/1`, second)],
    };
    this.all.push(user);
    await Promise.all(user.devices.map((d) => d.connect()));
    return user;
  }

  /** Every device's connection events, one line per device. */
  deviceEvents(): string[] {
    return this.all.flatMap((u) => u.logs.map((l) => `${l.name}: ${l.events.join(" | ")}`));
  }

  /** Closes every device's client. */
  async closeAll(): Promise<void> {
    for (const u of this.all) await Promise.all(u.devices.map((d) => d.close().catch(() => {})));
  }
}

/** What a failing body's error gets appended. */
export interface FailureDump {
  /** Every line the processes logged so far, each prefixed with its process's name (read on failure). */
  lines: () => readonly string[];
  users: MeshUsers;
  /** Names the file the full log is written to: `sb-<name>-<time>.log` in the temporary dir. */
  name: string;
  /** How many of the last warnings and errors to append. */
  warnings: number;
  /** Processes whose last 25 lines to append as well. */
  tailsOf?: Iterable<string>;
}

/**
 * Runs a test body; if it fails, writes every process's log to a file and appends to the error
 * where it is, the devices' connection events, the last warnings (long lines cut) and the chosen
 * processes' last lines.
 */
export async function withFailureDump(dump: FailureDump, body: () => Promise<void>): Promise<void> {
  try {
    await body();
  } catch (err) {
    const lines = dump.lines();
    const warnings = lines
      .filter((l) => /"level":(40|50|60)/.test(l))
      .slice(-dump.warnings)
      .map((l) => (l.length > 600 ? `${l.slice(0, 600)}…` : l));
    const tails = [...(dump.tailsOf ?? [])].flatMap((name) =>
      lines.filter((l) => l.startsWith(`${name} `)).slice(-25),
    );
    const full = join(tmpdir(), `sb-${dump.name}-${Date.now()}.log`);
    await writeFile(full, `${lines.join("\n")}\n`);
    const text =
      `\n--- every process's log: ${full}\n--- device connection events ---\n${dump.users.deviceEvents().join("\n")}` +
      `\n--- warnings and errors (last ${dump.warnings}) ---\n${warnings.join("\n")}` +
      (tails.length > 0 ? `\n--- last lines per process ---\n${tails.join("\n")}` : "");
    if (err instanceof Error) {
      err.message += text;
      throw err;
    }
    throw new Error(`${String(err)}${text}`);
  }
}
