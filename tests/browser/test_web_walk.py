"""The web form in a real browser, walked the way a person uses it, on real photos."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from bench.server import Server
from tests.browser.batch_steps import batch_predict
from tests.browser.conftest import DATASETS, Artifacts, report
from tests.browser.webhook_steps import follow_deliveries, register_webhook
from tests.http_receiver import Receiver

pytestmark = pytest.mark.slow

FLOWERS = DATASETS / "flower_photos_small"
CATEGORIES = ("daisy", "sunflowers", "tulips")
PHOTOS_PER_CATEGORY = 7
# Rejected by content with a clear message (bad_inputs/README.md): text under a .jpg name.
NOT_AN_IMAGE = DATASETS / "bad_inputs" / "not_an_image.jpg"
# A sunflower the model never saw, and one it tells apart by a wide margin: the walk checks the
# page shows a clear answer, not how the classifier fares on borderline photos.
MYSTERY = FLOWERS / "val" / "sunflowers" / "184682320_73ccf74710.jpg"
# Planted in the wrong category: the review should suspect both; the walk moves the sunflower
# to where it belongs and keeps the daisy where it is, as a person sure of a label would.
MISLABELLED = {
    "tulips": FLOWERS / "train" / "sunflowers" / "35477171_13cb52115c_n.jpg",
    "sunflowers": FLOWERS / "train" / "daisy" / "172882635_4cc7b86731_m.jpg",
}
# The same file uploaded to a second category: kept, flagged at upload, listed in the review's
# duplicates, where the walk deletes the wrong copy.
COPIED = ("tulips", FLOWERS / "train" / "daisy" / "162362896_99c7d851c8_n.jpg")  # daisy no. 7
# Photos for the unlabelled pool, labelled later with one click.
POOL = [FLOWERS / "val" / "daisy" / "102841525_bd6628ae3c.jpg",
        FLOWERS / "val" / "daisy" / "11642632_1e7627a2cc.jpg"]
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
    expect(page.locator("[data-dropzone]")).to_have_count(len(CATEGORIES) + 1)  # + the pool's
    expect(page.locator("[data-dropzone][data-category='']")).to_contain_text("Not labelled yet")
    artifacts.shot(page, "created")
    return page.url.rsplit("/", 1)[1]


def upload(page: Page, artifacts: Artifacts, category: str, files: list[Path],
           accepted: int, count: int | None = None) -> None:
    """Choose `files` in the category's drop zone ("": the pool's) and press its Upload button;
    the zone then counts `count` images (default: `accepted`)."""
    zone = page.locator(f"[data-dropzone][data-category='{category}']")
    zone.locator("input[type=file]").set_input_files(files)
    button = f"Upload to {category}" if category else "Upload without a label"
    zone.get_by_role("button", name=button).click()
    results = zone.locator("[data-results]")
    expect(results.locator(".result-summary"), artifacts.note(
        f"the upload to {category or 'the pool'} should end with a summary of what was added")
    ).to_have_text(f"{accepted} of {len(files)} files added.", timeout=UPLOAD_TIMEOUT_MS)
    expect(results.locator(".result")).to_have_count(len(files))
    expect(results.locator(".result-accepted")).to_have_count(accepted)
    expect(zone.locator("[data-count]")).to_have_text(str(accepted if count is None else count))


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
    # Two photos in the wrong category on purpose, for the review to find.
    for category, photo in MISLABELLED.items():
        upload(page, artifacts, category, [photo], 1, count=PHOTOS_PER_CATEGORY + 1)
    category, photo = COPIED
    upload(page, artifacts, category, [photo], 1, count=PHOTOS_PER_CATEGORY + 2)
    expect(page.locator(f"[data-dropzone][data-category='{category}'] .result-accepted"),
           artifacts.note("a file already in another category should be flagged as such")
           ).to_contain_text("also in daisy")
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


def thumb(page: Page, name: str):  # type: ignore[no-untyped-def]
    """The thumbnail card of the image uploaded as `name`."""
    return page.locator(".thumb").filter(has=page.locator(".file", has_text=name))


def expect_thumbnail_shown(card, artifacts: Artifacts) -> None:  # type: ignore[no-untyped-def]
    image = card.locator("img")
    expect(image).to_have_attribute("loading", "lazy")
    image.scroll_into_view_if_needed()
    page = card.page
    page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                           arg=image.element_handle(), timeout=UPLOAD_TIMEOUT_MS)
    width = image.evaluate("img => img.naturalWidth")
    assert 0 < width <= 256, artifacts.note(f"thumbnail {width} px wide")


def review_and_fix(page: Page, model_id: str, artifacts: Artifacts) -> None:
    """Open the review, move the planted sunflower to sunflowers, keep the planted daisy."""
    # A mistake in the confusion matrix leads to its images in the review.
    mistake = page.locator("#training .chart-figure a.cm-link").first
    expect(mistake, artifacts.note("mistakes in the confusion matrix should be links")
           ).to_be_visible()
    mistake.click()
    expect(page).to_have_url(re.compile(
        rf"/web/models/{model_id}/review\?true=\w+&predicted=\w+#confusions$"))
    cell = page.locator(".confusion")
    expect(cell, artifacts.note("the clicked cell's images should show")).to_have_count(1)
    expect(cell.locator(".thumb").first).to_be_visible()
    report(f"confusion cell: {cell.locator('p').first.inner_text()}")
    artifacts.shot(page, "confusion-cell")
    page.goto(f"/web/models/{model_id}")
    page.locator("#images").get_by_role("link", name="review what the model doubts").click()
    expect(page).to_have_url(re.compile(rf"/web/models/{model_id}/review$"))
    expect(page.get_by_role("heading", name="Suspected mislabels")).to_be_visible()
    sunflower, daisy = MISLABELLED["tulips"], MISLABELLED["sunflowers"]
    suspects = page.locator(".suspect")
    report("suspected: " + "; ".join(s.inner_text().replace("\n", " ")
                                     for s in suspects.all()))
    moved = thumb(page, sunflower.name)
    expect(moved, artifacts.note("the sunflower uploaded into tulips should be suspected")
           ).to_have_count(1)
    expect(moved.locator(".current")).to_have_text("tulips")
    expect(moved.locator(".suggested")).to_have_text("sunflowers")
    expect_thumbnail_shown(moved, artifacts)
    kept = thumb(page, daisy.name)
    expect(kept, artifacts.note("the daisy uploaded into sunflowers should be suspected")
           ).to_have_count(1)
    expect(kept.locator(".suggested")).to_have_text("daisy")
    artifacts.shot(page, "review")

    moved.get_by_role("button", name="Move to sunflowers").click()
    expect(page).to_have_url(re.compile(rf"/web/models/{model_id}/review$"))
    expect(thumb(page, sunflower.name), artifacts.note(
        "a suspect moved to its suggested category should leave the list")).to_have_count(0)
    expect(page.get_by_text("1 suspected image has been moved since")).to_be_visible()
    thumb(page, daisy.name).get_by_role("button", name="Keep in sunflowers").click()
    expect(page).to_have_url(re.compile(rf"/web/models/{model_id}/review$"))
    expect(thumb(page, daisy.name), artifacts.note("a kept image should not be suspected again")
           ).to_have_count(0)
    artifacts.shot(page, "review-fixed")

    # The same file in daisy and tulips: listed as a duplicate; the tulips copy goes.
    identical = page.locator(".duplicate-group", has_text="identical files")
    expect(identical, artifacts.note("the file uploaded to two categories should be listed "
                                     "among the duplicates")).to_have_count(1)
    expect(identical).to_contain_text("The same picture in two categories")
    expect(identical.locator(".thumb")).to_have_count(2)
    identical.locator(".thumb", has_text="in tulips").get_by_role("button", name="Delete").click()
    expect(page).to_have_url(re.compile(rf"/web/models/{model_id}/review$"))
    expect(page.locator(".duplicate-group", has_text="identical files"), artifacts.note(
        "deleting one copy should end the duplicate")).to_have_count(0)

    tabs = page.get_by_role("navigation", name="Images")
    tabs.get_by_role("link", name="sunflowers (9)").click()
    expect(thumb(page, sunflower.name), artifacts.note(
        "the moved sunflower should be in the sunflowers gallery")).to_have_count(1)
    expect(thumb(page, daisy.name)).to_have_count(1)
    expect(tabs.get_by_role("link", name="tulips (7)")).to_be_visible()


def delete_from_gallery(page: Page, model_id: str, artifacts: Artifacts) -> None:
    """Tick two daisies in the daisy gallery and delete them; delete a third by its own button."""
    page.get_by_role("navigation", name="Images").get_by_role("link", name="daisy (7)").click()
    expect(page).to_have_url(re.compile(rf"/web/models/{model_id}/images\?category=daisy$"))
    gallery = page.locator("#gallery")
    expect(gallery.locator(".thumb")).to_have_count(PHOTOS_PER_CATEGORY)
    first, second, third = (path.name for path in photos("daisy")[:3])
    expect_thumbnail_shown(thumb(page, first), artifacts)
    for name in (first, second):
        gallery.get_by_label(f"Select {name}").check()
    artifacts.shot(page, "gallery-selected")
    gallery.get_by_role("button", name="Delete selected").click()
    expect(page).to_have_url(re.compile(rf"/web/models/{model_id}/images\?category=daisy$"))
    expect(gallery.locator(".thumb"), artifacts.note("two deleted images should leave the "
                                                     "gallery")).to_have_count(5)
    expect(thumb(page, first)).to_have_count(0)
    expect(thumb(page, second)).to_have_count(0)
    thumb(page, third).get_by_role("button", name=f"Delete {third}").click()
    expect(gallery.locator(".thumb")).to_have_count(4)
    expect(thumb(page, third)).to_have_count(0)
    expect(page.get_by_role("navigation", name="Images").get_by_role(
        "link", name="daisy (4)")).to_be_visible()
    artifacts.shot(page, "gallery-deleted")


def label_from_pool(page: Page, model_id: str, artifacts: Artifacts) -> None:
    """Drop two photos in the pool's zone, then label one of them with one click."""
    page.goto(f"/web/models/{model_id}")
    upload(page, artifacts, "", POOL, len(POOL))
    page.locator("#images").get_by_role("link", name="label the ones not labelled yet").click()
    expect(page).to_have_url(re.compile(rf"/web/models/{model_id}/pool$"))
    pool = page.locator("#pool")
    expect(pool.locator(".thumb"), artifacts.note("both pool photos should show")
           ).to_have_count(len(POOL))
    expect(pool.get_by_role("heading", name="Label these first"), artifacts.note(
        "a trained model should suggest what to label first")).to_be_visible()
    suggested = pool.locator(".suggestions .thumb")
    expect(suggested.first.locator(".predicted")).to_have_text(re.compile(
        "^(" + "|".join(CATEGORIES) + ")$"))
    report("suggested: " + "; ".join(s.inner_text().replace("\n", " ")
                                     for s in suggested.all()))
    names = [s.locator(".file").inner_text() for s in suggested.all()]
    assert names and set(names) <= {path.name for path in POOL}, artifacts.note(
        f"only pool images may be suggested for labelling: {names}")
    artifacts.shot(page, "pool")
    name = POOL[0].name
    thumb(page, name).get_by_role("button", name=f"Label {name} daisy").click()
    expect(page).to_have_url(re.compile(rf"/web/models/{model_id}/pool$"))
    expect(thumb(page, name), artifacts.note("a labelled image should leave the pool")
           ).to_have_count(0)
    expect(pool.locator(".thumb")).to_have_count(len(POOL) - 1)
    tabs = page.get_by_role("navigation", name="Images")
    expect(tabs.get_by_role("link", name="Not labelled (1)")).to_be_visible()
    tabs.get_by_role("link", name="daisy (5)").click()
    expect(thumb(page, name), artifacts.note("the labelled image should be in its gallery")
           ).to_have_count(1)
    artifacts.shot(page, "pool-labelled")


