// A second reporter for test/run.mjs: after the TAP stream, it repeats every failed test with its
// file and error, so the end of a long CI log (often all that is kept) names what failed.
// Node's runner calls it with the stream of test events (node:test "custom reporters").
import { relative } from "node:path";

/** @param {AsyncIterable<{ type: string, data: any }>} source */
export default async function* failures(source) {
  const failed = [];
  for await (const event of source) {
    if (event.type !== "test:fail") continue;
    const { name, file, details } = event.data;
    // A suite fails when one of its tests does; the test itself is the useful line.
    if (details?.type === "suite") continue;
    const error = details?.error;
    const cause = error?.cause ?? error;
    const message = cause instanceof Error ? cause.message : String(cause ?? "");
    const lines = message.split("\n").filter((line) => line.trim() !== "");
    failed.push({ name, file: file && relative(process.cwd(), file), lines: lines.slice(0, 12) });
  }
  if (failed.length === 0) return;
  yield `\n# ${failed.length} failed:\n`;
  for (const { name, file, lines } of failed) {
    yield `#  - ${file || "(unknown file)"}: ${name}\n`;
    for (const line of lines) yield `#      ${line}\n`;
  }
}
