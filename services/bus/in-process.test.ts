import { createLogger } from "../common/log.js";
import { runBusConformance } from "./conformance.js";
import { DirectDelivery, InProcessBus } from "./in-process.js";

const log = createLogger({ level: "silent" });

runBusConformance(
  "in-process",
  async () => {
    const bus = new InProcessBus(log);
    return { bus, delivery: new DirectDelivery(), settle: async () => {}, close: () => bus.close() };
  },
  { redeliversOnReject: false },
);
