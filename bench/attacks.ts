import * as http2 from "node:http2";
import { connect, type Socket } from "node:net";

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

/**
 * Run as a program (`node --import tsx bench/attacks.ts NAME URL SECONDS`), an attack gets a
 * process of its own, as an attacker on another host has: the bench's bystander is then not
 * slowed by the attacker's own event loop. It prints its outcome as one JSON line and exits.
 */
async function runAsProgram(name: string, url: string, seconds: number): Promise<void> {
  const outcome =
    name === "half-open"
      ? halfOpenRequests({ url, localAddress: "127.0.0.2", connections: 20, streamsPerConnection: 1000 })
      : name === "idle"
        ? idleConnections({ url, localAddress: "127.0.0.2", sockets: 1500, sessions: 300 })
        : undefined;
  if (outcome === undefined) throw new Error(`unknown attack ${name}`);
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  const report = {
    opened: outcome.opened,
    statuses: Object.fromEntries(outcome.statuses),
    resets: Object.fromEntries(outcome.resets),
    closedByServer: outcome.closedByServer,
  };
  outcome.stop();
  process.stdout.write(`${JSON.stringify(report)}\n`);
  process.exit(0);
}

if (process.argv[1] !== undefined && import.meta.url.endsWith(process.argv[1])) {
  const [name = "", url = "", seconds = "10"] = process.argv.slice(2);
  runAsProgram(name, url, Number(seconds)).catch((err: unknown) => {
    process.stderr.write(`attack: ${String(err)}\n`);
    process.exit(1);
  });
}
