import type { Command } from "commander";
import { registerAccountCommands } from "./commands/account.js";
import { registerAvatar } from "./commands/avatar.js";
import { registerCall } from "./commands/call.js";
import { registerChat } from "./commands/chat.js";
import { registerConversationLists } from "./commands/conversations.js";
import { registerDisappearing } from "./commands/disappearing.js";
import { registerDownload } from "./commands/download.js";
import { registerGroupCommands } from "./commands/groups.js";
import { registerHistory } from "./commands/history.js";
import { registerListen } from "./commands/listen.js";
import { registerPins } from "./commands/pins.js";
import { registerPrivacy } from "./commands/privacy.js";
import { registerSafety } from "./commands/safety.js";
import { registerSafetyNumber } from "./commands/safety-number.js";
import { registerSend } from "./commands/send.js";
import { type CliIo, processIo } from "./io.js";

export { formatEntry } from "./format.js";
export { type CliIo, describeError } from "./io.js";
export { resolveConversation } from "./names.js";

/**
 * The client commands, one module each (or per small family) under ./commands/, in the order
 * `switchboard --help` lists them. Their shared parts: ./options.ts (the options every command
 * takes and the argument parsers), ./session.ts (opening the profile's client), ./names.ts and
 * ./format.ts (how users, conversations and entries are shown), ./io.ts (where output goes, and
 * the one line a failure prints), ./settings.ts (the environment).
 *
 * The CLI starts in well under half a second because defining the commands loads only commander
 * and these small modules: the client (libsignal, the transport, the profile) is imported inside
 * the actions (session.ts's withClient, `await import(...)` in the commands), never at the top of a
 * module here. test/release/startup.test.ts checks which modules `--help` loads.
 */
const COMMANDS: ReadonlyArray<(program: Command, io: CliIo) => void> = [
  registerAccountCommands,
  registerSend,
  registerDownload,
  registerSafetyNumber,
  registerListen,
  registerPrivacy,
  registerAvatar,
  registerSafety,
  registerGroupCommands,
  registerDisappearing,
  registerPins,
  registerConversationLists,
  registerHistory,
  registerChat,
  registerCall,
];

/**
 * Adds the client commands (register, link, send, download, safety-number, listen, chat, call,
 * answer, groups, history, ...) to a commander program. Each takes --server, --profile and --[no-]encryption;
 * errors print one line and exit 1.
 */
export function registerClientCommands(program: Command, io: CliIo = processIo): void {
  for (const register of COMMANDS) register(program, io);
}
