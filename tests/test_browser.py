"""`eefetch serve` in a real browser: headless Chromium (Debian's package, installed by
scripts/system_deps.sh) loads the page while a real job runs against the emulator, and again
after it ends. The page's tile counts must be those `eefetch status --json` gives.

While the page is checked, the job's process is paused (SIGSTOP): it holds its lock, its
tiles are in flight, and nothing changes between `status --json` and the browser's reading,
so the two can be compared exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_webview import start_serve

from engine.emulator import EmulatorConfig, EmulatorThread
from engine.jobmap import STATE_COLOURS
from engine.snapshot import read_facts
from engine.testing.cli import REPO, run_cli
from engine.testing.jobs import dem_args
from state import StateError

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium package is not installed: run scripts/system_deps.sh as root "
    "(apt-get install chromium)",
)
STATES = ("done", "in_flight", "pending", "failed", "split")
PAGE_TIME_MS = 4000  # virtual time the page gets: two refreshes at least


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Chromium headless, with nothing that reaches beyond this machine."""
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--no-proxy-server",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={PAGE_TIME_MS}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class Elements(HTMLParser):
    """Attributes and text of every element that has an id (text of leaf elements)."""

    def __init__(self) -> None:
        super().__init__()
        self.attrs: dict[str, dict[str, str | None]] = {}
        self.text: dict[str, str] = {}
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        ident = found.get("id")
        if ident:
            self.attrs[ident] = found
            self.text[ident] = ""
        if tag not in ("img", "link", "meta", "br", "input"):
            self._open.append(ident)

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for ident in self._open:
            if ident:
                self.text[ident] += data


def read_page(url: str, profile: Path) -> Elements:
    answer = chromium(profile, "--dump-dom", url)
    assert answer.returncode == 0, answer.stderr[-2000:]
    page = Elements()
    page.feed(answer.stdout)
    body = page.attrs.get("job")
    assert body is not None and "hidden" not in body, answer.stdout[-3000:]
    return page


def shown_counts(page: Elements) -> dict[str, int]:
    return {state: int(page.attrs[f"count-{state}"]["data-count"] or -1) for state in STATES}


def check_page(page: Elements, status: dict[str, Any], state: Path) -> None:
    """What the page shows is what `status --json` says (and the state's retry counters)."""
    assert shown_counts(page) == {state: status["tiles"][state] for state in STATES}
    assert page.text["job-name"] == "dem.tif"
    assert page.text["job-state"] == status["state_label"]
    done, total = status["tiles"]["done"], sum(status["tiles"][s] for s in STATES[:4])
    assert page.text["progress-text"].startswith(f"{done} of {total} tiles done")
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    attempts, limited = db.execute("SELECT sum(attempts), sum(rate_limited) FROM tile").fetchone()
    db.close()
    assert page.text["retries-total"].startswith(
        f"{attempts} failed attempts and {limited} rate-limit (429) answers"
    )


def check_screenshot(picture: Path, states: tuple[str, ...]) -> None:
    """The screenshot shows the page with its map: pixels of each state's colour."""
    assert picture.read_bytes().startswith(b"\x89PNG")
    image = np.asarray(Image.open(picture).convert("RGB"))
    assert image.shape[:2] == (1500, 1280)
    for state in states:
        found = np.all(image == np.array(STATE_COLOURS[state], dtype=np.uint8), axis=-1).sum()
        assert found > 100, state


def wait_for_progress(state: Path, job: subprocess.Popen[str]) -> None:
    """Until the running job has some tiles done and many still to fetch (bounded)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert job.poll() is None, job.communicate()[1][-2000:]
        try:
            counts = read_facts(state).counts
        except StateError:
            counts = {"done": 0, "pending": 0}
        if counts["done"] >= 2 and counts["pending"] >= 10:
            return
        time.sleep(0.05)
    pytest.fail("the job made no progress within 120 s")


@pytest.mark.slow
def test_the_page_shows_a_running_job_then_the_finished_one(tmp_path: Path) -> None:
    folder = tmp_path / "jobs"
    folder.mkdir()
    output = folder / "dem.tif"
    state = Path(f"{output}.eefetch.db")
    profile = tmp_path / "chromium-profile"
    shots = Path(os.environ.get("EEFETCH_SCREENSHOTS", tmp_path))
    config = EmulatorConfig.from_profile(
        "clean", seed=5, latency_fixed_s=0.2, fault_rate=0.15, fault_weights={"http_503": 1}
    )
    server, url = start_serve(str(folder), "--port", "0")
    page_url = f"{url}#job=dem.tif.eefetch.db"
    try:
        with EmulatorThread(config) as emulator:
            # Click takes the last of a repeated option: 54 small tiles, two at a time.
            fetch = dem_args(emulator.url, output, "--max-tile-bytes", "8000", "--concurrency", "2")
            job = subprocess.Popen(
                [sys.executable, "-m", "engine.cli", *fetch, "--quiet"],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                wait_for_progress(state, job)
                os.kill(job.pid, signal.SIGSTOP)
                try:
                    running = json.loads(run_cli("status", str(state), "--json").stdout)
                    assert running["running"] and running["state_label"] == "fetching"
                    assert running["tiles"]["pending"] >= 10
                    page = read_page(page_url, profile)
                    check_page(page, running, state)
                    assert page.text["fact-eta"].startswith("about ")
                    shot = shots / "eefetch-serve-running.png"
                    chromium(profile, "--window-size=1280,1500", f"--screenshot={shot}", page_url)
                    check_screenshot(shot, ("done", "pending"))
                finally:
                    os.kill(job.pid, signal.SIGCONT)
                _, errors = job.communicate(timeout=240)
                assert job.returncode == 0, errors[-2000:]
            finally:
                if job.poll() is None:
                    job.kill()
                    job.wait()
        finished = json.loads(run_cli("status", str(state), "--json").stdout)
        assert finished["status"] == "merged" and not finished["running"]
        page = read_page(page_url, profile)
        check_page(page, finished, state)
        assert page.text["job-state"] == "done" and page.text["fact-eta"] == "nothing left to fetch"
        shot = shots / "eefetch-serve-finished.png"
        chromium(profile, "--window-size=1280,1500", f"--screenshot={shot}", page_url)
        check_screenshot(shot, ("done",))
    finally:
        server.send_signal(signal.SIGTERM)
        _, served = server.communicate(timeout=30)
        print(served)  # shown when the test fails: what the page's server said
