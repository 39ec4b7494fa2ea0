// An echo bot for Switchboard, written against the generated stubs in gen/ only.
// Run it (with a server on :7420, `npm start`):
//   node --import tsx examples/bot/main.ts --username echo_bot --mode stream
// Then send it a direct message from a profile without encryption (the bot has no Signal keys):
//   ./bin/switchboard.js register pat --no-encryption --profile .switchboard/pat
//   ./bin/switchboard.js send echo_bot hello --profile .switchboard/pat
// docs/integrations.md walks through it.
import { parseArgs } from "node:util";
import { connectApi, loadOrRegister } from "./api.js";
import { runStream } from "./stream.js";
import { runUnary } from "./unary.js";

const { values: args } = parseArgs({
  options: {
    server: { type: "string", default: "http://127.0.0.1:7420" },
    username: { type: "string", default: "echo_bot" },
    state: { type: "string" },
    mode: { type: "string", default: "stream" },
    "poll-ms": { type: "string", default: "1000" },
  },
});
const mode = args.mode;
if (mode !== "stream" && mode !== "unary") {
  console.error(
    "usage: main.ts [--server URL] [--username NAME] [--state FILE] [--mode stream|unary] [--poll-ms N]",
  );
  process.exit(2);
}
const statePath = args.state ?? `.switchboard/bots/${args.username}.json`;
const log = (line: string) => console.log(`${new Date().toISOString()} ${line}`);

const stopping = new AbortController();
for (const sig of ["SIGINT", "SIGTERM"] as const)
  process.once(sig, () => {
    log(`${sig}: stopping`);
    stopping.abort();
    // A stuck stream must not keep the bot alive; whatever was not acked comes back next run.
    setTimeout(() => process.exit(1), 5_000).unref();
  });

// Registers on the first run, reuses the saved credentials after that.
const state = await loadOrRegister(args.server, statePath, args.username);
log(`bot ${args.username} (${state.userId}), device ${state.deviceId}, ${mode} mode, ${args.server}`);
const api = connectApi(args.server, state);
try {
  if (mode === "stream") await runStream(api, state.userId, stopping.signal, log);
  else await runUnary(api, state.userId, Number(args["poll-ms"]), stopping.signal, log);
  log("stopped");
} catch (err) {
  log(`fatal: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
} finally {
  api.close();
}
