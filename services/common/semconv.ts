/**
 * The OpenTelemetry semantic conventions Switchboard emits that are still "incubating" in
 * @opentelemetry/semantic-conventions 1.40. Copied here, as that package asks of runtime code:
 * its incubating entry point may change in a minor release, and it is large to load. Stable
 * names (error.type, service.*) come from the package itself.
 */

/** Duration of an incoming RPC, in seconds (histogram). */
export const METRIC_RPC_SERVER_CALL_DURATION = "rpc.server.call.duration";
/** The RPC system: "grpc" (gRPC and gRPC-Web) or "connectrpc" (the Connect protocol). */
export const ATTR_RPC_SYSTEM_NAME = "rpc.system.name";
export const RPC_SYSTEM_NAME_VALUE_GRPC = "grpc";
export const RPC_SYSTEM_NAME_VALUE_CONNECTRPC = "connectrpc";
/** The fully qualified method, "package.Service/Method". */
export const ATTR_RPC_METHOD = "rpc.method";
/** The status code as the RPC system spells it ("OK", "UNAVAILABLE"; Connect: "unavailable"). */
export const ATTR_RPC_RESPONSE_STATUS_CODE = "rpc.response.status_code";

/** The messaging system: "nats" for the NATS engine of the bus. */
export const ATTR_MESSAGING_SYSTEM = "messaging.system";
/** The subject a message is published to or consumed from. */
export const ATTR_MESSAGING_DESTINATION_NAME = "messaging.destination.name";
/** The JetStream durable consumer that delivered a message. */
export const ATTR_MESSAGING_CONSUMER_GROUP_NAME = "messaging.consumer.group.name";
/** What a span does with a message: "send" (publish) or "process" (consume and settle). */
export const ATTR_MESSAGING_OPERATION_TYPE = "messaging.operation.type";
export const MESSAGING_OPERATION_TYPE_VALUE_SEND = "send";
export const MESSAGING_OPERATION_TYPE_VALUE_PROCESS = "process";
/** The system-specific operation ("publish", "consume"). */
export const ATTR_MESSAGING_OPERATION_NAME = "messaging.operation.name";
/** The message's id in the messaging system (JetStream's Nats-Msg-Id, used for de-duplication). */
export const ATTR_MESSAGING_MESSAGE_ID = "messaging.message.id";
/** The size of the message body, in bytes. */
export const ATTR_MESSAGING_MESSAGE_BODY_SIZE = "messaging.message.body.size";
/** How many messages a batch send or receive carried. */
export const ATTR_MESSAGING_BATCH_MESSAGE_COUNT = "messaging.batch.message_count";

/** CPU time of the process, in seconds, by cpu.mode (counter). */
export const METRIC_PROCESS_CPU_TIME = "process.cpu.time";
export const ATTR_CPU_MODE = "cpu.mode";
/** Resident memory of the process, in bytes (gauge). */
export const METRIC_PROCESS_MEMORY_USAGE = "process.memory.usage";
