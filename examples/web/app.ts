/**
 * A plaintext chat page on Switchboard's web binding (docs/protocol.md, "The web binding"):
 * connect-web over fetch, a Subscribe stream for everything the server sends, and unary calls for
 * what the device says (Send, Ack, SetTyping). Each browser profile is one user with one device,
 * its credentials in localStorage. Entries are kept by (conversation, seq), so a re-delivery
 * (at-least-once) is dropped, and shown in seq order; the page acks what it received, so after a
 * reload or a lost connection the server resumes after the last ack.
 *
 * Query parameters: `server` (default http://127.0.0.1:7420) and `protocol` (`connect`, the
 * default, or `grpc-web`).
 */
import { type Client, Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import { AccountService } from "../../gen/switchboard/v1/accounts_pb.js";
import { ConversationService } from "../../gen/switchboard/v1/conversations_pb.js";
import type { Entry } from "../../gen/switchboard/v1/entry_pb.js";
import { type ConnectResponse, GatewayService, ReceiptKind } from "../../gen/switchboard/v1/gateway_pb.js";

interface Credentials {
  userId: string;
  username: string;
  deviceId: string;
  deviceSecret: string;
}

const params = new URLSearchParams(location.search);
const serverUrl = params.get("server") ?? "http://127.0.0.1:7420";
const protocol = params.get("protocol") === "grpc-web" ? "grpc-web" : "connect";
const storageKey = `switchboard-web:${serverUrl}`;

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const status = (text: string) => {
  $("status").textContent = text;
};

let credentials: Credentials | undefined;
let token = "";
let tokenExpiresAtMs = 0;
const auth: Interceptor = (next) => (req) => {
  if (token !== "") req.header.set("authorization", `Bearer ${token}`);
  return next(req);
};
const transport = (protocol === "grpc-web" ? createGrpcWebTransport : createConnectTransport)({
  baseUrl: serverUrl,
  interceptors: [auth],
});
const accounts: Client<typeof AccountService> = createClient(AccountService, transport);
const conversations: Client<typeof ConversationService> = createClient(ConversationService, transport);
const gateway: Client<typeof GatewayService> = createClient(GatewayService, transport);

/** Entries by conversation and seq: the one copy of each, whatever the server re-delivers. */
const entries = new Map<string, Map<bigint, Entry>>();
/** Usernames by user id, as looked up. */
const names = new Map<string, string>();
/** Per conversation, the highest seq other members have received and read (receipts). */
const receipts = new Map<string, { delivered: bigint; read: bigint }>();
let current: string | undefined;
let typingUntil = 0;
let lastTypingSent = 0;

/** What the page received on its streams, as "conversation:seq", for tests and curiosity. */
const received: string[] = [];
/** Cursors to ack (delivered and read), coalesced while an Ack is in flight. */
const toAck = new Map<string, bigint>();
let acking: Promise<void> | undefined;

async function signIn(c: Credentials): Promise<void> {
  const t = await accounts.createToken({ deviceId: c.deviceId, deviceSecret: c.deviceSecret });
  token = t.accessToken;
  tokenExpiresAtMs = Number(t.expiresAtMs);
  credentials = c;
  names.set(c.userId, c.username);
  $("me").textContent = c.username;
  $("signup").hidden = true;
  $("chat").hidden = false;
}

/** Renews the access token a minute before it expires (the stream itself outlives it). */
async function freshToken(): Promise<void> {
  if (credentials !== undefined && Date.now() > tokenExpiresAtMs - 60_000) await signIn(credentials);
}

async function nameOf(userId: string): Promise<string> {
  const known = names.get(userId);
  if (known !== undefined) return known;
  await freshToken();
  const { users } = await accounts.lookupUsers({ userIds: [userId] });
  const name = users[0]?.username ?? userId;
  names.set(userId, name);
  return name;
}

/** Keeps an entry once; returns false for one already held. */
function keep(entry: Entry): boolean {
  let log = entries.get(entry.conversationId);
  if (log === undefined) {
    log = new Map();
    entries.set(entry.conversationId, log);
  }
  if (log.has(entry.seq)) return false;
  log.set(entry.seq, entry);
  return true;
}

/** The Subscribe stream, reopened after a failure with backoff; it resumes from the acks. */
async function listen(): Promise<void> {
  let wait = 500;
  for (;;) {
    try {
      await freshToken();
      status(`connected (${protocol})`);
      for await (const { frame } of gateway.subscribe({})) {
        if (frame !== undefined) await onFrame(frame);
        wait = 500;
      }
      status("the server ended the stream; reconnecting");
    } catch (err) {
      const e = ConnectError.from(err);
      status(`disconnected: ${e.rawMessage}; reconnecting`);
      if (e.code === Code.Unauthenticated) tokenExpiresAtMs = 0;
    }
    await new Promise((r) => setTimeout(r, wait));
    wait = Math.min(wait * 2, 10_000);
  }
}

async function onFrame(frame: ConnectResponse): Promise<void> {
  const f = frame.frame;
  switch (f.case) {
    case "message":
      for (const entry of f.value.entries) {
        received.push(`${entry.conversationId}:${entry.seq}`);
        keep(entry);
        ack(entry.conversationId, entry.seq);
        if (current === undefined && entry.body.case === "message") await open(entry.conversationId);
      }
      render();
      return;
    case "caughtUp":
      status(`up to date (${protocol})`);
      return;
    case "receipt": {
      const r = receipts.get(f.value.conversationId) ?? { delivered: 0n, read: 0n };
      if (f.value.kind === ReceiptKind.READ && f.value.upToSeq > r.read) r.read = f.value.upToSeq;
      if (f.value.upToSeq > r.delivered) r.delivered = f.value.upToSeq;
      receipts.set(f.value.conversationId, r);
      render();
      return;
    }
    case "typing":
      if (f.value.conversationId === current && f.value.userId !== credentials?.userId) {
        typingUntil = f.value.active ? Date.now() + 10_000 : 0;
        $("typing").textContent = f.value.active ? `${await nameOf(f.value.userId)} is typing…` : "";
        setTimeout(() => {
          if (Date.now() >= typingUntil) $("typing").textContent = "";
        }, 10_100);
      }
      return;
    default:
      return;
  }
}

/** Acks an entry once it is kept (delivered, and read as the page shows it); one call at a time. */
function ack(conversationId: string, seq: bigint): void {
  if (seq > (toAck.get(conversationId) ?? 0n)) toAck.set(conversationId, seq);
  acking ??= (async () => {
    while (toAck.size > 0) {
      const cursors = [...toAck].map(([id, s]) => ({ conversationId: id, seq: s }));
      toAck.clear();
      try {
        await freshToken();
        await gateway.ack({ delivered: cursors, read: cursors });
      } catch (err) {
        // Not kept by the server: the entries come again after a reconnect and are dropped here.
        status(`ack failed: ${ConnectError.from(err).rawMessage}`);
      }
    }
    acking = undefined;
  })();
}

async function open(conversationId: string): Promise<void> {
  current = conversationId;
  // Reopened after a reload: the stream brings only what was not acked, the history the rest.
  localStorage.setItem(`${storageKey}:open`, conversationId);
  const { members } = await conversations.getConversation({ conversationId });
  const peer = members.find((m) => m.userId !== credentials?.userId);
  $("title").textContent = peer === undefined ? "chat" : `chat with ${await nameOf(peer.userId)}`;
  // What came before this page knew the conversation (older than its stream's backlog).
  const page = await conversations.getHistory({ conversationId, afterSeq: 0n, limit: 200 });
  for (const e of page.entries) keep(e);
  render();
}

function render(): void {
  const log = $("log");
  log.replaceChildren();
  if (current === undefined) return;
  const mine = credentials?.userId;
  const r = receipts.get(current) ?? { delivered: 0n, read: 0n };
  const sorted = [...(entries.get(current)?.values() ?? [])].sort((a, b) => (a.seq < b.seq ? -1 : 1));
  for (const e of sorted) {
    if (e.body.case !== "message") continue;
    const li = document.createElement("li");
    const text = new TextDecoder().decode(e.body.value.payload);
    const own = e.senderUserId === mine;
    const ticks = !own ? "" : e.seq <= r.read ? " ✓✓ read" : e.seq <= r.delivered ? " ✓✓" : " ✓";
    li.textContent = `${names.get(e.senderUserId) ?? "…"}: ${text}${ticks}`;
    li.className = own ? "mine" : "";
    li.dataset.seq = String(e.seq);
    log.append(li);
    if (!names.has(e.senderUserId)) void nameOf(e.senderUserId).then(render);
  }
}

/** Sends with one client_msg_id for every attempt, so a retry never makes a second message. */
async function send(text: string): Promise<void> {
  if (current === undefined) return;
  const clientMsgId = crypto.randomUUID();
  const entry = {
    conversationId: current,
    clientMsgId,
    body: { case: "message" as const, value: { payload: new TextEncoder().encode(text) } },
  };
  for (let attempt = 0; ; attempt++) {
    try {
      await freshToken();
      await gateway.send({ entry });
      return;
    } catch (err) {
      const e = ConnectError.from(err);
      const retryable = e.code === Code.Unavailable || e.code === Code.ResourceExhausted;
      if (!retryable || attempt >= 5) throw e;
      const hint = Number(e.metadata.get("retry-after-ms") ?? "");
      await new Promise((r) => setTimeout(r, Number.isFinite(hint) && hint > 0 ? hint : 500 * 2 ** attempt));
    }
  }
}

function wire(): void {
  $("register").addEventListener("click", () => {
    const username = $<HTMLInputElement>("username").value.trim();
    void (async () => {
      try {
        const r = await accounts.register({ username, deviceName: "web" });
        const c = {
          userId: r.user!.userId,
          username,
          deviceId: r.credential!.deviceId,
          deviceSecret: r.credential!.deviceSecret,
        };
        localStorage.setItem(storageKey, JSON.stringify(c));
        await signIn(c);
        void listen();
      } catch (err) {
        status(`register failed: ${ConnectError.from(err).rawMessage}`);
      }
    })();
  });
  $("open").addEventListener("click", () => {
    const username = $<HTMLInputElement>("peer").value.trim();
    void (async () => {
      try {
        await freshToken();
        const { users } = await accounts.lookupUsers({ usernames: [username] });
        const peer = users[0];
        if (peer === undefined) return status(`no user named ${username}`);
        names.set(peer.userId, peer.username);
        const { conversation } = await conversations.openDirect({ peerUserId: peer.userId });
        if (conversation !== undefined) await open(conversation.conversationId);
      } catch (err) {
        status(`open failed: ${ConnectError.from(err).rawMessage}`);
      }
    })();
  });
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $<HTMLInputElement>("text");
    const text = input.value;
    if (text === "") return;
    input.value = "";
    send(text).catch((err: unknown) => status(`send failed: ${ConnectError.from(err).rawMessage}`));
  });
  $("text").addEventListener("input", () => {
    if (current === undefined || Date.now() - lastTypingSent < 3000) return;
    lastTypingSent = Date.now();
    gateway.setTyping({ conversationId: current, active: true }).catch(() => {});
  });
  $("signout").addEventListener("click", () => {
    localStorage.removeItem(storageKey);
    localStorage.removeItem(`${storageKey}:open`);
    location.reload();
  });
}

// For tests and the curious: what arrived, and a promise that settles once every ack is answered.
Object.assign(globalThis, {
  switchboardExample: { received, settled: async () => await acking, current: () => current },
});

wire();
const saved = localStorage.getItem(storageKey);
if (saved === null) {
  status(`not registered (server ${serverUrl}, ${protocol})`);
} else {
  const reopen = localStorage.getItem(`${storageKey}:open`);
  signIn(JSON.parse(saved) as Credentials)
    .then(async () => {
      if (reopen !== null) await open(reopen);
      await listen();
    })
    .catch((err: unknown) => status(`sign-in failed: ${ConnectError.from(err).rawMessage}`));
}
