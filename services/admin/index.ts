/**
 * The admin service's public face: its RPC face (AdminService, served by every process) and what
 * it is given of the process. Built by the composition root (services/server/network.ts).
 */
export { OPERATOR_HEADER } from "./audit.js";
export { type AdminDeps, adminService } from "./handler.js";
