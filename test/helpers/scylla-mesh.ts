import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before } from "node:test";
import { Mesh } from "../../services/mesh/launcher.js";
import { meshPrerequisites } from "./backends.js";
import { TestDevice, uniqueName } from "./device.js";
import { SCYLLA_SKIP, type ScratchKeyspace, scratchKeyspace } from "./scylla.js";
import { removeDir } from "./server.js";

/** Why a mesh suite on ScyllaDB cannot run here (for describe's `skip`), or false. */
export function scyllaMeshSkip(): string | false {
  return meshPrerequisites().skip || SCYLLA_SKIP;
}

/**
 * A mesh of separate processes (two gateways by default, one sequencer, one fanout, accounts and
 * presence) over NATS and Redis on a scratch ScyllaDB keyspace, started in before() and stopped
 * in after() with every device it made. For suites that check a rule holds across gateways.
 */
export function scyllaMeshSuite(
  name: string,
  options: { gateways?: number; env?: Record<string, string> } = {},
) {
  const { missing } = meshPrerequisites();
  let dir = "";
  let mesh: Mesh | undefined;
  let keyspace: ScratchKeyspace | undefined;
  const devices: TestDevice[] = [];
  before(async () => {
    if (missing.length > 0) throw new Error(`CI=true and ${missing.join(" and ")} missing`);
    keyspace = await scratchKeyspace(`${name}_mesh`);
    dir = await mkdtemp(join(tmpdir(), `sb-${name}-mesh-`));
    mesh = await Mesh.start({
      dir,
      gateways: options.gateways ?? 2,
      sequencers: 1,
      fanouts: 1,
      shards: 4,
      store: "scylla",
      env: {
        SCYLLA_CONTACT_POINTS: process.env.SCYLLA_CONTACT_POINTS ?? "",
        SCYLLA_LOCAL_DC: keyspace.options.localDataCenter,
        SCYLLA_KEYSPACE: keyspace.options.keyspace,
        SCYLLA_REPLICATION_FACTOR: "1",
        ...options.env,
      },
    });
  });
  after(async () => {
    await Promise.all(devices.map((d) => d.close()));
    await mesh?.stop();
    await keyspace?.drop();
    if (dir !== "") await removeDir(dir);
  });
  return {
    /** The running mesh (after before()). */
    get mesh(): Mesh {
      if (mesh === undefined) throw new Error("the mesh starts in before()");
      return mesh;
    },
    /** Closes the device with the mesh. */
    track(device: TestDevice): TestDevice {
      devices.push(device);
      return device;
    },
    /** A new user whose device talks to gateway `gateway`. */
    async user(prefix: string, gateway: number): Promise<TestDevice> {
      const d = await TestDevice.register(this.mesh.gatewayUrls[gateway]!, uniqueName(prefix));
      devices.push(d);
      return d;
    },
  };
}
