import { type Command, InvalidArgumentError } from "commander";
import { AUDIENCES, type Audience } from "../privacy.js";
import { DEFAULT_SERVER } from "./settings.js";

/** Options every client command takes. */
export interface GlobalOptions {
  /** --server: the server's URL (see ./settings.ts for what applies without it). */
  server?: string;
  /** --profile: the profile directory (see ./settings.ts). */
  profile?: string;
  /** --encryption (true), --no-encryption (false), or neither (the profile's own mode). */
  encryption?: boolean;
  /** --accept-unencrypted: show plaintext entries from contacts who encrypt (refused by default). */
  acceptUnencrypted?: boolean;
}

/** A client command under `parent`, with the options every client command takes. */
export function clientCommand(parent: Command, spec: string, description: string): Command {
  return parent
    .command(spec)
    .description(description)
    .option("--server <url>", `server URL (env SWITCHBOARD_URL, else the profile's, else ${DEFAULT_SERVER})`)
    .option("--profile <dir>", "profile directory (env SWITCHBOARD_PROFILE, default ~/.switchboard/profile)")
    .option(
      "--encryption",
      "end-to-end encryption (the default for new profiles; turns it on for good in a profile made without it)",
    )
    .option(
      "--no-encryption",
      "no end-to-end encryption, to talk to clients without it (a profile registered so stays so)",
    )
    .option(
      "--accept-unencrypted",
      "show entries that arrive without encryption from contacts who encrypt (by default they are refused: the server may have stripped the encryption)",
    );
}

/** Parses a privacy audience option (`privacy --groups/--direct`). */
export function audience(value: string): Audience {
  if (!(AUDIENCES as readonly string[]).includes(value)) {
    throw new InvalidArgumentError(`expected ${AUDIENCES.join(", ")}`);
  }
  return value as Audience;
}

/** Parses an on/off option (`privacy --read-receipts`). */
export function onOff(value: string): boolean {
  if (value !== "on" && value !== "off") throw new InvalidArgumentError("expected on or off");
  return value === "on";
}

/** Parses a count option (`--after`, `--limit`); commander prints the usage error. */
export function nonNegative(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError("a non-negative integer");
  return n;
}

/** Parses a seq argument (`download <with> <seq>`): the #number an entry is shown with. */
export function positiveSeq(value: string): bigint {
  if (!/^[0-9]+$/.test(value) || BigInt(value) < 1n) {
    throw new Error(`"${value}" is not a seq (the #number of an entry, from history or listen)`);
  }
  return BigInt(value);
}

/** Checks a group id argument (`group add|remove <groupId>`) before any call is made. */
export function requireGroupId(id: string): string {
  if (!id.startsWith("g_")) throw new Error(`"${id}" is not a group id (they start with g_)`);
  return id;
}
