import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { PrivacyAudience, PrivacySettingsSchema } from "../../gen/switchboard/v1/accounts_pb.js";
import { wireCodeOf } from "../common/boundary.js";
import { loadPrivacyDefaults } from "../common/config/accounts.js";
import { privacyChangesFromWire, privacyToWire } from "./privacy.js";

describe("privacy settings", () => {
  it("reads the server-wide defaults from input over the environment, refusing unknown audiences", () => {
    const shipped = {
      groupAdd: "everyone",
      directOpen: "everyone",
      lastSeen: "everyone",
      readReceipts: true,
      profile: "everyone",
    };
    assert.deepEqual(loadPrivacyDefaults(undefined, {}), shipped);
    assert.deepEqual(
      loadPrivacyDefaults(undefined, {
        SWITCHBOARD_PRIVACY_GROUP_ADD_DEFAULT: "contacts",
        SWITCHBOARD_PRIVACY_DIRECT_OPEN_DEFAULT: "nobody",
        SWITCHBOARD_PRIVACY_LAST_SEEN_DEFAULT: "contacts",
        SWITCHBOARD_PRIVACY_READ_RECEIPTS_DEFAULT: "off",
        SWITCHBOARD_PRIVACY_PROFILE_DEFAULT: "nobody",
      }),
      {
        groupAdd: "contacts",
        directOpen: "nobody",
        lastSeen: "contacts",
        readReceipts: false,
        profile: "nobody",
      },
    );
    assert.deepEqual(
      loadPrivacyDefaults(
        { groupAdd: "nobody", readReceipts: true },
        {
          SWITCHBOARD_PRIVACY_GROUP_ADD_DEFAULT: "contacts",
          SWITCHBOARD_PRIVACY_READ_RECEIPTS_DEFAULT: "off",
        },
      ),
      { ...shipped, groupAdd: "nobody" },
    );
    assert.throws(
      () => loadPrivacyDefaults(undefined, { SWITCHBOARD_PRIVACY_READ_RECEIPTS_DEFAULT: "yes" }),
      /SWITCHBOARD_PRIVACY_READ_RECEIPTS_DEFAULT must be one of on, off/,
    );
    assert.throws(
      () => loadPrivacyDefaults(undefined, { SWITCHBOARD_PRIVACY_DIRECT_OPEN_DEFAULT: "friends" }),
      /SWITCHBOARD_PRIVACY_DIRECT_OPEN_DEFAULT must be one of everyone, contacts, nobody/,
    );
  });

  it("takes unspecified fields as 'unchanged' and refuses numbers that are no audience", () => {
    assert.deepEqual(privacyChangesFromWire(undefined), {});
    assert.deepEqual(privacyChangesFromWire(create(PrivacySettingsSchema, {})), {});
    assert.deepEqual(
      privacyChangesFromWire(create(PrivacySettingsSchema, { directOpen: PrivacyAudience.CONTACTS })),
      { directOpen: "contacts" },
    );
    assert.throws(
      () => privacyChangesFromWire(create(PrivacySettingsSchema, { groupAdd: 4 as PrivacyAudience })),
      (err: unknown) => wireCodeOf(err) === Code.InvalidArgument,
    );
    // read_receipts is optional: absent leaves it alone, false turns it off.
    assert.deepEqual(
      privacyChangesFromWire(
        create(PrivacySettingsSchema, { lastSeen: PrivacyAudience.NOBODY, readReceipts: false }),
      ),
      { lastSeen: "nobody", readReceipts: false },
    );
    assert.throws(
      () => privacyChangesFromWire(create(PrivacySettingsSchema, { lastSeen: 7 as PrivacyAudience })),
      (err: unknown) => wireCodeOf(err) === Code.InvalidArgument && /settings\.last_seen/.test(String(err)),
    );
    const wire = privacyToWire({
      groupAdd: "nobody",
      directOpen: "everyone",
      lastSeen: "contacts",
      readReceipts: false,
      profile: "nobody",
    });
    assert.equal(wire.profile, PrivacyAudience.NOBODY);
    assert.equal(wire.groupAdd, PrivacyAudience.NOBODY);
    assert.equal(wire.directOpen, PrivacyAudience.EVERYONE);
    assert.equal(wire.lastSeen, PrivacyAudience.CONTACTS);
    assert.equal(wire.readReceipts, false);
  });
});
