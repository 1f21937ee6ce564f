"""The app served on this machine for tests, the benchmark and screenshots: a free port, `python app.py` in its own
process, and the flags headless Chromium runs with here."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import XLDemoError

ROOT = Path(__file__).resolve().parent.parent.parent  # where app.py is
CHROMIUM = Path("/usr/bin/chromium")  # Debian's; playwright cannot download browsers here
# without the background-networking flags Chromium reaches for outside hosts at every start
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served_app(folder: str | Path) -> Iterator[str]:
    """`python app.py` on the checkpoint at folder, in its own process as on a Space, served on 127.0.0.1 through
    GRADIO_SERVER_NAME and GRADIO_SERVER_PORT; yields its URL once the page answers."""
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "XLDEMO_CHECKPOINT": str(Path(folder).resolve())}
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise XLDemoError(f"the app did not start: {server.stderr.read().decode()[-500:]}") from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
