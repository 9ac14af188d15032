"""The web form in a real browser, walked the way a person uses it, on real photos."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from bench.server import Server
from tests.browser.conftest import DATASETS, Artifacts, report

pytestmark = pytest.mark.slow

FLOWERS = DATASETS / "flower_photos_small"
CATEGORIES = ("daisy", "sunflowers", "tulips")
PHOTOS_PER_CATEGORY = 7
# Rejected by content with a clear message (bad_inputs/README.md): text under a .jpg name.
NOT_AN_IMAGE = DATASETS / "bad_inputs" / "not_an_image.jpg"
# A sunflower the model never saw, and one it tells apart by a wide margin: the walk checks the
# page shows a clear answer, not how the classifier fares on borderline photos.
MYSTERY = FLOWERS / "val" / "sunflowers" / "184682320_73ccf74710.jpg"
PERCENT = re.compile(r"^\d+(\.\d+)?%$")
UPLOAD_TIMEOUT_MS = 120_000
TRAINING_TIMEOUT_MS = 600_000
# Between the job showing "succeeded" and the page showing the trained model there is only the
# page's own refresh; no training happens in this window.
REFRESH_TIMEOUT_MS = 30_000


def photos(label: str) -> list[Path]:
    found = sorted((FLOWERS / "train" / label).glob("*.jpg"))
    assert found, f"no photos in {FLOWERS / 'train' / label}"
    return found


def percent_value(text: str) -> float:
    assert PERCENT.match(text.strip()), f"not a percentage: {text!r}"
    return float(text.strip().rstrip("%"))


def sign_in(page: Page, server: Server, artifacts: Artifacts) -> None:
    page.goto("/")
    expect(page, artifacts.note("/ should send a signed-out person to sign in")).to_have_url(
        re.compile(r"/web/sign-in$"))
    page.get_by_label("API key").fill(server.key)
    artifacts.shot(page, "sign-in")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/web/models$"))
    expect(page.get_by_role("heading", name="Your models")).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    artifacts.shot(page, "signed-in")


def create_model(page: Page, artifacts: Artifacts) -> str:
    page.get_by_label("Name").fill("flowers in the garden")
    page.get_by_label("Categories").fill(", ".join(CATEGORIES))
    page.get_by_role("button", name="Create").click()
    expect(page, artifacts.note("creating a model should open its page")).to_have_url(
        re.compile(r"/web/models/\w+$"))
    expect(page.get_by_role("heading", name="flowers in the garden")).to_be_visible()
    expect(page.locator(".page-head .badge")).to_have_text("created")
    expect(page.locator("[data-dropzone]")).to_have_count(len(CATEGORIES))
    artifacts.shot(page, "created")
    return page.url.rsplit("/", 1)[1]


def upload(page: Page, artifacts: Artifacts, category: str, files: list[Path],
           accepted: int) -> None:
    """Choose `files` in the category's drop zone and press its Upload button."""
    zone = page.locator(f"[data-dropzone][data-category='{category}']")
    zone.locator("input[type=file]").set_input_files(files)
    zone.get_by_role("button", name=f"Upload to {category}").click()
    results = zone.locator("[data-results]")
    expect(results.locator(".result-summary"), artifacts.note(
        f"the upload to {category} should end with a summary of what was added")).to_have_text(
        f"{accepted} of {len(files)} files added.", timeout=UPLOAD_TIMEOUT_MS)
    expect(results.locator(".result")).to_have_count(len(files))
    expect(results.locator(".result-accepted")).to_have_count(accepted)
    expect(zone.locator("[data-count]")).to_have_text(str(accepted))


def add_photos(page: Page, artifacts: Artifacts) -> None:
    for category in CATEGORIES:
        chosen = photos(category)[:PHOTOS_PER_CATEGORY]
        if category == CATEGORIES[0]:
            upload(page, artifacts, category, [*chosen, NOT_AN_IMAGE], PHOTOS_PER_CATEGORY)
            zone = page.locator(f"[data-dropzone][data-category='{category}']")
            rejected = zone.locator(".result-rejected")
            expect(rejected, artifacts.note("the text file must be refused, by name")
                   ).to_have_count(1)
            expect(rejected.locator(".file")).to_have_text(NOT_AN_IMAGE.name)
            expect(rejected).to_contain_text("not a recognisable image")
        else:
            upload(page, artifacts, category, chosen, PHOTOS_PER_CATEGORY)
    artifacts.shot(page, "uploaded")


