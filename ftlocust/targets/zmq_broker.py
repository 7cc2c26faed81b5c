"""Loopback ZMQ event-plane broker for a local Dynamo: an XSUB/XPUB forwarder.

Why: with file discovery Dynamo's event plane is ZMQ, and in its direct mode every publisher binds
tcp://0.0.0.0 (hard-coded). Pointing DYN_ZMQ_BROKER_URL at this broker makes publishers connect
to XSUB and subscribers to XPUB, and the only listeners are these two sockets, on 127.0.0.1 (or
HOST: the broker's own address when each role runs in a network namespace).

Run with the Dynamo venv's python (pyzmq lives there):

    $DYNAMO_ENV/bin/python zmq_broker.py XSUB_PORT XPUB_PORT [HOST]

Prints `broker ready xsub=tcp://HOST:P xpub=tcp://HOST:Q` once bound. Stdlib + pyzmq
only: it runs as a file, not as part of the ftlocust package.
"""

import os
import signal
import sys
import threading

import zmq

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or not all(a.isdigit() for a in argv[:2]):
        print("usage: zmq_broker.py XSUB_PORT XPUB_PORT [HOST]", file=sys.stderr)
        return 2
    xsub_port, xpub_port = (int(a) for a in argv[:2])
    host = argv[2] if len(argv) == 3 else "127.0.0.1"
    # Block the stop signals before any thread exists, then wait for them synchronously: a
    # signal does not reliably interrupt zmq.proxy once peers are connected (measured: SIGTERM
    # was ignored), so the proxy runs in a daemon thread and the main thread only waits.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    ctx = zmq.Context()
    xsub = ctx.socket(zmq.XSUB)
    xpub = ctx.socket(zmq.XPUB)
    try:
        xsub.bind(f"tcp://{host}:{xsub_port}")
        xpub.bind(f"tcp://{host}:{xpub_port}")
    except zmq.ZMQError as exc:
        print(f"broker: cannot bind {host}:{xsub_port}/{xpub_port}: {exc}", file=sys.stderr, flush=True)
        return 1
    threading.Thread(target=zmq.proxy, args=(xsub, xpub), name="zmq-proxy", daemon=True).start()
    print(f"broker ready xsub=tcp://{host}:{xsub_port} xpub=tcp://{host}:{xpub_port}", flush=True)
    received = signal.sigwait(STOP_SIGNALS)
    print(f"broker stopped ({signal.Signals(received).name})", flush=True)
    os._exit(0)  # no graceful context teardown: a forwarder has nothing to flush


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
