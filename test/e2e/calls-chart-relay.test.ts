import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createClient } from "@connectrpc/connect";
import { createTurnClient, type TurnProtocol } from "werift";
import { parseAllDocuments } from "yaml";
import { CallService } from "../../gen/switchboard/v1/calls_pb.js";
import { coturnMissing } from "../../services/mesh/coturn.js";
import { freePort } from "../../services/mesh/servers.js";
import { TestDevice, uniqueName } from "../helpers/device.js";
import { removeDir, type ServerProcess, startServerProcess } from "../helpers/server.js";

// The chart's own relay (turn.coturn) as rendered, run for real: the coturn arguments of the
// `coturn` scenario start Debian's coturn, the gateways' settings from the same render start a
// server process, and the credentials that server issues allocate on that relay, because both
// read the one Secret key the chart generated. The rendered deny list keeps the relay out of
// private networks. .ci/helm-check.sh checks the manifests; this checks that they work.

const root = new URL("../../", import.meta.url).pathname;

/** helm on the PATH, else the one .ci/helm-check.sh unpacks (CI runs it before the tests). */
function findHelm(): string | undefined {
  for (const dir of (process.env.PATH ?? "").split(":")) {
    if (dir !== "" && existsSync(join(dir, "helm"))) return join(dir, "helm");
  }
  const cached = join(root, "node_modules/.cache/helm/helm");
  return existsSync(cached) ? cached : undefined;
}
const helm = findHelm();

// biome-ignore lint/suspicious/noExplicitAny: rendered manifests, read field by field as Kubernetes would
type Doc = Record<string, any>;
interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { secretKeyRef?: { name: string; key: string } };
}

/** The rendered `coturn` scenario (a fresh render: its shared secret is newly generated). */
function render(helmHome: string): Doc[] {
  const out = execFileSync(
    helm!,
    [
      "template",
      "sb",
      "charts/switchboard",
      "--namespace",
      "switchboard",
      "-f",
      "charts/switchboard/ci/coturn-values.yaml",
    ],
    {
      cwd: root,
      encoding: "utf8",
      maxBuffer: 64 * 1024 * 1024,
      env: {
        ...process.env,
        HELM_CONFIG_HOME: join(helmHome, "config"),
        HELM_CACHE_HOME: join(helmHome, "cache"),
        HELM_DATA_HOME: join(helmHome, "data"),
      },
    },
  );
  return parseAllDocuments(out)
    .map((d) => d.toJS() as Doc)
    .filter((d) => d !== null);
}

