import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { VARIABLES } from "./variables.js";

const DOC = join(import.meta.dirname, "../../../docs/configuration.md");

/** Every variable the schema reads, with its default when it has one that is a plain value. */
function schemaVariables(): Map<string, unknown> {
  const out = new Map<string, unknown>();
  for (const section of Object.values(VARIABLES)) {
    for (const [name, schema] of Object.entries(section.shape)) {
      // What an unset variable becomes; a required one (SCYLLA_CONTACT_POINTS) has no default.
      const unset = (schema as { safeParse(v: unknown): { success: boolean; data?: unknown } }).safeParse(
        undefined,
      );
      out.set(name, unset.success ? unset.data : undefined);
    }
  }
  return out;
}

/** The rows of the doc's tables whose first cell names a variable: name to default cell. */
function documentedVariables(markdown: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of markdown.split("\n")) {
    const row = /^\| `([A-Z][A-Z0-9_]+)` \| ([^|]*) \|/.exec(line);
    if (row) out.set(row[1]!, row[2]!.trim());
  }
  return out;
}

/** How a default must appear in its cell: numbers bare, strings and booleans in backticks. */
function shows(cell: string, value: unknown): boolean {
  if (typeof value === "number")
    return new RegExp(`(^|[^0-9.])${String(value).replace(".", "\\.")}($|[^0-9])`).test(cell);
  if (typeof value === "string" || typeof value === "boolean") return cell.includes(`\`${String(value)}\``);
  if (Array.isArray(value)) return value.every((v) => shows(cell, v));
  return true;
}

/** What is wrong between the schema and a configuration.md text; empty when they agree. */
function problems(markdown: string): string[] {
  const known = schemaVariables();
  const documented = documentedVariables(markdown);
  const out: string[] = [];
  for (const [name, value] of known) {
    const cell = documented.get(name);
    if (cell === undefined) out.push(`${name} is read but not documented`);
    else if (!shows(cell, value))
      out.push(`${name}: the doc says "${cell}", the default is ${JSON.stringify(value)}`);
  }
  for (const name of documented.keys()) if (!known.has(name)) out.push(`${name} is documented but not read`);
  return out;
}

describe("docs/configuration.md", () => {
  const doc = readFileSync(DOC, "utf8");

  it("documents every variable the configuration reads, with its default, and no other", () => {
    assert.deepEqual(problems(doc), []);
  });

  it("the check notices a missing row, a wrong default and a row for nothing", () => {
    const missing = doc.replace(/^\| `SWITCHBOARD_MAX_GROUP_SIZE` .*\n/m, "");
    assert.deepEqual(problems(missing), ["SWITCHBOARD_MAX_GROUP_SIZE is read but not documented"]);
    const wrong = doc.replace("| `SWITCHBOARD_PORT` | `7420` |", "| `SWITCHBOARD_PORT` | `7421` |");
    assert.match(problems(wrong).join("\n"), /SWITCHBOARD_PORT: the doc says "`7421`", the default is 7420/);
    const extra = `${doc}\n| \`SWITCHBOARD_NOTHING\` | none | nothing |\n`;
    assert.deepEqual(problems(extra), ["SWITCHBOARD_NOTHING is documented but not read"]);
  });
});
