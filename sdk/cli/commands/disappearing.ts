import type { Command } from "commander";
import { timerLabel } from "../format.js";
import { type CliIo, run } from "../io.js";
import { resolveConversation } from "../names.js";
import { clientCommand, type GlobalOptions } from "../options.js";
import { withClient } from "../session.js";

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3_600, d: 86_400 };

/** "off", or a duration such as 24h, 7d, 90d (the default timers) or 3600s, in seconds. */
export function parseTimer(value: string): number {
  if (value === "off" || value === "0") return 0;
  const m = /^([1-9][0-9]{0,8})([smhd])$/.exec(value);
  if (m === null) throw new Error(`not a timer: "${value}" (write off, 24h, 7d or 90d)`);
  return Number(m[1]) * UNITS[m[2]!]!;
}

/** `disappearing <conversation> <off|24h|7d|90d>`. */
export function registerDisappearing(program: Command, io: CliIo): void {
  clientCommand(
    program,
    "disappearing <conversation> <timer>",
    "set a conversation's disappearing messages (username, group id or conversation id): off, 24h, 7d or 90d; messages sent afterwards disappear that long after they were sent, everywhere",
  )
    .option("--admins-only", "groups: only admins may change the timer from now on (admins only)")
    .action(
      run(io, async (target: string, timer: string, opts: GlobalOptions & { adminsOnly?: boolean }) => {
        const seconds = parseTimer(timer);
        await withClient(opts, io, "none", async ({ client }) => {
          const conversationId = await resolveConversation(client, target);
          const entry = await client.setDisappearingTimer(conversationId, seconds, {
            adminsOnly: opts.adminsOnly === true,
          });
          const what = seconds === 0 ? "off" : `${timerLabel(seconds)}`;
          io.out(
            entry === undefined
              ? `disappearing messages were already ${what}`
              : `disappearing messages ${seconds === 0 ? "off" : `after ${what}`} (#${entry.seq})`,
          );
        });
      }),
    );
}
