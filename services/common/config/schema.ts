/**
 * The building blocks of the configuration schema: zod schemas of one environment variable's text
 * (undefined when unset) that validate it and turn it into its value. Each section file
 * (server.ts, limits.ts, ...) lists its variables as one z.object, in the order they are checked,
 * so the first bad setting is the one reported; docs/configuration.md is checked against these
 * objects (config.test.ts).
 *
 * Messages are built here, not by zod's defaults, because operators and tests know them by heart.
 */
import { z } from "zod";
import { ConfigurationError } from "./error.js";

/** An environment: variable names to their text. process.env is one. */
export type Env = Readonly<Record<string, string | undefined>>;

/** The text of a variable, as given ("" included); undefined when unset. */
export const text = () => z.string().optional();

/** The text of a variable, or fallback when it is unset (an empty value is kept). */
export const textOr = (fallback: string) => z.string().optional().default(fallback);

/** The text of a variable; undefined when unset or empty. */
export const nonEmptyText = () =>
  z
    .string()
    .optional()
    .transform((v) => (v === "" ? undefined : v));

/** "true" turns it on; anything else, or nothing, leaves it off. */
export const flag = () =>
  z
    .string()
    .optional()
    .transform((v) => v === "true");

/** A comma-separated list; blanks between commas are dropped. */
export function list(raw: string | undefined): string[] {
  return (raw ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
}

/** A comma-separated list; an unset variable is an empty list. */
export const listOf = () => z.string().optional().transform(list);

/**
 * A non-negative integer given as text (a variable) or a number (loadConfig's input), named by
 * label in the message. Text is read with Number(), so "" is 0.
 */
export function nonNegativeInt(label: string) {
  return z.unknown().transform((value, ctx) => {
    const n = typeof value === "string" ? Number(value) : value;
    if (typeof n !== "number" || !Number.isInteger(n) || n < 0) {
      ctx.addIssue({
        code: "custom",
        message: `configuration: ${label} must be a non-negative integer, got ${String(value)}`,
      });
      return z.NEVER;
    }
    return n;
  });
}

/** Stops a transform with a message, as is (the messages are the ones operators know). */
export function refuse(ctx: z.RefinementCtx, message: string): never {
  ctx.addIssue({ code: "custom", message });
  return z.NEVER as never;
}

/** A variable holding a non-negative integer; undefined when unset (or, with emptyIsUnset, empty). */
function intText(label: string, emptyIsUnset: boolean): z.ZodType<number | undefined, string | undefined> {
  const int = nonNegativeInt(label);
  return z
    .string()
    .optional()
    .transform((raw, ctx) => {
      if (raw === undefined || (emptyIsUnset && raw === "")) return undefined;
      const parsed = int.safeParse(raw);
      return parsed.success ? parsed.data : refuse(ctx, parsed.error.issues[0]?.message ?? label);
    });
}

/**
 * A variable holding a non-negative integer, or fallback when it is unset. With emptyIsUnset an
 * empty value counts as unset; without it, "" is read as 0 (as the settings always have been).
 */
export function intVariable(
  label: string,
  fallback: number,
  emptyIsUnset: boolean,
): z.ZodType<number, string | undefined> {
  return intText(label, emptyIsUnset).transform((n) => n ?? fallback);
}

/** A variable holding a non-negative integer; undefined when unset or empty. */
export function optionalIntVariable(label: string): z.ZodType<number | undefined, string | undefined> {
  return intText(label, true);
}

/** A variable holding one of allowed; undefined when unset (an empty value is refused). */
export function oneOfVariable<T extends string>(label: string, allowed: readonly T[]) {
  return z
    .string()
    .optional()
    .transform((raw, ctx) => {
      if (raw === undefined) return undefined;
      const message = oneOfMessage(label, raw, allowed);
      return message === undefined ? (raw as T) : refuse(ctx, message);
    });
}

function oneOfMessage(label: string, value: string, allowed: readonly string[]): string | undefined {
  return allowed.includes(value)
    ? undefined
    : `configuration: ${label} must be one of ${allowed.join(", ")}, got "${value}"`;
}

/** An http(s) base URL without its trailing slashes; undefined for nothing or "". */
export function httpUrl(label: string) {
  return z
    .string()
    .optional()
    .transform((value, ctx) => {
      if (value === undefined || value === "") return undefined;
      let url: URL;
      try {
        url = new URL(value);
      } catch {
        return refuse(ctx, `configuration: ${label} is not a URL: "${value}"`);
      }
      if (url.protocol !== "http:" && url.protocol !== "https:")
        return refuse(ctx, `configuration: ${label} must be an http(s) URL, got "${value}"`);
      return value.replace(/\/+$/, "");
    });
}

/** Validates a value with a schema, stopping start-up with the first problem's message. */
export function check<T>(schema: z.ZodType<T>, value: unknown): T {
  const parsed = schema.safeParse(value);
  if (parsed.success) return parsed.data;
  throw new ConfigurationError(parsed.error.issues[0]?.message ?? "configuration: invalid");
}

/** One of allowed, named by label; for loadConfig's input and values already chosen. */
export function oneOf<T extends string>(label: string, value: string, allowed: readonly T[]): T {
  const message = oneOfMessage(label, value, allowed);
  if (message !== undefined) throw new ConfigurationError(message);
  return value as T;
}

/** A non-negative integer, named by label; for loadConfig's input. */
export function int(label: string, value: unknown): number {
  return check(nonNegativeInt(label), value);
}

/**
 * The environment without the variables whose value loadConfig's input gives instead: those are
 * neither read nor validated, as an explicit setting replaces them whole.
 */
export function without(env: Env, given: Record<string, unknown>): Env {
  const out: Record<string, string | undefined> = { ...env };
  for (const [variable, value] of Object.entries(given)) if (value !== undefined) delete out[variable];
  return out;
}