def versions_and_rollback(page: Page, model_id: str, artifacts: Artifacts) -> None:
    """Train again without going live, see the kept-aside version, activate it, then roll back
    to version 1 and delete version 2, all from the versions table."""
    page.goto(f"/web/models/{model_id}")
    training = page.locator("#training")
    training.get_by_label("New version goes live").select_option("never")
    training.get_by_role("button", name="Train again").click()
    expect(page).to_have_url(re.compile(rf"/web/models/{model_id}\?job=\w+#training$"))
    went_live = training.locator("[data-went-live]")
    expect(went_live, artifacts.note("the finished training should say the new version was "
                                     "kept aside")).to_contain_text(
        "version 2 was kept aside", timeout=TRAINING_TIMEOUT_MS)
    expect(went_live).to_contain_text("version 1 still answers")
    table = page.locator("#versions")
    second, first = table.locator("tr[data-version='2']"), table.locator("tr[data-version='1']")
    expect(first).to_contain_text("live")
    expect(second).to_contain_text("ready")
    artifacts.shot(page, "versions-kept-aside")

    second.get_by_role("button", name="Activate v2").click()
    expect(page).to_have_url(re.compile(rf"/web/models/{model_id}#versions$"))
    expect(table.locator("tr.is-active"), artifacts.note("activating v2 should make it the "
                                                         "live one")).to_have_attribute(
        "data-version", "2")
    expect(page.locator(".page-head + p.muted")).to_contain_text("Version 2 ·")
    artifacts.shot(page, "versions-activated")
    table.locator("tr[data-version='1']").get_by_role("button", name="Activate v1").click()
    expect(table.locator("tr.is-active")).to_have_attribute("data-version", "1")
    table.locator("tr[data-version='2']").get_by_role("button", name="Delete v2").click()
    expect(table.locator("tr[data-version='2']"), artifacts.note(
        "a deleted version should leave the table")).to_have_count(0)
    artifacts.shot(page, "versions-rolled-back")


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


def test_sign_in_webhook_upload_train_classify_fix_data_versions_batch_deliveries_sign_out(
        page: Page, server: Server, artifacts: Artifacts, receiver: Receiver) -> None:
    report(f"screenshots in {artifacts.folder}")
    sign_in(page, server, artifacts)
    secret = register_webhook(page, receiver, artifacts)
    page.get_by_role("link", name="Models").click()
    model_id = create_model(page, artifacts)
    add_photos(page, artifacts)
    train(page, model_id, artifacts)
    classify(page, artifacts)
    review_and_fix(page, model_id, artifacts)
    delete_from_gallery(page, model_id, artifacts)
    label_from_pool(page, model_id, artifacts)
    versions_and_rollback(page, model_id, artifacts)
    batch_predict(page, model_id, artifacts)
    follow_deliveries(page, receiver, secret, artifacts)
    sign_out(page, server, artifacts)
