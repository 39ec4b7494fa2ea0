// An end-to-end encrypted echo bot: one device of the TypeScript SDK (sdk/) with encryption on,
// so it reads and answers what the CLI and other SDK clients send by default. The SDK does the
// Signal protocol (keys in the key directory, one ciphertext per device, sender keys in groups,
// the SealedContent format); this file is only the bot's behaviour.
// Run it (with a server on :7420, `npm start`):
//   node --import tsx examples/bot-e2ee/main.ts --username e2ee_bot
// Then `./bin/switchboard.js send e2ee_bot hello --profile .switchboard/alice` (encrypted).
// docs/integrations.md says when a bot needs this and when the stubs-only bots will do.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
// Inside this repository the SDK's sources; an app of its own installs the package and imports
// "@switchboard/sdk" instead (sdk/README.md says how).
import { SwitchboardClient } from "../../sdk/index.js";

const { values: args } = parseArgs({
  options: {
    server: { type: "string", default: "http://127.0.0.1:7420" },
    username: { type: "string", default: "e2ee_bot" },
    profile: { type: "string" },
  },
});
const GROUP_COMMAND = "!echo ";
const MAX_REPLY_CHARS = 1_000;
const profileDir = args.profile ?? `.switchboard/bots/${args.username}`;
const log = (line: string) => console.log(`${new Date().toISOString()} ${line}`);

// The profile holds the credential, the cursors, the outbox and the Signal keys; it must persist
// (and be backed up like a password): a bot that loses it cannot read anything sent to it since.
const bot = existsSync(join(profileDir, "credentials.json"))
  ? await SwitchboardClient.open({ profileDir, serverUrl: args.server, encryption: true })
  : await SwitchboardClient.register({
      serverUrl: args.server,
      profileDir,
      username: args.username,
      displayName: "Echo bot (encrypted)",
      encryption: true,
    });

bot.on("entry", (e) => {
  // The SDK hands over each entry once, in seq order, decrypted; the bot's own sends come back too.
  if (e.senderUserId === bot.userId || e.kind !== "message" || e.payload === undefined) return;
  // It answers only what was encrypted: its replies are encrypted, and a sender without keys could
  // not read them (its plaintext is shown to the bot marked, but not answered).
  if (!e.encrypted) {
    log(`${e.conversationId}#${e.seq} was not encrypted; not answered`);
    return;
  }
  let text = new TextDecoder().decode(e.payload);
  if (e.conversationId.startsWith("g_")) {
    if (!text.startsWith(GROUP_COMMAND)) return;
    text = text.slice(GROUP_COMMAND.length);
  }
  // The key derived from the entry makes a second handling (after a crash) a no-op on the server.
  // send() keeps the reply in the profile's outbox until the server stores it, across restarts,
  // so the listener need not wait for it (the entry is acked when the listener returns).
  bot
    .send(e.conversationId, `echo: ${text.slice(0, MAX_REPLY_CHARS)}`, {
      clientMsgId: `re_${e.conversationId}_${e.seq}`,
    })
    .then(
      (r) => log(`replied to ${e.conversationId}#${e.seq} with #${r.seq} (encrypted)`),
      (err: Error) => log(`reply to ${e.conversationId}#${e.seq} refused: ${err.message}`),
    );
});
bot.on("error", ({ error, fatal }) => {
  log(`${fatal ? "fatal" : "error"}: ${error.message}`);
  if (fatal) process.exitCode = 1;
});
bot.on("decryptFailed", (f) =>
  log(`${f.conversationId}#${f.seq} could not be decrypted: ${f.error.message}`),
);

let stopping = false;
for (const sig of ["SIGINT", "SIGTERM"] as const)
  process.once(sig, () => {
    if (stopping) return;
    stopping = true;
    log(`${sig}: stopping`);
    setTimeout(() => process.exit(1), 5_000).unref();
    // close() acks what was handled; unanswered sends stay in the outbox for the next run.
    bot.close().then(() => log("stopped"));
  });

await bot.connect(); // resolves once the stream is up and the device's keys are in the key directory
log(
  `ready: bot ${bot.username} (${bot.userId}), device ${bot.deviceId}, end-to-end encrypted, ${args.server}`,
);
