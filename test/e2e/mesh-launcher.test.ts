import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type ClientTuning, SwitchboardClient } from "../../sdk/index.js";
import { coturnMissing } from "../../services/mesh/coturn.js";
import { freePort, meshPrerequisites } from "../helpers/backends.js";
import { uniqueName } from "../helpers/device.js";
import { eventually, Inbox } from "../helpers/inbox.js";

/**
 * `switchboard mesh` as an operator runs it: the command itself in a child process, one process
 * per role plus its own nats-server and redis-server. A role process SIGKILLed is restarted by the
 * launcher (a new PID, serving again, said in its output), and a signal to the launcher stops
 * every process by PID without restarting any.
 */

const root = new URL("../../", import.meta.url).pathname;
const tuning: ClientTuning = {
  backoffBaseMs: 50,
  backoffCapMs: 1_000,
  pingIntervalMs: 5_000,
  deadAfterMs: 15_000,
};
const { missing, skip } = meshPrerequisites();

/** Whether a PID names a live process. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** `switchboard mesh` running as a child process, and what it printed. */
class Launcher {
  output = "";
  readonly child: ChildProcess;
  readonly exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(args: string[], env: NodeJS.ProcessEnv) {
    this.child = spawn(process.execPath, [join(root, "bin/switchboard.js"), "mesh", ...args], {
      cwd: root,
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    const child = this.child;
    this.exit = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
    const collect = (chunk: string): void => {
      this.output += chunk;
    };
    child.stdout?.setEncoding("utf8").on("data", collect);
    child.stderr?.setEncoding("utf8").on("data", collect);
  }

  /** Waits until the output matches, and returns the match. */
  async line(pattern: RegExp, what: string, timeoutMs = 60_000): Promise<RegExpExecArray> {
    let match: RegExpExecArray | null = null;
    await eventually(
      () => {
        match = pattern.exec(this.output);
        if (match === null && (this.child.exitCode !== null || this.child.signalCode !== null)) {
          assert.fail(`${what}: the launcher exited; it printed:\n${this.output.slice(-6000)}`);
        }
        return match !== null;
      },
      () => `${what}; the launcher printed:\n${this.output.slice(-6000)}`,
      timeoutMs,
    );
    return match!;
  }

  /** The first gateway's URL, once the mesh is up. */
  async started(timeoutMs: number): Promise<string> {
    return (
      await this.line(/switchboard mesh listening on (http:\/\/\S+?);/, "the mesh did not start", timeoutMs)
    )[1]!;
  }

  /** The PID the launcher's listing gives a process ("fanout-0     http://...  pid 123  log ..."). */
  listedPid(name: string): number {
    return Number(new RegExp(`^${name} +\\S+ +health \\S+ +pid (\\d+)`, "m").exec(this.output)?.[1]);
  }

  /** Stops it (SIGTERM, SIGKILL after 40 s), then SIGKILLs any process it printed that is left. */
  async close(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill("SIGTERM");
      const timer = setTimeout(() => this.child.kill("SIGKILL"), 40_000);
      await this.exit;
      clearTimeout(timer);
    }
    for (const m of this.output.matchAll(/pid (\d+)/g)) {
      const pid = Number(m[1]);
      if (pid !== this.child.pid && alive(pid)) process.kill(pid, "SIGKILL");
    }
  }
}

/** Registers a device on the gateway and opens its stream; its inbox collects what it receives. */
async function device(
  serverUrl: string,
  profileDir: string,
  prefix: string,
): Promise<{ client: SwitchboardClient; inbox: Inbox }> {
  const client = await SwitchboardClient.register({
    serverUrl,
    profileDir,
    username: uniqueName(prefix),
    // Plaintext, as before the SDK encrypted by default: this suite is about restarts.
    encryption: false,
    ...tuning,
  });
  const inbox = new Inbox(prefix, client);
  await client.connect();
  return { client, inbox };
}

describe("switchboard mesh restarts what dies", { skip }, () => {
  let dir = "";
  let launcher: Launcher;
  let gatewayUrl = "";
  const clients: SwitchboardClient[] = [];
  const output = (): string => launcher.output;

  before(async () => {
    if (missing.length > 0) {
      throw new Error(
        `CI=true and ${missing.join(" and ")} missing: apt-get install nats-server redis-server`,
      );
    }
    dir = await mkdtemp(join(tmpdir(), "sb-mesh-launcher-"));
    const port = await freePort();
    launcher = new Launcher(
      [
        "--dir",
        join(dir, "mesh"),
        "--port",
        String(port),
        "--gateways",
        "1",
        "--sequencers",
        "1",
        "--fanouts",
        "1",
        // Each process's LMDB files, even when the runner names a CQL cluster for other suites.
        "--store",
        "lmdb",
      ],
      process.env,
    );
    gatewayUrl = await launcher.started(120_000);
  });

  after(async () => {
    await Promise.all(clients.map((c) => c.close().catch(() => {})));
    await launcher?.close();
    if (dir !== "") await rm(dir, { recursive: true, force: true });
  });

  it("prints each process's settings with secrets redacted, and writes them to settings.txt", async () => {
    const settings = await readFile(join(dir, "mesh", "settings.txt"), "utf8");
    const secrets = await readFile(join(dir, "mesh", "secrets.env"), "utf8");
    const key = /^SWITCHBOARD_TOKEN_KEY=(\S+)$/m.exec(secrets)?.[1];
    assert.ok(key !== undefined && key.length >= 16, `secrets.env holds the token key: ${secrets}`);
    assert.equal((await stat(join(dir, "mesh", "secrets.env"))).mode & 0o777, 0o600);
    for (const [where, text] of [
      ["stdout", output()],
      ["settings.txt", settings],
    ] as const) {
      assert.ok(!text.includes(key), `${where} shows the token key`);
      assert.match(text, /SWITCHBOARD_TOKEN_KEY='<redacted>'/, where);
      for (const name of ["accounts", "presence", "sequencer-0", "fanout-0", "gateway-0"]) {
        const block = new RegExp(`^# ${name}: roles \\S+, pid \\d+, rpc port \\d+, admin port \\d+$`, "m");
        assert.match(text, block, `${where} describes ${name}`);
      }
      assert.match(
        text,
        /bin\/switchboard\.js start --role fanout --port \d+ --admin-port \d+ --data-dir \S+fanout-0/,
      );
      assert.match(text, /SWITCHBOARD_SEQUENCER_ORDINAL=0/);
      assert.match(text, /^# nats-server: nats:\/\/127\.0\.0\.1:\d+, pid \d+/m);
      if (coturnMissing() === false) {
        assert.match(text, /^# coturn \(turnserver\): turn:127\.0\.0\.1:\d+\?transport=udp, pid \d+/m);
        assert.match(text, /SWITCHBOARD_TURN_SECRET='<redacted>'/, where);
      }
    }
  });

  it("runs a TURN relay for calls and hands devices credentials for it", async (t) => {
    const missingRelay = coturnMissing();
    if (missingRelay !== false) {
      if (process.env.CI === "true") throw new Error(`CI=true: ${missingRelay}`);
      t.skip(missingRelay);
      return;
    }
    const client = await SwitchboardClient.register({
      serverUrl: gatewayUrl,
      profileDir: join(dir, "relay-user"),
      username: `relay_${Date.now().toString(36)}`,
      encryption: false,
    });
    clients.push(client);
    const servers = await client.calls.iceServers();
    assert.ok(
      servers.some(
        (s) => s.urls.some((u) => /^turn:127\.0\.0\.1:\d+\?transport=udp$/.test(u)) && s.username !== "",
      ),
      `a TURN relay with credentials: ${JSON.stringify(servers)}`,
    );
  });

  it("restarts a SIGKILLed fanout worker and gateway: new PIDs, serving again, and says so", async () => {
    const open = async (prefix: string) => {
      const opened = await device(gatewayUrl, join(dir, "profiles", prefix), prefix);
      clients.push(opened.client);
      return opened;
    };
    const alice = await open("alice");
    const bob = await open("bob");
    const { conversationId } = await alice.client.openDirect(bob.client.userId);
    await alice.client.send(conversationId, "before");
    await bob.inbox.has("before");

    // The only fanout worker: until it is back, nothing reaches bob's open stream.
    const fanoutPid = launcher.listedPid("fanout-0");
    assert.ok(alive(fanoutPid), `fanout-0's pid ${fanoutPid} is listed and alive`);
    process.kill(fanoutPid, "SIGKILL");
    await launcher.line(
      new RegExp(`fanout-0 \\(pid ${fanoutPid}\\) died: signal SIGKILL`),
      "the launcher did not say fanout-0 died",
    );
    await launcher.line(
      /restarting fanout-0 in [\d.]+ s \(attempt 1\)/,
      "the launcher did not say it restarts fanout-0",
    );
    const fanoutBack = Number(
      (await launcher.line(/fanout-0 is back \(pid (\d+), attempt 1\)/, "fanout-0 did not come back"))[1],
    );
    assert.notEqual(fanoutBack, fanoutPid);
    assert.ok(alive(fanoutBack));
    await alice.client.send(conversationId, "after fanout");
    await bob.inbox.has("after fanout");

    // The only gateway: both devices reconnect to its new incarnation on the same port.
    const gatewayPid = launcher.listedPid("gateway-0");
    process.kill(gatewayPid, "SIGKILL");
    await launcher.line(
      new RegExp(`gateway-0 \\(pid ${gatewayPid}\\) died: signal SIGKILL`),
      "no death line for gateway-0",
    );
    const gatewayBack = Number(
      (await launcher.line(/gateway-0 is back \(pid (\d+), attempt 1\)/, "gateway-0 did not come back"))[1],
    );
    assert.notEqual(gatewayBack, gatewayPid);
    await alice.client.send(conversationId, "after gateway");
    await bob.inbox.has("after gateway");

    // The settings file follows the restarts.
    const settings = await readFile(join(dir, "mesh", "settings.txt"), "utf8");
    assert.match(settings, new RegExp(`^# fanout-0: roles fanout, pid ${fanoutBack},`, "m"));
    assert.match(settings, new RegExp(`^# gateway-0: roles gateway, pid ${gatewayBack},`, "m"));
  });

  it("stops every process by PID on SIGTERM, restarting none", async () => {
    const pids = ["accounts", "presence", "sequencer-0"].map((n) => launcher.listedPid(n));
    const current = (name: string) =>
      Number(
        [...output().matchAll(new RegExp(`${name} is back \\(pid (\\d+)`, "g"))].at(-1)?.[1] ??
          launcher.listedPid(name),
      );
    pids.push(current("fanout-0"), current("gateway-0"));
    pids.push(
      ...[...output().matchAll(/^# (?:nats|redis)-server: \S+, pid (\d+)/gm)].map((m) => Number(m[1])),
    );
    assert.ok(pids.every(alive), `every process runs before the stop: ${pids}`);
    const before = output().length;
    launcher.child.kill("SIGTERM");
    const exit = await launcher.exit;
    assert.deepEqual(exit, { code: 0, signal: null }, output().slice(-3000));
    const stopping = output().slice(before);
    assert.match(stopping, /SIGTERM: stopping the mesh/);
    assert.doesNotMatch(stopping, /died|restarting \S+ in|is back/, stopping);
    assert.deepEqual(
      pids.filter(alive),
      [],
      `processes left running after the launcher exited; it printed:\n${stopping}`,
    );
  });
});

// The cluster test/run.mjs starts (a local Cassandra 5.0 node) or the one named: skipped without
// one, except under CI=true, where a missing database must be visible.
const SCYLLA_SKIP =
  process.env.SCYLLA_CONTACT_POINTS || process.env.CI === "true"
    ? skip
    : "SCYLLA_CONTACT_POINTS is not set (node test/run.mjs starts a local Cassandra node for it)";

describe("switchboard mesh --store scylla on the cluster in SCYLLA_CONTACT_POINTS", {
  skip: SCYLLA_SKIP,
}, () => {
  let dir = "";
  let launcher: Launcher | undefined;
  const clients: SwitchboardClient[] = [];

  after(async () => {
    await Promise.all(clients.map((c) => c.close().catch(() => {})));
    await launcher?.close();
    if (dir !== "") await rm(dir, { recursive: true, force: true });
  });

  it("migrates the schema once, runs every process on the shared store and delivers", async () => {
    if (!process.env.SCYLLA_CONTACT_POINTS)
      throw new Error("CI=true requires a CQL database: SCYLLA_CONTACT_POINTS");
    dir = await mkdtemp(join(tmpdir(), "sb-mesh-scylla-"));
    // A keyspace of its own: other suites share the cluster.
    const keyspace = `mesh_launcher_${process.pid}_${Date.now()}`;
    launcher = new Launcher(
      [
        "--dir",
        join(dir, "mesh"),
        "--port",
        String(await freePort()),
        "--gateways",
        "1",
        "--sequencers",
        "2",
        "--fanouts",
        "1",
        "--store",
        "scylla",
      ],
      { ...process.env, SCYLLA_KEYSPACE: keyspace, SCYLLA_REPLICATION_FACTOR: "1" },
    );
    const gatewayUrl = await launcher.started(180_000);
    assert.match(launcher.output, /mesh: schema: applied migrations: 0001_conversation_log/);
    const settings = await readFile(join(dir, "mesh", "settings.txt"), "utf8");
    for (const name of ["accounts", "sequencer-0", "sequencer-1", "fanout-0", "gateway-0"]) {
      const block = settings.split(/\n(?=# [\w-]+: roles )/).find((b) => b.startsWith(`# ${name}:`)) ?? "";
      assert.match(block, /SWITCHBOARD_STORE=scylla/, `${name} runs on the shared store`);
      assert.match(block, new RegExp(`SCYLLA_KEYSPACE=${keyspace}`), name);
    }
    const open = async (prefix: string) => {
      const opened = await device(gatewayUrl, join(dir, "profiles", prefix), prefix);
      clients.push(opened.client);
      return opened;
    };
    const alice = await open("alice");
    const bob = await open("bob");
    const { conversationId } = await alice.client.openDirect(bob.client.userId);
    await alice.client.send(conversationId, "on the shared store");
    await bob.inbox.has("on the shared store");
  });
});