describe("the chart's coturn (turn.coturn), rendered and run", {
  skip: coturnMissing() || (helm === undefined && "helm is missing: bash .ci/helm-check.sh unpacks it"),
}, () => {
  let helmHome: string;
  let stateDir: string;
  let relay: ChildProcess | undefined;
  const relayLogs: string[] = [];
  let relayPort: number;
  let server: ServerProcess;
  const devices: TestDevice[] = [];
  const allocations: TurnProtocol[] = [];
  let gatewayEnv: Map<string, EnvVar>;

  before(async () => {
    helmHome = await mkdtemp(join(tmpdir(), "sb-chart-relay-helm-"));
    stateDir = await mkdtemp(join(tmpdir(), "sb-chart-relay-"));
    const docs = render(helmHome);
    const component = (d: Doc) => d.spec?.template?.metadata?.labels?.["app.kubernetes.io/component"];
    const turn = docs.find((d) => d.kind === "Deployment" && component(d) === "turn");
    const gateway = docs.find((d) => d.kind === "Deployment" && component(d) === "gateway");
    assert.ok(turn && gateway, "the coturn scenario renders a relay and gateways");
    const secretOf = (ref: { name: string; key: string } | undefined): string => {
      const s = docs.find((d) => d.kind === "Secret" && d.metadata.name === ref?.name);
      const b64 = s?.data?.[ref!.key];
      assert.ok(typeof b64 === "string", `no rendered Secret ${ref?.name}/${ref?.key}`);
      return Buffer.from(b64, "base64").toString();
    };

    // The relay's container as the pod would run it: $(VAR) from its env, the pod's IP loopback.
    const container = turn.spec.template.spec.containers[0];
    assert.deepEqual(container.command, ["turnserver"]);
    const env = new Map<string, string>([["POD_IP", "127.0.0.1"]]);
    for (const e of container.env as EnvVar[]) {
      if (e.valueFrom?.secretKeyRef) env.set(e.name, secretOf(e.valueFrom.secretKeyRef));
    }
    relayPort = await freePort();
    const minPort = 41_000 + Math.floor(Math.random() * 200) * 100;
    // Only what a pod has and this machine has not changes: ports, paths, and the loopback
    // addresses (on the host network it listens everywhere).
    const replaced: Record<string, string> = {
      "--listening-port": String(relayPort),
      "--min-port": String(minPort),
      "--max-port": String(minPort + 99),
      "--userdb": join(stateDir, "turndb"),
      "--pidfile": join(stateDir, "turnserver.pid"),
    };
    const args = (container.args as string[]).map((a) => {
      const [flag] = a.split("=", 1);
      const value = replaced[flag!];
      const arg = value === undefined ? a : `${flag}=${value}`;
      return arg.replace(/\$\((\w+)\)/g, (_, name: string) => env.get(name) ?? "");
    });
    args.push("--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1");
    relay = spawn("turnserver", args, { stdio: ["ignore", "pipe", "pipe"] });
    const collect = (chunk: Buffer) => relayLogs.push(...chunk.toString().split("\n").filter(Boolean));
    relay.stdout?.on("data", collect);
    relay.stderr?.on("data", collect);
    const deadline = Date.now() + 15_000;
    while (!(await accepts(relayPort))) {
      if (relay.exitCode !== null || Date.now() > deadline)
        assert.fail(`coturn did not start with the rendered arguments:\n${relayLogs.slice(-30).join("\n")}`);
      await new Promise((r) => setTimeout(r, 50));
    }

    // The gateways' settings from the same render: the relay's URL (its host is the cluster's
    // name for it, here loopback), the TTL, and the shared secret from the Secret they name.
    gatewayEnv = new Map((gateway.spec.template.spec.containers[0].env as EnvVar[]).map((e) => [e.name, e]));
    const urls = gatewayEnv.get("SWITCHBOARD_TURN_URLS")?.value ?? "";
    assert.equal(
      urls,
      "turn:relay.chat.example.com:3478?transport=udp,turn:relay.chat.example.com:3478?transport=tcp",
    );
    server = await startServerProcess({
      env: {
        SWITCHBOARD_TURN_URLS: `turn:127.0.0.1:${relayPort}?transport=udp`,
        SWITCHBOARD_TURN_SECRET: secretOf(gatewayEnv.get("SWITCHBOARD_TURN_SECRET")?.valueFrom?.secretKeyRef),
        SWITCHBOARD_TURN_TTL_SECONDS: gatewayEnv.get("SWITCHBOARD_TURN_TTL_SECONDS")?.value ?? "",
      },
    });
  });
  after(async () => {
    await Promise.all(allocations.map((a) => a.close().catch(() => {})));
    await Promise.all(devices.map((d) => d.close()));
    await server?.stop();
    if (server) await removeDir(server.dataDir);
    if (relay?.pid !== undefined && relay.exitCode === null) {
      const exited = new Promise((r) => relay!.once("exit", r));
      process.kill(relay.pid, "SIGTERM");
      await exited;
    }
    for (const dir of [helmHome, stateDir]) if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** An allocation with the credentials the server issues to a new user. */
  async function allocate(): Promise<TurnProtocol> {
    const d = await TestDevice.register(server.url, uniqueName("relay"));
    devices.push(d);
    const [ice] = (await createClient(CallService, d.transport).getTurnCredentials({})).iceServers;
    const a = await createTurnClient({
      address: ["127.0.0.1", relayPort],
      username: ice!.username,
      password: ice!.credential,
    }).catch((err) => {
      throw new Error(`no allocation (${err}); coturn said:\n${relayLogs.slice(-20).join("\n")}`);
    });
    allocations.push(a);
    return a;
  }

  it("accepts the credentials the gateways issue (one generated secret for both), and denies private peers", async () => {
    const a = await allocate();
    assert.equal(a.relayedAddress[0], "127.0.0.1");
    const b = await allocate();
    // Peers in private and loopback ranges are refused with 403 (the relays' own included); a
    // public address is not (a permission sends nothing, so none needs to exist).
    const code = (peer: [string, number]) =>
      a.getPermission(peer).then(
        () => "granted",
        (err: { response?: { getAttributeValue(name: string): unknown } }) =>
          (err.response?.getAttributeValue("ERROR-CODE") as [number] | undefined)?.[0] ?? String(err),
      );
    for (const peer of [
      b.relayedAddress,
      ["10.1.2.3", 5000],
      ["192.168.1.1", 5000],
      ["172.20.0.1", 5000],
    ] as Array<[string, number]>) {
      assert.equal(await code(peer), 403, `a permission to ${peer.join(":")}`);
    }
    assert.equal(await code(["203.0.113.5", 5000]), "granted");
  });
});

/** True when something accepts TCP connections on 127.0.0.1:port (coturn listens on TCP too). */
function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1000, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}
