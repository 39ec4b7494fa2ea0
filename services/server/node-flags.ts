/**
 * The Node (V8) flags a server process runs with: `npm start` (package.json), the container image
 * (its NODE_OPTIONS), every process of `switchboard mesh`, and the bench's server. They are
 * command-line flags because V8 sizes its heap before any of our code runs; node-flags.test.ts
 * holds package.json and the Dockerfile to this list.
 *
 * --max-semi-space-size=64: a young generation of 64 MiB semi-spaces instead of V8's 16 MiB. A
 * send allocates about 40 KB of short-lived objects on its way (frames, messages, promises) and
 * many of them live for the few milliseconds of a group commit; with the small default they
 * survive two scavenges and are promoted, and the old generation's collections then cost. With
 * it, GC fell from 21 to 11 % of the main thread at 5,000 msgs/s, and 1,000 devices in max mode
 * took 21 % more sends (docs/benchmarks.md, "Tenth pass"); it costs about 40 MB more RSS.
 */
export const SERVER_NODE_FLAGS: readonly string[] = ["--max-semi-space-size=64"];
