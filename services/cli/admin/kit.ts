import type { Client } from "@connectrpc/connect";
import type { Command } from "commander";
import type { AdminService } from "../../../gen/switchboard/internal/v1/admin_pb.js";

/** What every `switchboard admin` command is built with (admin.ts makes it; users.ts uses it). */

/** Where admin output goes; replaceable so the commands can run inside tests. */
export interface AdminIo {
  /** A line of results. */
  out(line: string): void;
  /** A line of diagnostics. */
  err(line: string): void;
  /** The environment to read SWITCHBOARD_TOKEN_KEY from. */
  env: NodeJS.ProcessEnv;
}

/** Options every admin command takes. */
export interface AdminOptions {
  url: string[];
  dataDir?: string;
  json?: boolean;
  /** Who is acting, for the servers' audit log. */
  operator?: string;
}

/** An action against one process's admin service. */
export type AdminAction<A extends unknown[]> = (
  client: Client<typeof AdminService>,
  url: string,
  opts: AdminOptions,
  ...args: A
) => Promise<void>;

/** The helpers admin.ts gives the files that add commands. */
export interface AdminKit {
  io: AdminIo;
  /** Adds a command with the options every admin command takes (--url, --data-dir, --json, --operator). */
  cmd(spec: string, description: string, urlHelp: string, parent?: Command): Command;
  /** Runs an action against each --url (exactly one when single), printing failures per URL. */
  run<A extends unknown[]>(
    action: AdminAction<A>,
    single: boolean,
  ): (...args: [...A, AdminOptions, Command]) => Promise<void>;
}
