"""Print JupyterLab's URL once the server answers (``make lab``): a URL printed earlier leads to "connection refused".

    python tools/lab_url.py PORT TOKEN PATH SERVER_PID
"""
from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request

TIMEOUT_S = 180  # a first start on a slow machine builds caches


def main(port: str, token: str, path: str, server_pid: str) -> int:
    status = f"http://localhost:{port}/api/status?token={token}"
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(status, timeout=2):
                print(f"\n    JupyterLab: http://localhost:{port}/{path}&token={token}\n", flush=True)
                return 0
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            try:
                os.kill(int(server_pid), 0)
            except ProcessLookupError:
                print("JupyterLab exited before it served: see its messages above", file=sys.stderr)
                return 1
            time.sleep(0.3)
    print(f"JupyterLab did not answer on port {port} within {TIMEOUT_S} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
