"""The operator's console in a real browser (Debian's chromium, driven by Playwright),
against a real system on Kafka and Postgres.

It watches a workflow progress live, opens its detail, redrives a failed one and sees
it complete, sends a signal, and finds no sensitive plaintext on any page. The token
rules are checked over plain HTTP: without it, every action is refused and nothing
changes. Screenshots go to ``.artifacts/console/`` (wide and narrow screens).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from conftest import FAST, eventually
from kafka_broker import Broker
from pydantic import BaseModel

import hms_bus
from hms_bus.ui import console_server

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get("HMS_TEST_ARTIFACTS", ROOT / ".artifacts")) / "console"
TOKEN = "console-test-token"
SENTINEL = "98-7654321"  # a tax id: sensitive, it must never reach a page


class Application(BaseModel):
    applicant: str
    tax_id: Annotated[str, hms_bus.Sensitive()]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:  # not a skip: the console would go untested
        pytest.fail("no chromium for the console's browser tests: `make browser` installs it")
    return found


class Gate:
    """A payment interface that is closed until it is fixed."""

    open = False


def app(mgmt: hms_bus.Management, release: asyncio.Event) -> None:
    mgmt.define_workflow("grant", ["intake", "review", "pay"], input=Application)

    @mgmt.on_step("grant.intake")
    async def intake(ctx: hms_bus.StepContext) -> Any:
        if ctx.payload.applicant == "slow":
            await release.wait()
        return {"applicant": ctx.payload.applicant, "taxId": ctx.payload.tax_id}

    @mgmt.on_step("grant.review")
    async def review(ctx: hms_bus.StepContext) -> Any:
        if ctx.payload["applicant"] == "inspected":
            return hms_bus.WaitFor("inspectionReport")
        return ctx.payload

    @mgmt.on_step("grant.pay", retry=hms_bus.RetryPolicy(max_attempts=1))
    async def pay(ctx: hms_bus.StepContext) -> Any:
        if ctx.payload.get("applicant") == "closed-bank" and not Gate.open:
            raise RuntimeError("the bank interface is closed")
        return {"paid": True, "report": ctx.signal}


@pytest.fixture
async def system(kafka_broker: Broker, pg_schema: str) -> AsyncIterator[tuple[Any, str]]:
    release = asyncio.Event()
    mgmt = hms_bus.init(
        "console-test",
        bus=kafka_broker.url,
        store=pg_schema,
        namespace=f"ui{uuid.uuid4().hex[:8]}",
        **{**FAST, "monitor": {"heartbeat_interval": 0.2, "check_interval": 0.2}},
    )
    app(mgmt, release)
    Gate.open = False
    async with mgmt:
        server = console_server(mgmt, host="127.0.0.1", port=0, token=TOKEN)
        async with server:
            mgmt.release = release  # type: ignore[attr-defined]
            yield mgmt, f"http://127.0.0.1:{server.port}"
        release.set()


async def test_the_console_in_a_browser(system: tuple[Any, str]) -> None:
    from playwright.async_api import async_playwright

    mgmt, base = system
    SHOTS.mkdir(parents=True, exist_ok=True)
    seen: list[str] = []  # every page's HTML, for the sensitive-value check
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=chromium(),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

        # -- live: a workflow appears and moves on while the page is open ---------------
        await page.goto(base + "/")
        slow = await mgmt.start("grant", {"applicant": "slow", "tax_id": SENTINEL})
        row = page.locator(f"a[href='/workflows/{slow.workflow_id}']")
        await row.wait_for(timeout=15_000)  # no reload: the live update brought it
        # (the console's CSP refuses eval: selectors only, no wait_for_function)
        await page.locator("b[data-count=running]:text-is('1')").wait_for(timeout=15_000)
        seen.append(await page.content())
        await page.screenshot(path=SHOTS / "workflows-running.png", full_page=True)
        mgmt.release.set()
        await page.locator("b[data-count=completed]:text-is('1')").wait_for(timeout=15_000)

        # -- its detail: the timeline, payload and result masked, the history -----------
        await row.click()
        await page.wait_for_selector("table.timeline")
        text = await page.inner_text("main")
        assert "intake" in text and "review" in text and "pay" in text
        assert "workflowCompleted" in text and "******4321" in text
        # only the actions that apply are offered: none, to a completed workflow
        assert await page.is_visible("text=No action applies to a completed workflow")
        assert not await page.is_visible("form[data-action=cancel]")
        seen.append(await page.content())
        await page.screenshot(path=SHOTS / "workflow-detail.png", full_page=True)

        # -- redrive a failed one, and see it complete -----------------------------------
        failed = await mgmt.run(
            "grant", {"applicant": "closed-bank", "tax_id": SENTINEL}, timeout=20
        )
        assert failed.status == "failed"
        Gate.open = True  # the fix
        await page.goto(f"{base}/workflows/{failed.workflow_id}")
        await page.fill("#token", TOKEN)
        assert not await page.is_visible("form[data-action=cancel]")
        await page.click("form[data-action=redrive] button")
        await page.wait_for_selector("h1 .badge.st-completed", timeout=20_000)
        await page.locator("form[data-action=redrive]").wait_for(state="hidden")
        seen.append(await page.content())
        await page.screenshot(path=SHOTS / "workflow-redriven.png", full_page=True)

        # -- send a signal to a waiting one ------------------------------------------------
        parked = await mgmt.start("grant", {"applicant": "inspected", "tax_id": SENTINEL})
        await page.goto(f"{base}/workflows/{parked.workflow_id}")
        await page.wait_for_selector(".badge.wait", timeout=20_000)  # live: it parks
        assert await page.is_visible("form[data-action=signal]")
        assert await page.is_visible("form[data-action=cancel]")
        assert not await page.is_visible("form[data-action=redrive]")
        await page.wait_for_selector("#why li:has-text('inspectionReport')", timeout=10_000)
        await page.screenshot(path=SHOTS / "workflow-waiting.png", full_page=True)
        await page.fill("form[data-action=signal] input[name=data]", '{"passed": true}')
        await page.click("form[data-action=signal] button")
        await page.wait_for_selector("h1 .badge.st-completed", timeout=20_000)
        final = await mgmt.status(parked.workflow_id)
        assert final is not None and final.result == {"paid": True, "report": {"passed": True}}

        # -- the other pages ---------------------------------------------------------------
        for path, shot in [
            ("/dead-letters", "dead-letters.png"),
            ("/health", "health.png"),
            ("/definitions", "definitions.png"),
        ]:
            await page.goto(base + path)
            if path == "/definitions":
                await page.wait_for_selector("pre.mermaid svg", timeout=15_000)
            if path == "/dead-letters":
                await page.wait_for_selector("table.letters")
            seen.append(await page.content())
            await page.screenshot(path=SHOTS / shot, full_page=True)

        # -- a narrow screen -----------------------------------------------------------------
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.goto(f"{base}/workflows/{failed.workflow_id}")
        await page.wait_for_selector("table.timeline")
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1, f"the page is {overflow}px wider than a narrow screen"
        await page.screenshot(path=SHOTS / "workflow-narrow.png", full_page=True)
        await browser.close()

    assert errors == []
    for html in seen:
        assert SENTINEL not in html and "7654321" not in html


async def test_actions_need_the_token_and_change_nothing_without_it(
    system: tuple[Any, str],
) -> None:
    mgmt, base = system
    parked = await mgmt.start("grant", {"applicant": "inspected", "tax_id": SENTINEL})

    async def waiting() -> bool:
        st = await mgmt.status(parked.workflow_id)
        return st is not None and any(s.waiting_for for s in st.steps)

    await eventually(waiting, within=20, what="the wait")
    async with httpx.AsyncClient(base_url=base) as http:
        for headers in ({}, {"X-HMS-Token": "wrong"}):
            for action, body in [
                ("cancel", {"workflow_id": parked.workflow_id}),
                ("signal", {"workflow_id": parked.workflow_id, "name": "inspectionReport"}),
                ("redrive", {"workflow_id": parked.workflow_id}),
            ]:
                r = await http.post(f"/api/actions/{action}", json=body, headers=headers)
                assert r.status_code == 403, (action, r.text)
        await asyncio.sleep(1.0)
        st = await mgmt.status(parked.workflow_id)
        assert st is not None and st.status == "running" and any(s.waiting_for for s in st.steps)
        ok = await http.post(
            "/api/actions/cancel",
            json={"workflow_id": parked.workflow_id},
            headers={"X-HMS-Token": TOKEN},
        )
        assert ok.status_code == 200 and ok.json()["ok"] is True
        bad = await http.post(
            "/api/actions/signal", json={"workflow_id": "x"}, headers={"X-HMS-Token": TOKEN}
        )
        assert bad.status_code == 400 and "missing field 'name'" in bad.json()["error"]
    assert (await mgmt.wait(parked.workflow_id, timeout=20)).status == "cancelled"


async def test_a_console_without_a_token_is_read_only(kafka_broker: Broker, pg_schema: str) -> None:
    mgmt = hms_bus.init("ro", bus="memory://", store=pg_schema, roles=())
    async with mgmt:
        server = console_server(mgmt, host="127.0.0.1", port=0, token=None)
        async with server, httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            home = await http.get("/")
            assert home.status_code == 200 and "read-only" in home.text
            assert "default-src 'self'" in home.headers["content-security-policy"]
            r = await http.post("/api/actions/cancel", json={"workflow_id": "x"})
            assert r.status_code == 403 and "read-only" in r.json()["error"]
            assert (await http.get("/workflows/none")).status_code == 404
