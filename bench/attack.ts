import { parseArgs } from "node:util";
import { create } from "@bufbuild/protobuf";
import { type Client, createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { AccountService } from "../gen/switchboard/v1/accounts_pb.js";
import { ConversationService } from "../gen/switchboard/v1/conversations_pb.js";
import { MessageBodySchema, OutgoingEntrySchema } from "../gen/switchboard/v1/entry_pb.js";
import {
  type ConnectRequest,
  ConnectRequestSchema,
  GatewayService,
} from "../gen/switchboard/v1/gateway_pb.js";
import { defaultEdgeLimits, defaultLimits } from "../services/common/config.js";
import { attackInChild, rssBytes } from "./attacks.js";
import { Histogram } from "./histogram.js";
import { type BenchServer, spawnServer } from "./server.js";

/**
 * `npm run bench -- --attack NAME`: runs one hostile client against a server spawned with the
 * default limits (not the raised ones the load bench uses) and reports the server's RSS and a
 * well-behaved bystander's round trips before, during and after the attack. The attacker
 * connects from 127.0.0.2, the bystander from 127.0.0.1. Figures: docs/security.md.
 */

const ATTACKS = ["half-open", "idle", "slow-reader", "all"] as const;
type AttackName = Exclude<(typeof ATTACKS)[number], "all">;

const USAGE = `npm run bench -- --attack NAME [options]

  --attack NAME      half-open | idle | slow-reader | all
  --seconds S        seconds the attack runs (the bystander is measured throughout), default 10
  --json             one JSON object per attack instead of the report

half-open    20 connections x 1,000 Register requests whose body never completes (finding 1)
idle         1,500 silent TCP sockets and 300 HTTP/2 sessions with no request (finding 7)
slow-reader  a member of a group holding 300 x 60 KB messages opens Connect, never reads, and
             sends 50 sync requests for 1,000 entries each (finding 2)
`;

/** The limits a public deployment runs with: the defaults, spelled out for the spawned server. */
function defaultEnv(): Record<string, string> {
  const env: Record<string, string> = {
    SWITCHBOARD_SENDS_PER_SECOND: String(defaultLimits.sendsPerSecond),
    SWITCHBOARD_SEND_BURST: String(defaultLimits.sendBurst),
    SWITCHBOARD_MAX_SENDS_IN_FLIGHT: String(defaultLimits.maxSendsInFlight),
    SWITCHBOARD_FRAMES_PER_SECOND: String(defaultLimits.framesPerSecond),
    SWITCHBOARD_FRAME_BURST: String(defaultLimits.frameBurst),
    SWITCHBOARD_OUTBOUND_QUEUE_FRAMES: String(defaultLimits.outboundQueueFrames),
    SWITCHBOARD_MAX_CONNECTIONS_PER_ADDRESS: String(defaultEdgeLimits.maxConnectionsPerAddress),
    SWITCHBOARD_MAX_REQUESTS_IN_FLIGHT_PER_ADDRESS: String(defaultEdgeLimits.maxRequestsInFlightPerAddress),
    SWITCHBOARD_MAX_REQUESTS_IN_FLIGHT: String(defaultEdgeLimits.maxRequestsInFlight),
  };
  return env;
}

interface Phase {
  rssMaxMiB: number;
  p50Ms: number;
  p99Ms: number;
  calls: number;
  failures: number;
}

interface AttackReport {
  attack: AttackName;
  before: Phase;
  during: Phase;
  after: Phase;
  attacker: string;
}

/** A bystander: a signed-in device making a unary call every 20 ms, and the server's RSS. */
async function measure(
  server: BenchServer,
  conversations: Client<typeof ConversationService>,
  token: string,
  ms: number,
): Promise<Phase> {
  const histogram = new Histogram();
  let failures = 0;
  let calls = 0;
  let rssMax = 0;
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const started = performance.now();
    calls++;
    try {
      await conversations.listConversations(
        {},
        { timeoutMs: 5000, headers: { authorization: `Bearer ${token}` } },
      );
      histogram.recordMs(performance.now() - started);
    } catch (err) {
      failures++;
      if (process.env.BENCH_DEBUG) process.stderr.write(`bystander: ${String(err)}\n`);
    }
    rssMax = Math.max(rssMax, await rssBytes(server.pid));
    await new Promise((r) => setTimeout(r, 20));
  }
  const summary = histogram.summary();
  return {
    rssMaxMiB: rssMax / 2 ** 20,
    p50Ms: summary.p50,
    p99Ms: summary.p99,
    calls,
    failures,
  };
}

