"""The "Classify many" step of the browser walk: drop photos the model never saw on the model
page, follow the batch to its results table, download its CSV."""

from __future__ import annotations

import base64
import csv
import re
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import DATASETS, Artifacts, report

FLOWERS = DATASETS / "flower_photos_small"
# Validation photos the walk never uploads (it trains on the first training photos and adds one
# validation sunflower and two validation daisies), two of each of its categories.
BATCH_PHOTOS = [FLOWERS / "val" / name for name in (
    "daisy/144099102_bf63a41e4f_n.jpg", "daisy/147068564_32bb4350cc.jpg",
    "sunflowers/164670455_29d8e02bbd_n.jpg", "sunflowers/197011740_21825de2bf.jpg",
    "tulips/107693873_86021ac4ea_n.jpg", "tulips/10791227_7168491604.jpg")]
PERCENT = re.compile(r"^\d+(\.\d+)?%$")
# Labelling six photos takes seconds; the slack is for a small machine still busy after training.
BATCH_TIMEOUT_MS = 300_000
CSV_FIXED = ["file", "image_id", "label", "probability"]
# A person's drop, as the browser delivers it: dragenter, dragover, then drop with the files.
DROP_FILES = """(zone, files) => {
    const transfer = new DataTransfer();
    for (const [name, data] of files) {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
    }
    for (const type of ["dragenter", "dragover", "drop"]) {
        zone.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true,
                                                 dataTransfer: transfer }));
    }
}"""


def drop_files(page: Page, selector: str, files: list[Path]) -> None:
    payload = [[path.name, base64.b64encode(path.read_bytes()).decode()] for path in files]
    page.locator(selector).evaluate(DROP_FILES, payload)


def batch_predict(page: Page, model_id: str, artifacts: Artifacts) -> None:
    """Drop BATCH_PHOTOS on "Classify many", classify them, check every row of the results and
    the CSV the page downloads."""
    page.goto(f"/web/models/{model_id}")
    categories = page.locator("[data-dropzone]").evaluate_all(
        "zones => zones.map((zone) => zone.dataset.category).filter(Boolean)")
    section = page.locator("#batches")
    expect(section.get_by_role("heading", name="Classify many"), artifacts.note(
        "a trained model's page should offer to classify many images")).to_be_visible()
    pool = int(page.locator("[data-dropzone][data-category=''] [data-count]").inner_text())
    if pool:
        expect(section.get_by_role("button", name=re.compile(
            rf"^Classify the unlabelled pool \({pool} images?\)$"))).to_be_visible()

    drop_files(page, "#batches [data-batch-drop]", BATCH_PHOTOS)
    chosen = section.locator("input[type=file]").evaluate(
        "input => Array.from(input.files, (file) => file.name)")
    assert chosen == [path.name for path in BATCH_PHOTOS], artifacts.note(
        f"dropping the photos should choose them for the form: {chosen}")
    expect(section.locator("[data-batch-drop]")).not_to_have_class(re.compile("is-dragover"))
    artifacts.shot(page, "batch-dropped")
    section.get_by_role("button", name="Classify these files").click()
    expect(page, artifacts.note("sending a batch should open its page")).to_have_url(
        re.compile(rf"/web/models/{model_id}/batches/\w+$"))
    batch_id = page.url.rsplit("/", 1)[1]
    expect(page.get_by_role("heading", name=f"Batch of {len(BATCH_PHOTOS)} images")
           ).to_be_visible()
    artifacts.shot(page, "batch-sent")

    # No reload by the test: the page follows the job and shows the results by itself.
    rows = page.locator("table.batch-results tbody tr")
    expect(rows, artifacts.note("the batch's results should show once its job is done")
           ).to_have_count(len(BATCH_PHOTOS), timeout=BATCH_TIMEOUT_MS)
    expect(page.locator("#job [data-job-status]")).to_have_text("succeeded")
    shown = [(row.locator(".file").inner_text().strip(),
              row.locator("td.label").inner_text().strip(),
              row.locator("td.probability").inner_text().strip()) for row in rows.all()]
    artifacts.shot(page, "batch-results")
    report("batch: " + "; ".join(f"{name} -> {label} ({p})" for name, label, p in shown))
    assert [name for name, _, _ in shown] == [path.name for path in BATCH_PHOTOS], (
        artifacts.note(f"results not in the order sent: {shown}"))
    for name, label, probability in shown:
        assert label in categories, artifacts.note(f"{name} labelled {label!r}, not one of "
                                                   f"{categories}")
        assert PERCENT.match(probability), artifacts.note(f"{name}: {probability!r}")

    with page.expect_download() as started:
        page.get_by_role("link", name="Download CSV").click()
    download = started.value
    assert download.suggested_filename == f"batch-{batch_id}.csv", artifacts.note(
        f"downloaded as {download.suggested_filename}")
    with Path(download.path()).open(newline="") as file:
        header, *table = list(csv.reader(file))
    assert header[:4] == CSV_FIXED and header[-1] == "error", artifacts.note(str(header))
    assert sorted(header[4:-1]) == sorted(categories), artifacts.note(str(header))
    assert len(table) == len(BATCH_PHOTOS), artifacts.note(f"{len(table)} CSV rows")
    assert [(row[0], row[2]) for row in table] == [(name, label) for name, label, _ in shown], (
        artifacts.note(f"the CSV {table} does not say what the page says {shown}"))
    assert all(row[-1] == "" for row in table), artifacts.note(str(table))

    page.goto(f"/web/models/{model_id}")
    listed = page.locator(f"#batches tr[data-batch='{batch_id}']")
    expect(listed, artifacts.note("the model page should list the batch among its recent ones")
           ).to_contain_text("succeeded")
    artifacts.shot(page, "batch-listed")
