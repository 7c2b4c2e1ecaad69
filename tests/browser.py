"""A real headless Chromium for tests: open a page from disk, with the network shut.

Debian's ``chromium`` (``tools/install-test-system-deps.sh`` installs it) is driven by PyPI's
``playwright`` (the test extra) through its own driver, pointed at ``/usr/bin/chromium``:
no browser is downloaded (``playwright install`` is never run). Each page gets a browser of
its own with a fresh profile folder, so no state leaks between tests, and it is always
reaped: closed through playwright, then any process still using the profile folder is
killed by its pid.

Every request the page makes besides its own file is aborted and recorded, as are dialogs
(``alert``), uncaught errors and console messages (a Content-Security-Policy violation is a
console error). By default :func:`open_page` fails the test at its end if any of them came.

A missing Chromium or playwright fails the test, never skips it: they are part of what the
test run installs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

CHROMIUM = os.environ.get("AMLDBG_TEST_CHROMIUM", "/usr/bin/chromium")
#: Headless, no sandbox (root in a container), and nothing that phones home.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_HINT = (
    "run tools/install-test-system-deps.sh (Debian's chromium) and "
    "pip install -e '.[test]' (playwright)"
)


@dataclass
class PageLog:
    """What a page did besides drawing itself."""

    #: URLs the page asked for (other than its own file), each aborted.
    requests: list[str] = field(default_factory=list)
    #: ``(type, text)`` of every console message.
    console: list[tuple[str, str]] = field(default_factory=list)
    #: The messages of dialogs (``alert``, ``confirm``, ``prompt``), each dismissed.
    dialogs: list[str] = field(default_factory=list)
    #: Uncaught exceptions of the page's scripts.
    errors: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Everything a clean page never does: a request, a dialog, an error, a console
        error or warning (a CSP violation is one)."""
        found = [f"request {url}" for url in self.requests]
        found += [f"dialog {text!r}" for text in self.dialogs]
        found += [f"page error {text}" for text in self.errors]
        found += [f"console {kind}: {text}" for kind, text in self.console if kind in ("error", "warning")]
        return found


def _playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:  # part of the test extra: its absence fails, never skips
        pytest.fail(f"playwright is not installed ({error}): {INSTALL_HINT}", pytrace=False)
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: {INSTALL_HINT}", pytrace=False)
    return sync_playwright


def _kill_profile_users(profile: str) -> None:
    """Kill, by pid, any process whose command line names ``profile`` (a browser or helper
    that outlived its close)."""
    marker = profile.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in argv:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)


@contextlib.contextmanager
def open_page(
    path: str | os.PathLike[str],
    log: PageLog | None = None,
    *,
    width: int = 1400,
    height: int = 900,
    check: bool = True,
    ready: str | None = "html[data-ready='1']",
) -> Iterator[Any]:
    """A playwright ``Page`` showing the file ``path`` in a fresh headless Chromium.

    Requests other than the file are aborted and recorded in ``log`` (a :class:`PageLog`,
    made when not given), with dialogs, errors and console messages. The page is returned
    once ``ready`` (a selector; ``None``: the load event) matches. At the end, the browser is
    reaped even when the test failed, and with ``check`` the test fails if the log has any
    :meth:`PageLog.problems`.
    """
    sync_playwright = _playwright()
    log = log if log is not None else PageLog()
    url = Path(path).resolve().as_uri()
    profile = tempfile.mkdtemp(prefix="amldbg-chromium-")
    try:
        with sync_playwright() as driver:
            context = driver.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=FLAGS,
                viewport={"width": width, "height": height},
                offline=True,
                service_workers="block",
            )
            try:
                def route(request_route: Any) -> None:
                    # Only the page's own file may load; everything else fails (and is
                    # recorded by the request listener below, which sees every scheme).
                    if request_route.request.url.split("#", 1)[0] == url:
                        request_route.continue_()
                    else:
                        request_route.abort()

                def dialog(box: Any) -> None:
                    log.dialogs.append(box.message)
                    box.dismiss()

                def request(req: Any) -> None:
                    if req.url.split("#", 1)[0] != url:
                        log.requests.append(req.url)

                context.route("**/*", route)
                context.on("request", request)
                context.on("websocket", lambda ws: log.requests.append(ws.url))
                page = context.pages[0] if context.pages else context.new_page()
                page.on("dialog", dialog)
                page.on("pageerror", lambda error: log.errors.append(str(error)))
                page.on("console", lambda message: log.console.append((message.type, message.text)))
                page.goto(url)
                if ready:
                    page.wait_for_selector(ready, state="attached", timeout=30_000)
                yield page
                if check:
                    problems = log.problems()
                    assert not problems, f"the page did what it must not: {problems}"
            finally:
                with contextlib.suppress(Exception):
                    context.close()
    finally:
        _kill_profile_users(profile)
        shutil.rmtree(profile, ignore_errors=True)