/** Finding 2's setup and attack: returns how to stop it. */
async function slowReader(url: string): Promise<{ stop(): void; describe(): string }> {
  const sessions = new Http2SessionManager(url);
  const transport = createGrpcTransport({ baseUrl: url, sessionManager: sessions });
  const accounts = createClient(AccountService, transport);
  const conversations = createClient(ConversationService, transport);
  const gateway = createClient(GatewayService, transport);
  const run = Math.random().toString(36).slice(2, 8);
  const register = async (name: string) => {
    const r = await accounts.register({ username: `${name}_${run}`, deviceName: "bench" });
    const t = await accounts.createToken({
      deviceId: r.credential!.deviceId,
      deviceSecret: r.credential!.deviceSecret,
    });
    return { userId: r.user!.userId, token: t.accessToken };
  };
  const owner = await register("owner");
  const member = await register("member");
  const auth = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });
  const group = await conversations.createGroup(
    { title: "slow", memberUserIds: [member.userId] },
    auth(owner.token),
  );
  const conversationId = group.conversation!.conversationId;
  const payload = new Uint8Array(60_000);
  // Within the default send rate (20/s, burst 100): 300 messages take about 10 s.
  for (let i = 0; i < 300; i++) {
    for (;;) {
      try {
        await gateway.send(
          {
            entry: create(OutgoingEntrySchema, {
              clientMsgId: `m${i}`,
              conversationId,
              body: { case: "message", value: create(MessageBodySchema, { payload }) },
            }),
          },
          auth(owner.token),
        );
        break;
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }
  // The attacker's stream: it writes and never reads.
  const abort = new AbortController();
  async function* frames(): AsyncGenerator<ConnectRequest> {
    for (let i = 0; i < 50; i++) {
      yield create(ConnectRequestSchema, {
        frame: {
          case: "syncRequest",
          value: { requestId: i + 1, conversationId, afterSeq: 0n, limit: 1000 },
        },
      });
    }
    await new Promise((resolve) => abort.signal.addEventListener("abort", resolve));
  }
  const attackerSessions = new Http2SessionManager(url);
  const attackerTransport = createGrpcTransport({ baseUrl: url, sessionManager: attackerSessions });
  const stream = createClient(GatewayService, attackerTransport).connect(frames(), {
    ...auth(member.token),
    signal: abort.signal,
  });
  // Take the response iterator's first step only, so the call starts; then never read again.
  const iterator = stream[Symbol.asyncIterator]();
  void iterator.next().catch(() => {});
  sessions.abort();
  return {
    stop: () => {
      abort.abort();
      attackerSessions.abort();
    },
    describe: () => "one stream, never read, 50 sync requests of 1,000 entries over 300 x 60 KB",
  };
}

async function runOne(name: AttackName, seconds: number): Promise<AttackReport> {
  const server = await spawnServer({ env: defaultEnv() });
  const sessions = new Http2SessionManager(server.url);
  try {
    const transport = createGrpcTransport({ baseUrl: server.url, sessionManager: sessions });
    const accounts = createClient(AccountService, transport);
    const conversations = createClient(ConversationService, transport);
    const r = await accounts.register({
      username: `bystander_${Date.now().toString(36)}`,
      deviceName: "bench",
    });
    const { accessToken } = await accounts.createToken({
      deviceId: r.credential!.deviceId,
      deviceSecret: r.credential!.deviceSecret,
    });
    const before = await measure(server, conversations, accessToken, 3000);
    let stop: () => void;
    let describe: () => string;
    let finished: Promise<string> | undefined;
    if (name === "slow-reader") {
      ({ stop, describe } = await slowReader(server.url));
    } else {
      const child = attackInChild(name, server.url, seconds, 0);
      finished = child.exited.then(() => child.lastLine());
      stop = child.stop;
      describe = child.lastLine;
    }
    const during = await measure(server, conversations, accessToken, seconds * 1000);
    const attacker = finished ? await finished : describe();
    stop();
    const after = await measure(server, conversations, accessToken, 3000);
    return { attack: name, before, during, after, attacker };
  } finally {
    sessions.abort();
    await server.stop();
  }
}

function formatPhase(label: string, p: Phase): string {
  return `  ${label.padEnd(7)} RSS max ${p.rssMaxMiB.toFixed(0).padStart(5)} MiB   bystander p50 ${p.p50Ms.toFixed(1).padStart(7)} ms  p99 ${p.p99Ms.toFixed(1).padStart(7)} ms  (${p.calls} calls, ${p.failures} failed)`;
}

export async function runAttacks(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      attack: { type: "string" },
      seconds: { type: "string", default: "10" },
      json: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help || values.attack === undefined) {
    process.stdout.write(USAGE);
    return;
  }
  if (!(ATTACKS as readonly string[]).includes(values.attack))
    throw new Error(`--attack: one of ${ATTACKS.join(", ")}`);
  const seconds = Number(values.seconds);
  if (!Number.isFinite(seconds) || seconds < 1 || seconds > 600) throw new Error("--seconds: 1 to 600");
  const names: AttackName[] =
    values.attack === "all" ? ["half-open", "idle", "slow-reader"] : [values.attack as AttackName];
  for (const name of names) {
    const report = await runOne(name, seconds);
    if (values.json) {
      process.stdout.write(`${JSON.stringify(report)}\n`);
      continue;
    }
    process.stdout.write(
      [
        `attack ${name} (${seconds} s, attacker 127.0.0.2, bystander 127.0.0.1, default limits)`,
        formatPhase("before", report.before),
        formatPhase("during", report.during),
        formatPhase("after", report.after),
        `  attacker: ${report.attacker}`,
        "",
      ].join("\n"),
    );
  }
}
