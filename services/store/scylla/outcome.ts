/**
 * Conditional writes (LWT) whose outcome is unknown. The engine's driver never retries a write on
 * its own, so a timeout reaches the caller, and for an LWT it does not mean "not applied": the
 * Paxos round may have been accepted by a quorum and be committed by the next reader or proposer
 * on the partition. A LOCAL_SERIAL read of the partition decides it (it finishes any round left in
 * flight), so reading back at LOCAL_SERIAL after such an error tells what happened, for good.
 */
import { errors, types } from "cassandra-driver";

/** Protocol v5's CAS_WRITE_UNKNOWN; older protocols report the same case as a write timeout. */
const CAS_WRITE_UNKNOWN = 0x1700;

/**
 * True for a failed write that may nevertheless have applied: a coordinator's write timeout or
 * write failure (for an LWT, Paxos contention or a slow replica), CAS_WRITE_UNKNOWN, or the
 * driver's own request timeout (the request reached the cluster, its answer did not).
 */
export function unknownOutcome(err: unknown): boolean {
  if (err instanceof errors.OperationTimedOutError) return true;
  return (
    err instanceof errors.ResponseError &&
    (err.code === types.responseErrorCodes.writeTimeout ||
      err.code === types.responseErrorCodes.writeFailure ||
      err.code === CAS_WRITE_UNKNOWN)
  );
}
