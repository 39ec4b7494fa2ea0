import { toJson } from "@bufbuild/protobuf";
import { ListReportsResponseSchema } from "../../../gen/switchboard/internal/v1/admin_pb.js";
import { time } from "./format.js";
import type { AdminKit, AdminOptions } from "./kit.js";

/** Zeros and empty lists are printed too, so scripts find every field. */
const JSON_OPTIONS = { alwaysEmitImplicit: true } as const;

/** One line of a disclosed message, its text on one line whatever it holds. */
function oneLine(text: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: a report's text must not move the operator's terminal
  return JSON.stringify(text.replace(/[\u0000-\u001f\u007f]/g, " "));
}

/**
 * `switchboard admin reports [<username-or-id>]`: users' reports, newest first, with what the
 * reporters disclosed. Every call is an audited admin action (the server writes the line).
 */
export function registerReportCommands({ io, cmd, run }: AdminKit): void {
  cmd(
    "reports [username-or-id]",
    "users' reports of other users (of one reported user, or everyone's), newest first, with the messages the reporters disclosed; then `switchboard admin suspend` or `delete`",
    "an accounts process's URL",
  )
    .option("--limit <n>", "at most this many (1 to 500)", (v: string) => Number.parseInt(v, 10), 50)
    .option("--reason <text>", "why you read them, for the audit log (at most 200 characters)", "")
    .action(
      run(async (client, _url, opts, reportedUser: string | undefined) => {
        const o = opts as AdminOptions & { limit: number; reason: string };
        const r = await client.listReports({
          reportedUser: reportedUser ?? "",
          limit: o.limit,
          reason: o.reason,
        });
        if (opts.json) {
          io.out(JSON.stringify(toJson(ListReportsResponseSchema, r, JSON_OPTIONS)));
          return;
        }
        for (const rep of r.reports) {
          const about =
            rep.conversationId === ""
              ? ""
              : rep.targetSeq > 0n
                ? ` about ${rep.conversationId}#${rep.targetSeq}`
                : ` in ${rep.conversationId}`;
          io.out(
            `${rep.reportId}  ${time(rep.createdAtMs)}  reported ${rep.reportedUserId} by ${rep.reporterUserId}${about}: ${oneLine(rep.reason)}`,
          );
          for (const m of rep.messages) {
            io.out(
              `    ${m.conversationId}#${m.seq} ${m.senderUserId} ${time(m.sentAtMs)}: ${oneLine(m.text)}`,
            );
          }
        }
        if (r.reports.length === 0) io.err("no reports");
        if (r.truncated) io.err(`more than ${r.reports.length}: raise --limit`);
      }, true),
    );
}
