import { createHmac, timingSafeEqual } from "node:crypto";
import type { Interceptor } from "@connectrpc/connect";
import { UnauthenticatedError } from "./errors.js";

/** The header that carries the deployment's internal credential between services. */
export const INTERNAL_HEADER = "x-switchboard-internal";

/** Services only other Switchboard processes may call. */
const INTERNAL_PACKAGE = "switchboard.internal.";

/**
 * The internal credential, derived from the access-token key every process already shares: one
 * secret to provision, and a leaked internal credential does not let anyone mint tokens.
 */
export function internalCredential(tokenKey: Uint8Array): string {
  return createHmac("sha256", tokenKey).update("switchboard internal rpc v1").digest("base64url");
}

/**
 * Server side: refuses internal services to callers without the credential. Network policy
 * should already keep them away from the internal port; this makes a mistake there harmless.
 */
export function requireInternalCredential(credential: string): Interceptor {
  const expected = Buffer.from(credential);
  return (next) => async (req) => {
    if (req.service.typeName.startsWith(INTERNAL_PACKAGE)) {
      const given = Buffer.from(req.header.get(INTERNAL_HEADER) ?? "");
      if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
        // Thrown inside the error boundary (services/common/boundary.ts, installed by services/server), which makes it UNAUTHENTICATED.
        throw new UnauthenticatedError(
          `${req.service.typeName} is internal: the caller lacks this deployment's internal credential`,
        );
      }
    }
    return next(req);
  };
}

/** Client side: sends the credential on every call. */
export function sendInternalCredential(credential: string): Interceptor {
  return (next) => async (req) => {
    req.header.set(INTERNAL_HEADER, credential);
    return next(req);
  };
}
