"""Browser steps of the walk for webhooks: register one before training, then read its delivery
log and send it a test event."""

from __future__ import annotations

import json
import re

from playwright.sync_api import Page, expect

from tests.api.test_webhooks import verifies
from tests.browser.conftest import Artifacts
from tests.http_receiver import Receiver

# A delivery goes out within a second or two of its event; the page reloads itself meanwhile.
DELIVERY_TIMEOUT_MS = 60_000


def register_webhook(page: Page, receiver: Receiver, artifacts: Artifacts) -> str:
    """Add a webhook for training.succeeded from the navigation; return the secret the page
    shows, once."""
    page.get_by_role("link", name="Webhooks").click()
    expect(page.get_by_role("heading", name="Webhooks", exact=True)).to_be_visible()
    form = page.locator("#create")
    form.get_by_label("URL").fill(receiver.url("/nanonet"))
    for box in form.locator("input[name=events]").all():
        box.set_checked(box.get_attribute("value") == "training.succeeded")
    form.get_by_label("Description").fill("the walk's receiver")
    form.get_by_role("button", name="Add webhook").click()
    secret = page.locator("[data-secret]")
    expect(secret, artifacts.note("a new webhook's page should show its secret")).to_have_text(
        re.compile(r"^whsec_\S+$"))
    expect(page.get_by_text("shown only this once")).to_be_visible()
    expect(page, artifacts.note("the address bar should name the new webhook, so a reload "
                                "does not post again")).to_have_url(
        re.compile(r"/web/webhooks/\w+$"))
    artifacts.shot(page, "webhook-secret")
    value = secret.inner_text().strip()
    page.reload()
    expect(page.locator("[data-secret]"), artifacts.note("the secret is shown only once")
           ).to_have_count(0)
    return value


def follow_deliveries(page: Page, receiver: Receiver, secret: str,
                      artifacts: Artifacts) -> None:
    """After the walk's trainings: the log lists their training.succeeded deliveries, signed
    with the secret; the test button sends one more and the log shows it arrive."""
    page.get_by_role("link", name="Webhooks").click()
    page.get_by_role("link", name=receiver.url("/nanonet")).click()
    log = page.locator("#deliveries")
    trained = log.locator("tr", has_text="training.succeeded")
    expect(trained.first, artifacts.note("the walk's training should have been delivered")
           ).to_have_attribute("data-status", "succeeded", timeout=DELIVERY_TIMEOUT_MS)
    expect(trained.first).to_contain_text("HTTP 200")
    arrived = [request for request in receiver.requests
               if json.loads(request.body)["type"] == "training.succeeded"]
    assert arrived and all(verifies(secret, request) for request in arrived), (
        artifacts.note(f"{len(arrived)} training.succeeded deliveries, not all verified"))
    expect(trained).to_have_count(len(arrived))
    artifacts.shot(page, "webhook-deliveries")

    log.get_by_role("button", name="Send a test event").click()
    expect(page.get_by_text("Test event queued")).to_be_visible()
    tested = log.locator("tr", has_text="webhook.test")
    expect(tested, artifacts.note("the test event should show as delivered, the page "
                                  "refreshing itself")).to_have_attribute(
        "data-status", "succeeded", timeout=DELIVERY_TIMEOUT_MS)
    expect(tested).to_contain_text("HTTP 200")
    assert verifies(secret, receiver.requests[-1])
    artifacts.shot(page, "webhook-tested")
