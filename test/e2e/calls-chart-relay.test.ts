import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import * as tls from "node:tls";
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

/** A scenario of the chart rendered by helm (each render generates its own secrets). */
function render(helmHome: string, scenario: string): Doc[] {
  const out = execFileSync(
    helm!,
    [
      "template",
      "sb",
      "charts/switchboard",
      "--namespace",
      "switchboard",
      "-f",
      `charts/switchboard/ci/${scenario}`,
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

type SecretRef = { name: string; key: string };

/**
 * One rendered release's relay and gateway settings, run here: coturn with the relay container's
 * arguments, a server process with the gateway container's TURN settings. `existing` holds the
 * Secrets the operator would have made (`name/key` to value); the chart's own come from the render.
 */
class RenderedRelay {
  relay: ChildProcess | undefined;
  readonly logs: string[] = [];
  port = 0;
  tlsPort = 0;
  server: ServerProcess | undefined;
  readonly docs: Doc[];
  readonly relayArgs: string[];
  readonly gatewayEnv: Map<string, EnvVar>;
  private readonly relayEnv: EnvVar[];
  private readonly devices: TestDevice[] = [];
  private readonly allocations: TurnProtocol[] = [];

  constructor(
    helmHome: string,
    scenario: string,
    readonly dir: string,
    private readonly existing: Record<string, string> = {},
  ) {
    this.docs = render(helmHome, scenario);
    const component = (d: Doc) => d.spec?.template?.metadata?.labels?.["app.kubernetes.io/component"];
    const turn = this.docs.find((d) => d.kind === "Deployment" && component(d) === "turn");
    const gateway = this.docs.find((d) => d.kind === "Deployment" && component(d) === "gateway");
    assert.ok(turn && gateway, `${scenario} renders a relay and gateways`);
    const container = turn.spec.template.spec.containers[0];
    assert.deepEqual(container.command, ["turnserver"]);
    this.relayArgs = container.args;
    this.relayEnv = container.env;
    this.gatewayEnv = new Map(
      (gateway.spec.template.spec.containers[0].env as EnvVar[]).map((e) => [e.name, e]),
    );
  }

  /** A secretKeyRef's value: from the chart's rendered Secret, else from the operator's. */
  secret(ref: SecretRef | undefined): string {
    assert.ok(ref !== undefined, "not from a Secret");
    const own = this.docs.find((d) => d.kind === "Secret" && d.metadata.name === ref.name)?.data?.[ref.key];
    if (typeof own === "string") return Buffer.from(own, "base64").toString();
    const given = this.existing[`${ref.name}/${ref.key}`];
    assert.ok(given !== undefined, `Secret ${ref.name}/${ref.key} is neither rendered nor the operator's`);
    return given;
  }

  /** Starts coturn as the pod would run it, with `files` for paths mounted in the pod. */
  async start(files: Record<string, string> = {}): Promise<void> {
    // The container's $(VAR)s: its env from Secrets, and the pod's IP (loopback here).
    const env = new Map<string, string>([["POD_IP", "127.0.0.1"]]);
    for (const e of this.relayEnv) {
      if (e.valueFrom?.secretKeyRef) env.set(e.name, this.secret(e.valueFrom.secretKeyRef));
    }
    this.port = await freePort();
    this.tlsPort = await freePort();
    const minPort = 41_000 + Math.floor(Math.random() * 200) * 100;
    // Only what a pod has and this machine has not changes: ports, paths, and the loopback
    // addresses (a pod listens on every address it has).
    const replaced: Record<string, string> = {
      "--listening-port": String(this.port),
      "--tls-listening-port": String(this.tlsPort),
      "--min-port": String(minPort),
      "--max-port": String(minPort + 99),
      "--userdb": join(this.dir, "turndb"),
      "--pidfile": join(this.dir, "turnserver.pid"),
      ...files,
    };
    const args = this.relayArgs.map((a) => {
      const [flag] = a.split("=", 1);
      const value = replaced[flag!];
      const arg = value === undefined ? a : `${flag}=${value}`;
      return arg.replace(/\$\((\w+)\)/g, (_, name: string) => env.get(name) ?? "");
    });
    args.push("--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1");
    const relay = spawn("turnserver", args, { stdio: ["ignore", "pipe", "pipe"] });
    this.relay = relay;
    const collect = (chunk: Buffer) => this.logs.push(...chunk.toString().split("\n").filter(Boolean));
    relay.stdout?.on("data", collect);
    relay.stderr?.on("data", collect);
    const deadline = Date.now() + 15_000;
    while (!(await accepts(this.port))) {
      if (relay.exitCode !== null || Date.now() > deadline)
        assert.fail(`coturn did not start with the rendered arguments:\n${this.logs.slice(-30).join("\n")}`);
      await new Promise((r) => setTimeout(r, 50));
    }

    // The gateways' TURN settings from the same render; the URL's host is the relay's public
    // name, here loopback.
    this.server = await startServerProcess({
      env: {
        SWITCHBOARD_TURN_URLS: `turn:127.0.0.1:${this.port}?transport=udp`,
        SWITCHBOARD_TURN_SECRET: this.secret(
          this.gatewayEnv.get("SWITCHBOARD_TURN_SECRET")?.valueFrom?.secretKeyRef,
        ),
        SWITCHBOARD_TURN_TTL_SECONDS: this.gatewayEnv.get("SWITCHBOARD_TURN_TTL_SECONDS")?.value ?? "",
      },
    });
  }

  /** An allocation with the credentials the server issues to a new user. */
  async allocate(): Promise<TurnProtocol> {
    const d = await TestDevice.register(this.server!.url, uniqueName("relay"));
    this.devices.push(d);
    const [ice] = (await createClient(CallService, d.transport).getTurnCredentials({})).iceServers;
    const a = await createTurnClient({
      address: ["127.0.0.1", this.port],
      username: ice!.username,
      password: ice!.credential,
    }).catch((err) => {
      throw new Error(`no allocation (${err}); coturn said:\n${this.logs.slice(-20).join("\n")}`);
    });
    this.allocations.push(a);
    return a;
  }

  async stop(): Promise<void> {
    await Promise.all(this.allocations.map((a) => a.close().catch(() => {})));
    await Promise.all(this.devices.map((d) => d.close()));
    await this.server?.stop();
    if (this.server) await removeDir(this.server.dataDir);
    const relay = this.relay;
    if (relay?.pid !== undefined && relay.exitCode === null) {
      const exited = new Promise((r) => relay.once("exit", r));
      process.kill(relay.pid, "SIGTERM");
      await exited;
    }
  }
}

/** What the relay answers a CreatePermission for this peer: "granted" or the STUN error code. */
function permission(a: TurnProtocol, peer: [string, number]): Promise<number | string> {
  return a.getPermission(peer).then(
    () => "granted",
    (err: { response?: { getAttributeValue(name: string): unknown } }) =>
      (err.response?.getAttributeValue("ERROR-CODE") as [number] | undefined)?.[0] ?? String(err),
  );
}

describe("the chart's coturn (turn.coturn), rendered and run", {
  skip: coturnMissing() || (helm === undefined && "helm is missing: bash .ci/helm-check.sh unpacks it"),
}, () => {
  let helmHome: string;
  let dir: string;
  const releases: RenderedRelay[] = [];

  before(async () => {
    helmHome = await mkdtemp(join(tmpdir(), "sb-chart-relay-helm-"));
    dir = await mkdtemp(join(tmpdir(), "sb-chart-relay-"));
  });
  after(async () => {
    for (const r of releases) await r.stop();
    for (const d of [helmHome, dir]) if (d) await rm(d, { recursive: true, force: true });
  });

  it("hostNetwork (scenario coturn): accepts the credentials the gateways issue (one generated secret for both), and denies private peers", async () => {
    const release = new RenderedRelay(helmHome, "coturn-values.yaml", await mkdtemp(join(dir, "a-")));
    releases.push(release);
    assert.equal(
      release.gatewayEnv.get("SWITCHBOARD_TURN_URLS")?.value,
      "turn:relay.chat.example.com:3478?transport=udp,turn:relay.chat.example.com:3478?transport=tcp",
    );
    await release.start();
    const a = await release.allocate();
    assert.equal(a.relayedAddress[0], "127.0.0.1");
    const b = await release.allocate();
    // Peers in private and loopback ranges are refused with 403 (the relays' own included); a
    // public address is not (a permission sends nothing, so none needs to exist).
    for (const peer of [
      b.relayedAddress,
      ["10.1.2.3", 5000],
      ["192.168.1.1", 5000],
      ["172.20.0.1", 5000],
    ] as Array<[string, number]>) {
      assert.equal(await permission(a, peer), 403, `a permission to ${peer.join(":")}`);
    }
    assert.equal(await permission(a, ["203.0.113.5", 5000]), "granted");
  });

  it("LoadBalancer (scenario coturn-lb): the operator's secret, the balancer's address in relayed candidates, TLS on its port", async () => {
    const secretRef = { name: "switchboard-turn", key: "shared-secret" };
    const release = new RenderedRelay(helmHome, "coturn-lb-values.yaml", await mkdtemp(join(dir, "b-")), {
      [`${secretRef.name}/${secretRef.key}`]: "the-operators-own-relay-secret",
    });
    releases.push(release);
    assert.deepEqual(release.gatewayEnv.get("SWITCHBOARD_TURN_SECRET")?.valueFrom?.secretKeyRef, secretRef);
    assert.match(
      release.gatewayEnv.get("SWITCHBOARD_TURN_URLS")?.value ?? "",
      /,turns:turn\.chat\.example\.com:5349\?transport=tcp$/,
    );
    // The certificate the pod mounts from turn.coturn.tls.existingSecret, made here.
    const cert = join(release.dir, "tls.crt");
    const key = join(release.dir, "tls.key");
    execFileSync(
      "openssl",
      [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=turn.chat.example.com",
        "-keyout",
        key,
        "-out",
        cert,
      ],
      { stdio: "ignore" },
    );
    await release.start({ "--cert": cert, "--pkey": key });
    const a = await release.allocate();
    // coturn maps its relay address to the balancer's (external-ip), as devices must reach it.
    assert.deepEqual(a.relayedAddress[0], "203.0.113.10");
    const subject = await new Promise<string>((resolve, reject) => {
      const socket = tls.connect(
        { host: "127.0.0.1", port: release.tlsPort, rejectUnauthorized: false },
        () => {
          resolve(String(socket.getPeerCertificate().subject?.CN));
          socket.destroy();
        },
      );
      socket.once("error", reject);
    });
    assert.equal(subject, "turn.chat.example.com");
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
