"""The proxy, or what is behind it, dies mid-job and comes back: the job waits it out and
loses nothing.

``scripts/outage_soak.py`` runs the same with an outage of half an hour.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
from authority import https_emulator, make_authority

from engine import ee_adapter
from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread
from engine.job import RunOptions, run_job
from engine.scheduler import SchedulerOptions
from engine.testing.campaigns import OutageProgress, run_through_outage
from engine.testing.jobs import dem_spec, state_of
from engine.testing.oracle import assert_matches_oracle
from engine.testing.peers import TinyProxy
from engine.transport import TransportOptions
from state import Store

# Every test here runs real downloads end to end (tens of seconds in all): -m 'not slow' skips them.
pytestmark = [pytest.mark.slow, pytest.mark.peers]

OUTAGE_S = 6.0
# Short backoffs and probes, so an outage of OUTAGE_S is noticed and waited out in a test.
SCHEDULER = SchedulerOptions(
    concurrency=4,
    backoff_base=0.2,
    backoff_cap=1.0,
    first_probe_interval=0.5,
    max_probe_interval=2.0,
)


def test_a_proxy_killed_mid_job_and_restarted_costs_no_tile(tmp_path: Path) -> None:
    scheduler = replace(SCHEDULER, max_attempts=8)
    report = run_through_outage(tmp_path, outage_s=OUTAGE_S, scheduler=scheduler)
    assert report.complete, report.lines()
    assert report.failed == 0
    assert report.tiles >= 15
    assert report.down_s >= OUTAGE_S
    assert report.outages >= 1  # it noticed, and stopped spending attempts
    assert report.probes >= 3  # 0.5 + 1 + 2 + 2 s of probes fit in the outage
    # A tile lost at most the attempts in flight before the outage was recognised.
    assert report.most_attempts <= 3, report.lines()
    assert report.proxy_requests_before_kill > 0
    assert report.proxy_requests_after_restart > 0  # the rest came through the new proxy
    assert report.wall_s < OUTAGE_S + 20
    assert_matches_oracle(report.output, report.state_path)


def test_earth_engine_unreachable_behind_a_live_proxy_is_waited_out(tmp_path: Path) -> None:
    # The usual outage behind a corporate proxy: the proxy answers, the far side does not.
    # Over HTTPS the proxy's CONNECT fails, which must count as the network being down.
    authority = make_authority(tmp_path / "ca")
    config = EmulatorConfig.from_profile("clean", seed=22, latency_fixed_s=0.1)
    emulators = [https_emulator(config, authority).start()]
    url = emulators[0].url
    port = int(url.rsplit(":", 1)[1])

    def restart() -> None:
        again = EmulatorThread(config, port=port, ssl_context=authority.server_context())
        emulators.append(again.start())

    output = tmp_path / "behind.tif"
    state_path = state_of(output)
    progress = OutageProgress(emulators[0].stop, restart, kill_after=6, outage_s=OUTAGE_S)
    try:
        with TinyProxy(tmp_path / "proxy") as proxy:
            ca = str(authority.ca_file)
            ee_adapter.initialize(ee_adapter.Connection(url=url, proxy=proxy.url, ca_bundle=ca))
            options = RunOptions(
                concurrency=4,
                transport=TransportOptions(proxy=proxy.url, ca_bundle=ca, connect_timeout=5.0),
                scheduler=SCHEDULER,
            )
            job = run_job(dem_spec(output, url, 4), state_path, options, progress)
            result = asyncio.run(asyncio.wait_for(job, 120))
            tunnels = proxy.requests()
    finally:
        progress.join()
        for emulator in emulators:
            emulator.stop()
    assert result.complete and result.counts["failed"] == 0
    assert result.summary.outages >= 1
    assert any("probing again" in note for note in progress.notes)
    with Store.open(state_path, create=False) as store:
        assert max(tile.attempts for tile in store.tiles("done")) <= 3
    assert tunnels and {method for method, _ in tunnels} == {"CONNECT"}
    assert_matches_oracle(output, state_path)
