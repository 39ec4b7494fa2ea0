import { spawn } from "node:child_process";
import * as http2 from "node:http2";
import { connect, type Socket } from "node:net";
import { fileURLToPath } from "node:url";

/**
 * Hostile clients at the transport level, as an attacker with the docs would write them: raw
 * sockets and node:http2, no Switchboard code. Used by the hostile-client tests (which assert
 * the server's answers) and by `npm run bench -- --attack ...` (which measures what the server
 * holds meanwhile). Every attack is bounded in count and time and targets a loopback address.
 */

/** What one attack left open, and how the server answered it. */
export interface AttackOutcome {
  /** Streams or sockets the attacker opened. */
  opened: number;
  /** Answered with a gRPC status (code -> count), e.g. RESOURCE_EXHAUSTED for over-limit requests. */
  statuses: Map<number, number>;
  /** Streams the server reset (RST_STREAM), by HTTP/2 error code. */
  resets: Map<number, number>;
  /** Connections or sockets the server closed. */
  closedByServer: number;
  /** Stops the attack: closes everything still open. */
  stop(): void;
}

function bump(map: Map<number, number>, key: number): void {
  map.set(key, (map.get(key) ?? 0) + 1);
}

/** An HTTP/2 connection from a chosen local address (127.0.0.x), so attacker and bystander differ. */
export function connectFrom(url: string, localAddress: string): http2.ClientHttp2Session {
  const target = new URL(url);
  return http2.connect(url, {
    createConnection: () => connect({ host: target.hostname, port: Number(target.port), localAddress }),
  });
}

/**
 * Finding 1: many connections, each with many gRPC requests whose envelope announces more bytes
 * than are ever sent, so each request stays half-read. No token is needed (Register).
 */
export function halfOpenRequests(options: {
  url: string;
  localAddress: string;
  connections: number;
  streamsPerConnection: number;
  path?: string;
}): AttackOutcome {
  const path = options.path ?? "/switchboard.v1.AccountService/Register";
  const sessions: http2.ClientHttp2Session[] = [];
  const outcome: AttackOutcome = {
    opened: 0,
    statuses: new Map(),
    resets: new Map(),
    closedByServer: 0,
    stop: () => {
      for (const s of sessions) s.destroy();
    },
  };
  // The envelope header says 101 bytes follow; 100 are sent.
  const partial = Buffer.alloc(105);
  partial.writeUInt32BE(101, 1);
  for (let c = 0; c < options.connections; c++) {
    const session = connectFrom(options.url, options.localAddress);
    sessions.push(session);
    session.on("error", () => {});
    session.once("close", () => outcome.closedByServer++);
    for (let i = 0; i < options.streamsPerConnection; i++) {
      let stream: http2.ClientHttp2Stream;
      try {
        stream = session.request({
          ":method": "POST",
          ":path": path,
          "content-type": "application/grpc",
          te: "trailers",
        });
      } catch {
        break;
      }
      outcome.opened++;
      stream.on("error", () => {});
      stream.on("response", (headers) => {
        const status = headers["grpc-status"];
        if (status !== undefined) bump(outcome.statuses, Number(status));
      });
      stream.on("trailers", (trailers) => {
        const status = trailers["grpc-status"];
        if (status !== undefined) bump(outcome.statuses, Number(status));
      });
      stream.once("close", () => {
        if (stream.rstCode !== undefined && stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR) {
          bump(outcome.resets, stream.rstCode);
        }
      });
      stream.write(partial);
    }
  }
  return outcome;
}

/**
 * Finding 7: bare TCP sockets that never speak, and HTTP/2 sessions that never make a request.
 */
export function idleConnections(options: {
  url: string;
  localAddress: string;
  sockets: number;
  sessions: number;
}): AttackOutcome {
  const target = new URL(options.url);
  const open: Array<Socket | http2.ClientHttp2Session> = [];
  let stopping = false;
  const outcome: AttackOutcome = {
    opened: 0,
    statuses: new Map(),
    resets: new Map(),
    closedByServer: 0,
    stop: () => {
      stopping = true;
      for (const s of open) s.destroy();
    },
  };
  // Counted once connected: a connection the listener's backlog never took is not held.
  const hold = (connection: Socket | http2.ClientHttp2Session): void => {
    open.push(connection);
    connection.on("error", () => {});
    connection.once("connect", () => {
      outcome.opened++;
      connection.once("close", () => {
        if (!stopping) outcome.closedByServer++;
      });
    });
  };
  for (let i = 0; i < options.sockets; i++) {
    const socket = connect({
      host: target.hostname,
      port: Number(target.port),
      localAddress: options.localAddress,
    });
    hold(socket);
    // Read (and drop) what the server sends, or its close would sit unseen behind that data.
    socket.resume();
  }
  for (let i = 0; i < options.sessions; i++) hold(connectFrom(options.url, options.localAddress));
  return outcome;
}

