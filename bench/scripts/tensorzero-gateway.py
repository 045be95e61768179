"""Serves TensorZero's Rust gateway over HTTP from its Python package.

TensorZero ships no gateway binary on PyPI; its extension module holds the
gateway and `_start_http_gateway` serves it on a port of its own choosing.
This writes the gateway's base URL (ending in /openai/v1) to URL_FILE once
it listens (the gateway logs to stdout, so stdout cannot carry it), then
holds the process open until SIGTERM or SIGINT.

    python tensorzero-gateway.py CONFIG.toml URL_FILE
"""

import os
import signal
import sys
import threading

import tensorzero


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: tensorzero-gateway.py CONFIG.toml URL_FILE")
    gateway = tensorzero._start_http_gateway(
        config_file=sys.argv[1],
        clickhouse_url=None,
        postgres_url=None,
        valkey_url=None,
        async_setup=False,
    )
    # Written whole under another name, then renamed: a reader polling for
    # the file never sees half a URL.
    url_file = sys.argv[2]
    with open(url_file + ".tmp", "w") as f:
        f.write(gateway.base_url + "\n")
    os.replace(url_file + ".tmp", url_file)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    gateway.close()


if __name__ == "__main__":
    main()
