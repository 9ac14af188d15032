"""A multi-label model in a real browser, as a person makes one: the kind on the create form,
photos uploaded with two categories ticked, one image imported by URL, a training, and the
per-category results with their thresholds."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from bench.server import Server
from tests.browser.conftest import DATASETS, Artifacts, report
from tests.browser.test_web_walk import (
    REFRESH_TIMEOUT_MS,
    TRAINING_TIMEOUT_MS,
    UPLOAD_TIMEOUT_MS,
    sign_in,
)
from tests.url_server import UrlServer

pytestmark = pytest.mark.slow

CATEGORIES = ("insect", "ant", "flower")
PER_GROUP = 5
HYMENOPTERA = DATASETS / "hymenoptera"
FLOWERS = DATASETS / "flower_photos_small"
PERCENT = re.compile(r"^\d+(\.\d+)?%$")


def jpegs(folder: Path, count: int) -> list[Path]:
    found = sorted(folder.glob("*.jpg"))[:count]
    assert len(found) == count, f"not {count} photos in {folder}"
    return found


# Ants carry insect + ant, bees insect only, flowers (of several species) flower only.
ANTS = jpegs(HYMENOPTERA / "train" / "ants", PER_GROUP)
BEES = jpegs(HYMENOPTERA / "train" / "bees", PER_GROUP)
FLOWER_PHOTOS = [path for species in ("daisy", "sunflowers", "tulips", "roses", "dandelion")
                 for path in jpegs(FLOWERS / "train" / species, 1)]
BY_URL = jpegs(FLOWERS / "train" / "daisy", 2)[1]  # another daisy, not among the uploads
MYSTERY = jpegs(FLOWERS / "val" / "sunflowers", 1)[0]


@pytest.fixture
def url_server() -> Iterator[UrlServer]:
    """Serves the shared datasets on loopback (the test server allows private addresses)."""
    with UrlServer(DATASETS) as running:
        yield running


def create_multi_label_model(page: Page, artifacts: Artifacts) -> str:
    create = page.locator("#create")
    create.get_by_label("Name").fill("bugs and blooms")
    create.get_by_label("Categories").fill(", ".join(CATEGORIES))
    single = create.get_by_role("radio", name=re.compile("^Single-label"))
    expect(single, artifacts.note("single-label should be the default kind")).to_be_checked()
    create.get_by_role("radio", name=re.compile("^Multi-label")).check()
    artifacts.shot(page, "create-multi-label")
    create.get_by_role("button", name="Create").click()
    expect(page, artifacts.note("creating a model should open its page")).to_have_url(
        re.compile(r"/web/models/\w+$"))
    expect(page.locator(".page-head .kind-chip")).to_have_text("multi-label")
    zones = page.locator("[data-dropzone]")
    expect(zones, artifacts.note("a multi-label model has one upload form with boxes")
           ).to_have_count(1)
    expect(zones.get_by_role("checkbox")).to_have_count(len(CATEGORIES))
    return page.url.rsplit("/", 1)[1]


def counts(page: Page) -> dict[str, str]:
    shown = {name: page.locator(f"[data-category-count='{name}'] [data-count]").inner_text()
             for name in CATEGORIES}
    shown[""] = page.locator("[data-pool-count] [data-count]").inner_text()
    return shown


def upload_ticked(page: Page, artifacts: Artifacts, files: list[Path],
                  ticked: tuple[str, ...], expected: dict[str, int]) -> None:
    """Tick exactly `ticked`, choose the files, press Upload; the counters then show
    `expected` without a reload."""
    zone = page.locator("[data-dropzone][data-multi-label]")
    for name in CATEGORIES:
        zone.get_by_role("checkbox", name=name, exact=True).set_checked(name in ticked)
    zone.locator("input[type=file]").set_input_files(files)
    zone.get_by_role("button", name="Upload with the ticked categories").click()
    results = zone.locator("[data-results]")
    expect(results.locator(".result-summary"), artifacts.note(
        f"the upload ticking {ticked} should end with a summary")).to_have_text(
        f"{len(files)} of {len(files)} files added.", timeout=UPLOAD_TIMEOUT_MS)
    accepted = results.locator(".result-accepted")
    expect(accepted).to_have_count(len(files))
    expect(accepted.first).to_contain_text("labelled " + ", ".join(ticked))
    want = {name: str(count) for name, count in expected.items()}
    page.wait_for_function(
        """(want) => Object.entries(want).every(([name, count]) => {
            const item = name ? document.querySelector(`[data-category-count="${name}"]`)
                              : document.querySelector("[data-pool-count]");
            return item && item.querySelector("[data-count]").textContent.trim() === count;
        })""", arg=want, timeout=UPLOAD_TIMEOUT_MS)
    assert counts(page) == want, artifacts.note(f"counts {counts(page)}, wanted {want}")
    for name in CATEGORIES:  # the boxes stay as they were, for the next files
        box = zone.get_by_role("checkbox", name=name, exact=True)
        (expect(box).to_be_checked() if name in ticked else expect(box).not_to_be_checked())


def import_by_url(page: Page, artifacts: Artifacts, url: str) -> None:
    section = page.locator("#by-url")
    section.get_by_label("Image URLs, one per line").fill(url)
    section.get_by_role("combobox").select_option("flower")
    section.get_by_role("button", name="Add from these URLs").click()
    expect(page).to_have_url(re.compile(r"/images/urls#by-url$"))
    results = page.locator("#by-url .url-results")
    expect(results.locator(".result-summary"), artifacts.note(
        "the URL import should say what it added")).to_have_text("1 of 1 URLs added.")
    accepted = results.locator(".result-accepted")
    expect(accepted).to_have_count(1)
    expect(accepted.locator(".file")).to_have_text(url)
    expect(accepted).to_contain_text("labelled flower")
    expect(page.locator("[data-category-count='flower'] [data-count]")).to_have_text(
        str(PER_GROUP + 1))
    artifacts.shot(page, "imported-by-url")


def train_and_read_results(page: Page, model_id: str, artifacts: Artifacts) -> None:
    page.goto(f"/web/models/{model_id}")
    training = page.locator("#training")
    training.get_by_role("button", name="Train").click()
    expect(page).to_have_url(re.compile(rf"/web/models/{model_id}\?job=\w+#training$"))
    status = page.locator("#job [data-job-status]")
    expect(status, artifacts.note("the training job should finish")).to_have_text(
        re.compile(r"^(succeeded|failed)$"), timeout=TRAINING_TIMEOUT_MS)
    expect(status, artifacts.note("the training job should succeed")).to_have_text("succeeded")
    expect(page.locator(".page-head .badge"), artifacts.note(
        "the page should bring the trained model by itself")).to_have_text(
        "ready", timeout=REFRESH_TIMEOUT_MS)

    stats = {training.locator(".stat-label").nth(i).inner_text():
             training.locator(".stat-value").nth(i).inner_text()
             for i in range(training.locator(".stat").count())}
    for name in ("micro-F1", "macro-F1", "micro precision", "micro recall", "exact match"):
        assert PERCENT.match(stats.get(name, "")), artifacts.note(f"{name}: {stats}")
    assert stats["images evaluated"] == str(3 * PER_GROUP + 1), artifacts.note(str(stats))
    table = training.locator("table.per-category")
    expect(table, artifacts.note("a multi-label version should show the per-category table")
           ).to_be_visible()
    headers = [h.inner_text() for h in table.locator("thead th").all()]
    assert headers == ["Category", "Precision", "Recall", "F1", "Average precision",
                       "Threshold", "Images"], artifacts.note(str(headers))
    rows = table.locator("tbody tr")
    expect(rows).to_have_count(len(CATEGORIES))
    seen = {}
    for row in rows.all():
        name = row.locator("th").inner_text()
        cells = [cell.inner_text() for cell in row.locator("td").all()]
        seen[name] = cells
        for value in cells[:5]:
            assert PERCENT.match(value), artifacts.note(f"{name}: {cells}")
        threshold = float(cells[4].rstrip("%"))
        assert 0 < threshold < 100, artifacts.note(f"{name}'s threshold {cells[4]}")
    assert [seen[name][5] for name in CATEGORIES] == [
        str(2 * PER_GROUP), str(PER_GROUP), str(PER_GROUP + 1)], artifacts.note(str(seen))
    report(f"multi-label stats {stats}; per category {seen}")
    # What multi-label models refuse (409 not_for_multi_label) is not offered.
    expect(page.get_by_role("link", name="review what the model doubts")).to_have_count(0)
    expect(page.locator("input[name=reject_unknown]")).to_have_count(0)
    expect(page.locator("#versions thead")).to_contain_text("CV micro-F1")
    artifacts.shot(page, "multi-label-trained")


def classify(page: Page, artifacts: Artifacts) -> None:
    section = page.locator("#predict")
    section.locator("input[type=file]").set_input_files(MYSTERY)
    section.get_by_role("button", name="Classify").click()
    prediction = page.locator("#predict .predictions .prediction")
    expect(prediction, artifacts.note("classifying should show one result")).to_have_count(1)
    expect(prediction.locator("table.bars tr")).to_have_count(len(CATEGORIES))
    expect(prediction.locator("td.threshold").first).to_contain_text("threshold")
    said = prediction.locator(".prediction-head").inner_text()
    report(f"{MYSTERY.name}: {said}")
    artifacts.shot(page, "multi-label-classified")
    assert "flower" in prediction.locator(".prediction-head strong").inner_text(), (
        artifacts.note(f"a sunflower should be called a flower: {said}"))


def test_multi_label_model_with_ticked_labels_url_import_and_per_category_results(
        page: Page, server: Server, artifacts: Artifacts, url_server: UrlServer) -> None:
    sign_in(page, server, artifacts)
    model_id = create_multi_label_model(page, artifacts)
    upload_ticked(page, artifacts, ANTS, ("insect", "ant"),
                  {"insect": PER_GROUP, "ant": PER_GROUP, "flower": 0, "": 0})
    artifacts.shot(page, "uploaded-two-ticked")
    upload_ticked(page, artifacts, BEES, ("insect",),
                  {"insect": 2 * PER_GROUP, "ant": PER_GROUP, "flower": 0, "": 0})
    upload_ticked(page, artifacts, FLOWER_PHOTOS, ("flower",),
                  {"insect": 2 * PER_GROUP, "ant": PER_GROUP, "flower": PER_GROUP, "": 0})
    import_by_url(page, artifacts, url_server.file_url(BY_URL))
    train_and_read_results(page, model_id, artifacts)
    classify(page, artifacts)
