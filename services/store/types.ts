/**
 * The storage ports of Switchboard. Every stateful service talks to one of these contracts; the
 * embedded engine (LMDB) and the distributed engine (ScyllaDB) implement them, and one shared
 * conformance suite (services/store/conformance) runs against each.
 *
 * Contract for every method: a promise that resolves means the write is durable (fsync'd for the
 * embedded store, a quorum write for ScyllaDB). Failures reject with a StoreError (errors.ts)
 * when they are a domain condition, or with the driver's error for I/O failures.
 *
 * The ports are declared in ports/ (conversations, accounts, keys, and the engine that holds them
 * with its shard leases); this file is the one name every caller imports them by.
 */
export type * from "./ports/accounts.js";
export type * from "./ports/conversations.js";
export type * from "./ports/engine.js";
export type * from "./ports/keys.js";
