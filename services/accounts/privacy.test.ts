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
    assert.deepEqual(loadPrivacyDefaults(undefined, {}), { groupAdd: "everyone", directOpen: "everyone" });
    assert.deepEqual(
      loadPrivacyDefaults(undefined, {
        SWITCHBOARD_PRIVACY_GROUP_ADD_DEFAULT: "contacts",
        SWITCHBOARD_PRIVACY_DIRECT_OPEN_DEFAULT: "nobody",
      }),
      { groupAdd: "contacts", directOpen: "nobody" },
    );
    assert.deepEqual(
      loadPrivacyDefaults({ groupAdd: "nobody" }, { SWITCHBOARD_PRIVACY_GROUP_ADD_DEFAULT: "contacts" }),
      { groupAdd: "nobody", directOpen: "everyone" },
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
    const wire = privacyToWire({ groupAdd: "nobody", directOpen: "everyone" });
    assert.equal(wire.groupAdd, PrivacyAudience.NOBODY);
    assert.equal(wire.directOpen, PrivacyAudience.EVERYONE);
  });
});
