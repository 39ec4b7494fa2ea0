"""An echo bot for Switchboard in Python, written against the stubs generated from proto/ only.

Generate the stubs and make the venv (once; the second command downloads):
    bash examples/stubs/generate.sh prepare python && bash examples/stubs/generate.sh python
Run it (with a server on :7420, `npm start`):
    "$(bash examples/stubs/generate.sh python-venv)/bin/python" examples/bot-python/main.py --username py_bot
examples/bot-python/README.md says more; docs/integrations.md walks through the TypeScript twin.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    p = argparse.ArgumentParser(description="Switchboard echo bot (Python)")
    p.add_argument("--server", default="http://127.0.0.1:7420")
    p.add_argument("--username", default="echo_bot")
    p.add_argument("--state", help="the credential; default .switchboard/bots/<username>.json")
    p.add_argument("--mode", choices=("stream", "unary"), default="stream")
    p.add_argument("--poll-ms", type=int, default=1000)
    p.add_argument("--stubs", default=os.path.join(HERE, "..", "stubs", "python", "gen"), help="generated stubs")
    args = p.parse_args()
    if not os.path.isdir(os.path.join(args.stubs, "switchboard", "v1")):
        print(f"no generated stubs in {args.stubs}: run bash examples/stubs/generate.sh python", file=sys.stderr)
        return 2
    sys.path.insert(0, args.stubs)
    # After the path is set: these import the generated modules.
    import grpc
    from api import Api, load_or_register
    from stream import run_stream
    from unary import run_unary
    from util import Stopper, log

    stop = Stopper()

    def on_signal(signum, _frame) -> None:
        log(f"{signal.Signals(signum).name}: stopping")
        # A stuck stream must not keep the bot alive; whatever was not acked comes back next run.
        threading.Timer(5, lambda: os._exit(1)).start()  # not a daemon: it must fire
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)

    state_path = args.state or os.path.join(".switchboard", "bots", f"{args.username}.json")
    # Registers on the first run, reuses the saved credentials after that.
    state = load_or_register(args.server, state_path, args.username)
    log(f"bot {args.username} ({state.user_id}), device {state.device_id}, {args.mode} mode, {args.server}")
    api = Api(args.server, state)
    try:
        if args.mode == "stream":
            run_stream(api, state.user_id, stop, log)
        else:
            run_unary(api, state.user_id, args.poll_ms / 1000, stop, log)
        log("stopped")
        return 0
    except grpc.RpcError as e:
        log(f"fatal: {e.code().name}: {e.details()}")
        return 1
    finally:
        api.close()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # Timers (the forced exit after a signal, an ack or a retry) must not keep the process alive.
    os._exit(code)
