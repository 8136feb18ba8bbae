"""The page at ``/`` in a real browser: headless Chromium opens it from a running server,
clicks SayHello, SayHelloStreamReply and "Repeat", and the test reads the DOM: the reply,
the cluster and pod that answered, the tally. A screenshot is kept as an artifact (its
path is printed). Through the rehearsal's gateway (two clusters): tests/test_rehearse_web.py."""

from __future__ import annotations

import asyncio

from browser_support import chromium, repeat, screenshot, text_of, use_page

from conftest import free_port, running


async def test_page_calls_the_greeter_and_shows_who_answered(tmp_path):
    async with running(
        web_port=free_port(), cluster_name="browser-c", node_name="node-1", zone="zone-b"
    ) as server:
        url = f"http://127.0.0.1:{server.web_port}/"

        def browse() -> tuple[dict[str, str], list[tuple[str, str, int, int]], str]:
            with chromium(tmp_path) as driver:
                use_page(driver, url, "Chromium", 3)
                shown = {
                    key: text_of(driver, key)
                    for key in ("reply", "cluster", "pod", "node", "zone", "latency", "server-time")
                }
                rows = repeat(driver, 12)
                shot = screenshot(driver, tmp_path / "grpc-web-page.png")
                return shown, rows, str(shot)

        shown, rows, shot = await asyncio.to_thread(browse)
    assert shown["reply"].splitlines() == [f"Hello, Chromium! ({i}/3)" for i in (1, 2, 3)]
    assert shown["cluster"] == "browser-c"
    assert shown["pod"] == "pod-a"
    assert shown["node"] == "node-1"
    assert shown["zone"] == "zone-b"
    assert shown["latency"].endswith(" ms")
    # The browser read the server's own time from the server-timing trailer.
    assert shown["server-time"].endswith(" ms")
    assert float(shown["server-time"].removesuffix(" ms")) >= 0
    assert rows == [("browser-c", "pod-a", 12, 0)]
    assert (tmp_path / "grpc-web-page.png").stat().st_size > 1000, shot