def train(page: Page, model_id: str, artifacts: Artifacts) -> None:
    """Press Train; watch the progress move, then the results arrive on their own."""
    training = page.locator("#training")
    train_button = training.locator("form[action$='/train'] button[type=submit]")
    expect(train_button).to_have_text("Train")
    train_button.click()
    expect(page).to_have_url(re.compile(rf"/web/models/{model_id}\?job=\w+#training$"))
    job = page.locator("#job")
    expect(job, artifacts.note("the page after Train should show the job")).to_be_visible()
    expect(job, artifacts.note("the job should still be running when its page first shows")
           ).to_have_attribute("data-active", "true")
    expect(train_button).to_be_disabled()
    expect(page.locator(".page-head .badge")).to_have_text("training")
    status, percent = job.locator("[data-job-status]"), job.locator("[data-job-percent]")
    first = (status.inner_text().strip(), percent.inner_text().strip())
    assert first[0] in ("queued", "running"), artifacts.note(f"job shown first as {first}")
    artifacts.shot(page, "training-started")

    # The page's own polling must change what is shown: a new status or a higher percentage.
    page.wait_for_function(
        """([status, percent]) => {
            const s = document.querySelector("#job [data-job-status]");
            const p = document.querySelector("#job [data-job-percent]");
            return s && p && (s.textContent.trim() !== status || p.textContent.trim() !== percent);
        }""", arg=list(first), timeout=TRAINING_TIMEOUT_MS)
    moved = (status.inner_text().strip(), percent.inner_text().strip())
    artifacts.shot(page, "training-progress")
    report(f"job shown as {first[0]} {first[1]}, then {moved[0]} {moved[1]}")

    expect(status, artifacts.note("the training job should finish")).to_have_text(
        re.compile(r"^(succeeded|failed)$"), timeout=TRAINING_TIMEOUT_MS)
    expect(status, artifacts.note("the training job should succeed")).to_have_text("succeeded")
    expect(percent).to_have_text("100%")
    artifacts.shot(page, "training-succeeded")

    # No reload by the test from here on: the page must bring the trained model by itself.
    badge = page.locator(".page-head .badge")
    expect(badge, artifacts.note(
        "the job succeeded on screen, but the page did not show the trained model without a "
        "manual reload")).to_have_text("ready", timeout=REFRESH_TIMEOUT_MS)
    expect(train_button).to_be_enabled()
    expect(train_button).to_have_text("Train again")
    expect(job).to_have_attribute("data-active", "false")
    expect(training.get_by_text("Training finished: version 1 is now active.")).to_be_visible()
    expect(page).to_have_url(re.compile(rf"/web/models/{model_id}\?job=\w+#training$"))
    top = training.evaluate("section => Math.round(section.getBoundingClientRect().top)")
    assert abs(top) <= 4, artifacts.note(
        f"the refreshed page should open at the training section; its top is at {top} px")

    accuracy = training.locator(".stat").filter(
        has=page.locator(".stat-label", has_text=re.compile(r"^accuracy$")))
    expect(accuracy.locator(".stat-value")).to_have_text(PERCENT)
    confusion = training.locator(".chart-figure").get_by_role(
        "img", name=re.compile(r"^Confusion matrix"))
    expect(confusion, artifacts.note("the confusion matrix chart should show")).to_be_visible()
    expect(confusion.locator(".cm-cell")).to_have_count(len(CATEGORIES) ** 2)
    curve = training.locator(".chart-figure").get_by_role("img", name="Learning curve")
    expect(curve, artifacts.note("the learning curve chart should show")).to_be_visible()
    expect(training.locator(".advice")).to_have_text(re.compile(r"\w.{10,}"))
    artifacts.shot(page, "trained")
    report(f"accuracy {accuracy.locator('.stat-value').inner_text()}; advice: "
          f"{training.locator('.advice').inner_text()}")


def classify(page: Page, artifacts: Artifacts) -> None:
    mystery = MYSTERY
    section = page.locator("#predict")
    section.locator("input[type=file]").set_input_files(mystery)
    section.get_by_role("button", name="Classify").click()
    expect(page).to_have_url(re.compile(r"/predict#predict$"))
    prediction = page.locator("#predict .predictions .prediction")
    expect(prediction, artifacts.note("classifying should show one result")).to_have_count(1)
    expect(prediction.locator(".file")).to_have_text(mystery.name)
    label = prediction.locator(".prediction-head strong").inner_text().strip()
    rows = prediction.locator("table.bars tr")
    expect(rows).to_have_count(len(CATEGORIES))
    bars = [(row.locator("th").inner_text().strip(),
             percent_value(row.locator("td.num").inner_text())) for row in rows.all()]
    artifacts.shot(page, "classified")
    report(f"{mystery.name} -> {label}; bars {bars}")
    assert sorted(name for name, _ in bars) == sorted(CATEGORIES), artifacts.note(str(bars))
    assert bars[0][0] == label, artifacts.note(f"top bar {bars[0]} is not the label {label}")
    assert [p for _, p in bars] == sorted((p for _, p in bars), reverse=True), artifacts.note(
        f"bars not sorted by probability: {bars}")
    assert abs(sum(p for _, p in bars) - 100) <= 0.5, artifacts.note(f"bars sum: {bars}")
    assert label == "sunflowers", artifacts.note(f"a sunflower was called {label}: {bars}")
    expect(prediction.locator(".bar-top")).to_have_count(1)


def sign_out(page: Page, server: Server, artifacts: Artifacts) -> None:
    page.get_by_role("button", name="Sign out").click()
    expect(page, artifacts.note("signing out should land on the sign-in page")).to_have_url(
        re.compile(r"/web/sign-in$"))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
    artifacts.shot(page, "signed-out")
    models = page.request.get(f"{server.url}/web/models", max_redirects=0)
    assert models.status == 303 and models.headers["location"].endswith("/web/sign-in"), (
        artifacts.note(f"still signed in after signing out: {models.status}"))


def test_sign_in_upload_train_classify_sign_out(page: Page, server: Server,
                                               artifacts: Artifacts) -> None:
    report(f"screenshots in {artifacts.folder}")
    sign_in(page, server, artifacts)
    model_id = create_model(page, artifacts)
    add_photos(page, artifacts)
    train(page, model_id, artifacts)
    classify(page, artifacts)
    sign_out(page, server, artifacts)
