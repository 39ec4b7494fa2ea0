/**
 * The Node (V8) flags a server process runs with: `npm start` (package.json), the container image
 * (its NODE_OPTIONS), every process of `switchboard mesh`, and the bench's server. They are
 * command-line flags because V8 sizes its heap before any of our code runs; node-flags.test.ts
 * holds package.json and the Dockerfile to this list.
 *
 * --max-semi-space-size=32: young-generation semi-spaces of 32 MiB instead of V8's 16 MiB. A send
 * allocates about 40 KB of short-lived objects on its way (frames, messages, promises), and many
 * of them live for the few milliseconds of a group commit: with the default they survive two
 * scavenges and are promoted, and the old generation's collections then cost. 64 MiB halved GC's
 * share of the main thread in 1:1 traffic and took a fifth more sends at the ceiling, but cost
 * groups of 100 about a seventh more CPU per delivery and a higher p99; 32 MiB kept most of the
 * first and little of the second (docs/benchmarks.md, "Tenth pass"). About 20 MB more RSS.
 */
export const SERVER_NODE_FLAGS: readonly string[] = ["--max-semi-space-size=32"];