/** A process's resident memory, in bytes, from /proc (Linux). */
export async function rssBytes(pid: number): Promise<number> {
  const { readFile } = await import("node:fs/promises");
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const kb = /VmRSS:\s+(\d+) kB/.exec(status);
  if (!kb) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(kb[1]) * 1024;
}

/** The attacks that run as a program of their own (see `attackInChild`). */
export type ChildAttackName = "half-open" | "idle";

/** What a child attack reports on each line of its stdout. */
interface Report {
  opened: number;
  statuses: Record<string, number>;
  resets: Record<string, number>;
  closedByServer: number;
}

/** A report's counts by code, keyed by number again (JSON keys are strings). */
function byCode(counts: Record<string, number>): Map<number, number> {
  return new Map(Object.entries(counts).map(([code, n]) => [Number(code), n]));
}

function report(outcome: AttackOutcome): Report {
  return {
    opened: outcome.opened,
    statuses: Object.fromEntries(outcome.statuses),
    resets: Object.fromEntries(outcome.resets),
    closedByServer: outcome.closedByServer,
  };
}

/** An attack running in a child process, its outcome as last reported. */
export interface ChildAttack extends AttackOutcome {
  /** The last line the child printed (its outcome as JSON), or "" before the first. */
  lastLine(): string;
  /** Settles when the child has exited and its output is read, after `seconds` or `stop()`. */
  readonly exited: Promise<void>;
}

/**
 * Runs an attack in a process of its own, as an attacker on another host would: a test's or
 * the bench's bystander in this process is then not slowed by the attacker's event loop (20,000
 * streams are seconds of the attacker's CPU), so what it measures is the server. The child
 * reports its outcome every `everyMs` and once more before it exits; the returned outcome
 * follows those reports.
 */
export function attackInChild(
  name: ChildAttackName,
  url: string,
  seconds: number,
  everyMs = 100,
): ChildAttack {
  const program = fileURLToPath(import.meta.url);
  const child = spawn(
    process.execPath,
    ["--import", "tsx", program, name, url, String(seconds), String(everyMs)],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  let last = "";
  let pending = "";
  const outcome: ChildAttack = {
    opened: 0,
    statuses: new Map(),
    resets: new Map(),
    closedByServer: 0,
    lastLine: () => last,
    // "close", not "exit": a process can exit before its last line has been read from the pipe.
    exited: new Promise((resolve) => child.once("close", () => resolve())),
    stop: () => {
      child.kill("SIGKILL");
    },
  };
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
    pending += chunk;
    let newline = pending.indexOf("\n");
    while (newline >= 0) {
      const line = pending.slice(0, newline).trim();
      pending = pending.slice(newline + 1);
      newline = pending.indexOf("\n");
      if (line === "") continue;
      const r = JSON.parse(line) as Report;
      last = line;
      outcome.opened = r.opened;
      outcome.closedByServer = r.closedByServer;
      outcome.statuses = byCode(r.statuses);
      outcome.resets = byCode(r.resets);
    }
  });
  return outcome;
}

/**
 * Run as a program (`node --import tsx bench/attacks.ts NAME URL SECONDS [EVERY_MS]`), an attack
 * gets a process of its own (`attackInChild`). It prints its outcome as one JSON line every
 * EVERY_MS (if given) and once more at the end, then exits.
 */
async function runAsProgram(name: string, url: string, seconds: number, everyMs: number): Promise<void> {
  const outcome =
    name === "half-open"
      ? halfOpenRequests({ url, localAddress: "127.0.0.2", connections: 20, streamsPerConnection: 1000 })
      : name === "idle"
        ? idleConnections({ url, localAddress: "127.0.0.2", sockets: 1500, sessions: 300 })
        : undefined;
  if (outcome === undefined) throw new Error(`unknown attack ${name}`);
  const print = () => process.stdout.write(`${JSON.stringify(report(outcome))}\n`);
  const ticker = everyMs > 0 ? setInterval(print, everyMs) : undefined;
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  clearInterval(ticker);
  print();
  outcome.stop();
  process.exit(0);
}

if (process.argv[1] !== undefined && import.meta.url.endsWith(process.argv[1])) {
  const [name = "", url = "", seconds = "10", everyMs = "0"] = process.argv.slice(2);
  runAsProgram(name, url, Number(seconds), Number(everyMs)).catch((err: unknown) => {
    process.stderr.write(`attack: ${String(err)}\n`);
    process.exit(1);
  });
}
