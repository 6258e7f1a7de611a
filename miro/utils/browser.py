"""Headless Chromium for the app's browser test and its README screenshot (tools/app_screenshot.py).

Both drive Debian's ``chromium`` through Playwright's Python package, pointed at the system binary:
nothing here downloads a browser. The flags keep Chromium off the network (a closed machine refuses its
background connections by the dozen), and :func:`loopback_only` aborts every request that would leave
127.0.0.1, so a page that tried to fetch something from outside is caught, not silently slow.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
LOOPBACK = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
VIEWPORT = {"width": 1400, "height": 1100}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loopback_only(blocked: list[str]) -> Callable[[Any], None]:
    """A Playwright route handler that lets loopback and data: URLs through and aborts (and records in
    ``blocked``) everything else."""

    def route(request_route: Any) -> None:
        url = request_route.request.url
        if urlparse(url).hostname in LOOPBACK or url.startswith("data:"):
            request_route.continue_()
        else:
            blocked.append(url)
            request_route.abort()

    return route


def launch_chromium(playwright: Any, profile_dir: str, executable: str, blocked: list[str]) -> Any:
    """A persistent headless Chromium context on ``executable`` with every non-loopback request aborted."""
    context = playwright.chromium.launch_persistent_context(
        profile_dir, executable_path=executable, headless=True, args=list(CHROMIUM_FLAGS), viewport=VIEWPORT,
    )
    context.route("**/*", loopback_only(blocked))
    return context
