import { Code, ConnectError } from "@connectrpc/connect";

// The SDK's public error type is ConnectError (apps check `err.code`); the shapes the client
// builds more than once are made here.

/** A call on a client that close() (or a fatal error) stopped. */
export function clientClosed(): ConnectError {
  return new ConnectError("client is closed", Code.Canceled);
}

/** A call that needs end-to-end encryption on a client opened without it. */
export function encryptionOff(): ConnectError {
  return new ConnectError(
    "end-to-end encryption is off: open the client with encryption: true",
    Code.FailedPrecondition,
  );
}

/** A field a server response must carry; INTERNAL when it does not. */
export function required<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new ConnectError(`server response lacks ${what}`, Code.Internal);
  return value;
}
