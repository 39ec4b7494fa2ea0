import { generateVapidKeys } from "../../services/notification/providers/webpush.js";
import type { WebPushTarget } from "../../services/notification/types.js";
import {
  type FakeSubscription,
  type FakeWebPushService,
  startWebPushService,
} from "../fakes/push/webpush-service.js";
import { TestDevice, uniqueName } from "./device.js";
import { removeDir, type ServerProcess, startServerProcess } from "./server.js";

/**
 * A server process whose push provider is Web Push, against a fake push service on 127.0.0.1
 * (test/fakes/push), and users whose devices have push targets there: what the push tests share.
 */
export class WebPushFixture {
  server!: ServerProcess;
  push!: FakeWebPushService;
  readonly vapid = generateVapidKeys();
  readonly devices: TestDevice[] = [];

  /** Starts the push service and a server configured for it, with these extra settings. */
  async start(env: Record<string, string> = {}): Promise<void> {
    this.push = await startWebPushService();
    this.server = await startServerProcess({
      env: {
        SWITCHBOARD_WEBPUSH_VAPID_PUBLIC_KEY: this.vapid.publicKey,
        SWITCHBOARD_WEBPUSH_VAPID_PRIVATE_KEY: this.vapid.privateKey,
        SWITCHBOARD_WEBPUSH_SUBJECT: "mailto:ops@switchboard.example",
        // The fake push service listens on plain http on 127.0.0.1.
        SWITCHBOARD_PUSH_ALLOW_HTTP: "true",
        ...env,
      },
    });
  }

  async stop(): Promise<void> {
    await Promise.all(this.devices.map((d) => d.close()));
    await this.server?.stop();
    if (this.server) await removeDir(this.server.dataDir);
    await this.push?.close();
  }

  /** Two new users and their direct conversation; the second's device has a Web Push target. */
  async pair(
    alicePrefix: string,
    bobPrefix: string,
  ): Promise<{ alice: TestDevice; bob: TestDevice; sub: FakeSubscription; id: string }> {
    const alice = await TestDevice.register(this.server.url, uniqueName(alicePrefix));
    const bob = await TestDevice.register(this.server.url, uniqueName(bobPrefix));
    this.devices.push(alice, bob);
    const sub = this.push.subscribe({ applicationServerKey: this.vapid.publicKey });
    const target = sub.target as WebPushTarget;
    await bob.accounts.setPushTarget({
      target: {
        case: "webPush",
        value: { endpoint: target.endpoint, p256dh: target.p256dh, auth: target.auth },
      },
    });
    const { conversation } = await alice.conversations.openDirect({ peerUserId: bob.userId });
    return { alice, bob, sub, id: conversation!.conversationId };
  }
}
