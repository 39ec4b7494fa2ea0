import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Device, SetPushTargetRequestSchema, User } from "../../gen/switchboard/v1/accounts_pb.js";
import { type PrivacyChoices, privacyChangesToWire, privacyFromWire } from "../privacy.js";
import type { ServerConnection } from "../transport.js";
import type { DeviceCredentials } from "../types.js";
import { UNARY_TIMEOUT_MS } from "./context.js";
import { required } from "./errors.js";

/** AccountService calls of a signed-in device: users, link codes, push targets, privacy, devices. */
export class Accounts {
  constructor(private readonly conn: ServerConnection) {}

  /** Looks users up by id and/or username; unknown ones are left out. */
  async lookupUsers(query: { userIds?: readonly string[]; usernames?: readonly string[] }): Promise<User[]> {
    const res = await this.conn.accounts.lookupUsers({
      userIds: [...(query.userIds ?? [])],
      usernames: [...(query.usernames ?? [])],
    });
    return res.users;
  }

  /** One user by username; NOT_FOUND if there is none. */
  async userByUsername(username: string): Promise<User> {
    const [user] = await this.lookupUsers({ usernames: [username] });
    if (user === undefined) throw new ConnectError(`no user named "${username}"`, Code.NotFound);
    return user;
  }

  async createLinkCode(): Promise<{ code: string; expiresAtMs: bigint }> {
    const res = await this.conn.accounts.createLinkCode({});
    return { code: res.code, expiresAtMs: res.expiresAtMs };
  }

  async setPushTarget(target: MessageInitShape<typeof SetPushTargetRequestSchema>["target"]): Promise<void> {
    await this.conn.accounts.setPushTarget(target === undefined ? {} : { target });
  }

  async removePushTarget(): Promise<void> {
    await this.conn.accounts.removePushTarget({});
  }

  async getPrivacy(): Promise<PrivacyChoices> {
    return privacyFromWire((await this.conn.accounts.getPrivacy({})).settings);
  }

  async setPrivacy(changes: Partial<PrivacyChoices>): Promise<PrivacyChoices> {
    const res = await this.conn.accounts.setPrivacy({ settings: privacyChangesToWire(changes) });
    return privacyFromWire(res.settings);
  }

  async setDisplayName(displayName: string): Promise<User> {
    return required((await this.conn.accounts.setProfile({ displayName })).user, "user");
  }

  async listDevices(includeRevoked: boolean): Promise<Device[]> {
    return (await this.conn.accounts.listDevices({ includeRevoked })).devices;
  }

  async revokeDevice(deviceId: string): Promise<Device | undefined> {
    return (await this.conn.accounts.revokeDevice({ deviceId })).device;
  }
}

/** Registers a new user with a first device (no profile yet); returns the device's credentials. */
export async function registerAccount(
  conn: ServerConnection,
  serverUrl: string,
  request: { username: string; displayName: string; deviceName: string; inviteToken: string },
): Promise<DeviceCredentials> {
  const res = await conn.accounts.register(request, { timeoutMs: UNARY_TIMEOUT_MS });
  return credentialsFrom(serverUrl, res.user, res.credential);
}

/** Joins an existing user with a link code (no profile yet); returns the device's credentials. */
export async function linkAccount(
  conn: ServerConnection,
  serverUrl: string,
  request: { code: string; deviceName: string },
): Promise<DeviceCredentials> {
  const res = await conn.accounts.linkDevice(request, { timeoutMs: UNARY_TIMEOUT_MS });
  return credentialsFrom(serverUrl, res.user, res.credential);
}

function credentialsFrom(
  serverUrl: string,
  user: User | undefined,
  credential: { userId: string; deviceId: string; deviceSecret: string } | undefined,
): DeviceCredentials {
  const u = required(user, "user");
  const c = required(credential, "credential");
  return {
    serverUrl,
    userId: c.userId || u.userId,
    username: u.username,
    deviceId: c.deviceId,
    deviceSecret: c.deviceSecret,
  };
}
