import { create } from "@bufbuild/protobuf";
import { BusEventSchema, PrivacyChangedSchema } from "../../gen/switchboard/internal/v1/events_pb.js";
import {
  type PrivacySettings,
  PrivacySettingsSchema,
  PrivacyAudience as WireAudience,
} from "../../gen/switchboard/v1/accounts_pb.js";
import type { EventBus } from "../bus/types.js";
import type { PrivacyDefaults } from "../common/config.js";
import { InvalidInputError, NotFoundError } from "../common/errors.js";
import type { Logger } from "../common/log.js";
import { isStoreError } from "../store/errors.js";
import type { AccountStore, PrivacyAudience, PrivacyRecord } from "../store/types.js";

/** Every setting with the value in force: the user's own, or the server's default. */
export type PrivacyInForce = Required<PrivacyRecord>;

const TO_WIRE: Record<PrivacyAudience, WireAudience> = {
  everyone: WireAudience.EVERYONE,
  contacts: WireAudience.CONTACTS,
  nobody: WireAudience.NOBODY,
};

/** A wire audience as stored; undefined for UNSPECIFIED and for values this build does not know. */
export function audienceFromWire(value: WireAudience): PrivacyAudience | undefined {
  switch (value) {
    case WireAudience.EVERYONE:
      return "everyone";
    case WireAudience.CONTACTS:
      return "contacts";
    case WireAudience.NOBODY:
      return "nobody";
    default:
      return undefined;
  }
}

/** Settings in force as sent to clients. */
export function privacyToWire(settings: PrivacyInForce): PrivacySettings {
  return create(PrivacySettingsSchema, {
    groupAdd: TO_WIRE[settings.groupAdd],
    directOpen: TO_WIRE[settings.directOpen],
    lastSeen: TO_WIRE[settings.lastSeen],
    readReceipts: settings.readReceipts,
    profile: TO_WIRE[settings.profile],
  });
}

/**
 * The changes a SetPrivacy request asks for: UNSPECIFIED leaves a setting alone; a number that
 * is no audience (a newer client's value, or garbage) is INVALID_ARGUMENT, never stored.
 */
export function privacyChangesFromWire(settings: PrivacySettings | undefined): PrivacyRecord {
  const changes: PrivacyRecord = {};
  if (settings === undefined) return changes;
  const fields = [
    ["group_add", "groupAdd", settings.groupAdd],
    ["direct_open", "directOpen", settings.directOpen],
    ["last_seen", "lastSeen", settings.lastSeen],
    ["profile", "profile", settings.profile],
  ] as const;
  for (const [name, key, value] of fields) {
    if (value === WireAudience.UNSPECIFIED) continue;
    const audience = audienceFromWire(value);
    if (audience === undefined) {
      throw new InvalidInputError(
        `settings.${name}: not a PrivacyAudience (${value}); use EVERYONE, CONTACTS or NOBODY`,
      );
    }
    changes[key] = audience;
  }
  // Absent (proto3 optional) leaves it alone; false is a choice, not "unset".
  if (settings.readReceipts !== undefined) changes.readReceipts = settings.readReceipts;
  return changes;
}

/**
 * Users' privacy settings: what they chose over the server's defaults. Every change is broadcast
 * as PrivacyChanged, so gateways drop their cached copy (services/gateway/privacy.ts enforces
 * last seen and read receipts) and the user's other devices are told.
 */
export class Privacy {
  constructor(
    private readonly store: AccountStore,
    private readonly defaults: PrivacyDefaults,
    private readonly log: Logger,
    private readonly bus?: EventBus,
  ) {}

  private inForce(record: PrivacyRecord | undefined): PrivacyInForce {
    return {
      groupAdd: record?.groupAdd ?? this.defaults.groupAdd,
      directOpen: record?.directOpen ?? this.defaults.directOpen,
      lastSeen: record?.lastSeen ?? this.defaults.lastSeen,
      readReceipts: record?.readReceipts ?? this.defaults.readReceipts,
      profile: record?.profile ?? this.defaults.profile,
    };
  }

  /** The user's settings in force. */
  async get(userId: string): Promise<PrivacyInForce> {
    return this.inForce((await this.store.getPrivacy([userId])).get(userId));
  }

  /** Changes the given settings of the user; returns every setting in force afterwards. */
  async set(userId: string, changes: PrivacyRecord): Promise<PrivacyInForce> {
    try {
      const stored = await this.store.setPrivacy(userId, changes);
      if (Object.keys(changes).length > 0) {
        this.log.info({ userId, ...changes }, "privacy settings changed");
        await this.changed(userId);
      }
      return this.inForce(stored);
    } catch (err) {
      if (isStoreError(err, "not_found")) throw new NotFoundError("no such user");
      throw err;
    }
  }

  /** Tells every gateway: they drop their copy, and tell the user's streams (all devices). */
  private async changed(userId: string): Promise<void> {
    if (this.bus === undefined) return;
    const deviceIds = (await this.store.listDevices(userId))
      .filter((d) => d.revokedAtMs === 0)
      .map((d) => d.deviceId);
    this.bus.broadcast([
      create(BusEventSchema, {
        event: { case: "privacyChanged", value: create(PrivacyChangedSchema, { userId, deviceIds }) },
      }),
    ]);
  }

  /** The settings in force of each user asked for, in the order asked (unknown users: defaults). */
  async ofUsers(userIds: readonly string[]): Promise<{ userId: string; settings: PrivacyInForce }[]> {
    const stored = await this.store.getPrivacy(userIds);
    return userIds.map((userId) => ({ userId, settings: this.inForce(stored.get(userId)) }));
  }
}
