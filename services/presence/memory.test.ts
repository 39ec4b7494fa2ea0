import { runRouteStoreConformance } from "./conformance.js";
import { InMemoryRouteStore } from "./memory.js";

runRouteStoreConformance("InMemoryRouteStore", async () => ({
  store: new InMemoryRouteStore(),
  close: async () => {},
}));
