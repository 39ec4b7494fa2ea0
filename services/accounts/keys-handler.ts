import { create } from "@bufbuild/protobuf";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { type KeyService, PrekeyCountsSchema } from "../../gen/switchboard/v1/keys_pb.js";
import type { Principal, Tokens } from "../common/auth.js";
import { UnauthenticatedError } from "../common/errors.js";
import { requireId, requireIds } from "../common/validate.js";
import type { PrekeyCountsRecord } from "../store/types.js";
import type { Accounts } from "./accounts.js";
import type { Keys } from "./keys.js";

/** Device ids a GetBundles call may name. */
const MAX_BUNDLE_DEVICE_IDS = 64;

function counts(c: PrekeyCountsRecord) {
  return create(PrekeyCountsSchema, { oneTimeEcPrekeys: c.ec, oneTimeKyberPrekeys: c.kyber });
}

/**
 * The public KeyService, served by the accounts role (gateways forward to it). Every call is
 * authenticated like AccountService's: a valid access token of a device that is not revoked.
 */
export function keyService(keys: Keys, accounts: Accounts, tokens: Tokens): ServiceImpl<typeof KeyService> {
  async function principal(ctx: HandlerContext): Promise<Principal> {
    const p = await tokens.verifyHeader(ctx.requestHeader.get("authorization"));
    const [device] = await accounts.getDevices([p.deviceId]);
    if (device === undefined || !device.active) throw new UnauthenticatedError("device has been revoked");
    return p;
  }
  return {
    async uploadKeys(req, ctx) {
      const p = await principal(ctx);
      return { counts: counts(await keys.upload(p.userId, p.deviceId, req)) };
    },
    async getPrekeyCounts(_req, ctx) {
      const p = await principal(ctx);
      const status = await keys.status(p.deviceId);
      return {
        counts: counts(status.counts),
        keysUploaded: status.keys !== undefined,
        signedPrekeyId: status.keys?.signedPrekey.keyId ?? 0,
        signedPrekeyUploadedAtMs: BigInt(status.keys?.signedPrekey.uploadedAtMs ?? 0),
        kyberLastResortPrekeyId: status.keys?.kyberLastResort.keyId ?? 0,
        kyberLastResortPrekeyUploadedAtMs: BigInt(status.keys?.kyberLastResort.uploadedAtMs ?? 0),
      };
    },
    async getBundles(req, ctx) {
      const p = await principal(ctx);
      const userId = requireId("user_id", req.userId, "u");
      const deviceIds = requireIds("device_ids", req.deviceIds, "dv", MAX_BUNDLE_DEVICE_IDS);
      const { bundles, devicesWithoutKeys } = await keys.bundles(p, userId, deviceIds);
      return { bundles, devicesWithoutKeys };
    },
  };
}
