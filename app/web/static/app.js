// NanoNet web form: progressive enhancement only. Every form works without this file.
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  var BATCH = 10;
  var FINISHED = { succeeded: true, failed: true };

  // The page's CSRF token: the web routes refuse a state-changing request without it.
  function csrfToken() {
    var meta = document.querySelector("meta[name=csrf-token]");
    return meta ? meta.content : "";
  }

  function errorMessage(body, status) {
    if (body && body.error && body.error.message) return body.error.message;
    if (status === 401) return "You are signed out; sign in again.";
    if (status === 403) return "Refused: reload the page and try again.";
    return "The upload failed (HTTP " + status + ").";
  }

  function resultItem(fileName, status, text) {
    var item = document.createElement("li");
    item.className = "result result-" + status;
    var name = document.createElement("span");
    name.className = "file";
    name.textContent = fileName;
    var tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = status === "pending" ? "uploading…" : status;
    item.appendChild(name);
    item.appendChild(tag);
    if (text) item.appendChild(document.createTextNode(" " + text));
    return item;
  }

  function describe(zone, result) {
    if (result.status === "duplicate") {
      return zone.dataset.duplicateNote || "already in this category";
    }
    if (result.also_in) return "also in " + result.also_in.join(", ") + ": see the review";
    if (result.status === "rejected" && result.error) return result.error.message;
    if (result.status === "accepted" && result.labels) {
      return result.labels.length ? "labelled " + result.labels.join(", ") : "not labelled";
    }
    return "";
  }

  // The ticked categories of a multi-label zone (none: its files go unlabelled).
  function tickedLabels(zone) {
    return Array.prototype.map.call(zone.querySelectorAll("input[name=label]:checked"),
                                    function (box) { return box.value; });
  }

  // A multi-label upload changes several counts at once: show the model's, as the server
  // answers them, in the page's per-category counters.
  function showCounts(body) {
    if (!body || !body.categories) return;
    var counts = {};
    body.categories.forEach(function (category) { counts[category.name] = category.count; });
    Array.prototype.forEach.call(document.querySelectorAll("[data-category-count]"),
                                 function (item) {
      var count = item.querySelector("[data-count]");
      if (count && item.dataset.categoryCount in counts) {
        count.textContent = String(counts[item.dataset.categoryCount]);
      }
    });
    var pool = document.querySelector("[data-pool-count] [data-count]");
    if (pool) pool.textContent = String(body.unlabelled);
  }

  function uploadBatch(zone, files, list, labels) {
    var pending = files.map(function (file) {
      var item = resultItem(file.name, "pending", "");
      list.appendChild(item);
      return item;
    });
    var form = new FormData();
    form.append("category", zone.dataset.category);
    (labels || []).forEach(function (label) { form.append("label", label); });
    files.forEach(function (file) { form.append("files", file, file.name); });
    return fetch(zone.dataset.uploadUrl, {
      method: "POST", body: form, credentials: "same-origin",
      headers: { Accept: "application/json", "X-CSRF-Token": csrfToken() }
    }).then(function (response) {
      return response.json().catch(function () { return null; }).then(function (body) {
        var results = response.ok ? body.results
          : (body && body.error && body.error.details && body.error.details.results);
        var accepted = 0;
        pending.forEach(function (item, index) {
          var result = results && results[index];
          var replacement = result
            ? resultItem(result.file, result.status, describe(zone, result))
            : resultItem(files[index].name, "error", errorMessage(body, response.status));
          if (result && result.status === "accepted") accepted += 1;
          list.replaceChild(replacement, item);
        });
        if (response.ok && labels !== null) showCounts(body);
        return accepted;
      });
    }).catch(function () {
      pending.forEach(function (item, index) {
        list.replaceChild(resultItem(files[index].name, "error", "network error"), item);
      });
      return 0;
    });
  }

  function uploadFiles(zone, fileList) {
    var files = Array.prototype.slice.call(fileList);
    if (!files.length) return;
    var list = zone.querySelector("[data-results]");
    var count = zone.querySelector("[data-count]");
    // Read now, before the first batch is sent; null for a zone of one category.
    var labels = "multiLabel" in zone.dataset ? tickedLabels(zone) : null;
    list.innerHTML = "";
    var summary = document.createElement("li");
    summary.className = "result-summary";
    list.appendChild(summary);
    var added = 0;
    var done = 0;
    var chain = Promise.resolve();
    summary.textContent = "Uploading " + files.length + " files…";
    for (var start = 0; start < files.length; start += BATCH) {
      (function (batch) {
        chain = chain.then(function () {
          return uploadBatch(zone, batch, list, labels).then(function (accepted) {
            added += accepted;
            done += batch.length;
            if (count) count.textContent = String(Number(count.textContent) + accepted);
            summary.textContent = (done < files.length ? "Uploading… " : "") +
              added + " of " + files.length + " files added.";
          });
        });
      })(files.slice(start, start + BATCH));
    }
  }

  // Highlight `zone` while files are dragged over it; hand dropped files to `onDrop`.
  function acceptDrops(zone, onDrop) {
    var depth = 0;
    zone.addEventListener("dragenter", function (event) {
      event.preventDefault();
      depth += 1;
      zone.classList.add("is-dragover");
    });
    zone.addEventListener("dragover", function (event) {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
    });
    zone.addEventListener("dragleave", function () {
      depth = Math.max(0, depth - 1);
      if (!depth) zone.classList.remove("is-dragover");
    });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      depth = 0;
      zone.classList.remove("is-dragover");
      onDrop(event.dataTransfer.files);
    });
  }

  function enhanceDropzone(zone) {
    acceptDrops(zone, function (files) { uploadFiles(zone, files); });
    var form = zone.querySelector("form");
    var input = zone.querySelector("input[type=file]");
    if (form && input && window.fetch && window.FormData) {
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        uploadFiles(zone, input.files);
        // The ticked categories stay ticked for the next files, as after a page's reload.
        if ("multiLabel" in zone.dataset) input.value = ""; else form.reset();
      });
    }
  }

  // A file dropped beside a drop zone must not make the browser navigate away to it.
  ["dragover", "drop"].forEach(function (name) {
    window.addEventListener(name, function (event) {
      if (!event.target.closest || !event.target.closest("[data-dropzone]")) {
        event.preventDefault();
      }
    });
  });

  // Where a finished job is shown: its model page, rendered anew by the server.
  function finishedUrl(box, job) {
    if (box.dataset.finishedUrl) return new URL(box.dataset.finishedUrl, window.location.href);
    var url = new URL(window.location.href);
    url.search = "?job=" + encodeURIComponent(job.id);
    url.hash = "training";
    return url;
  }

  // A URL that differs from the address only in its fragment would just scroll this stale page
  // (the Train redirect lands on exactly that URL), so the job leaves the address first; the
  // replace is then a real load, and the browser opens it at the fragment.
  function openFresh(url) {
    var here = window.location;
    if (url.pathname === here.pathname && url.search === here.search) {
      window.history.replaceState(window.history.state, "", here.pathname);
    }
    here.replace(url.href);
  }

  function pollJob(box) {
    var status = box.querySelector("[data-job-status]");
    var stage = box.querySelector("[data-job-stage]");
    var percent = box.querySelector("[data-job-percent]");
    var bar = box.querySelector("[data-job-bar]");
    var error = box.querySelector("[data-job-error]");
    var failures = 0;

    function show(job) {
      var value = Math.round(job.progress * 100);
      status.textContent = job.status;
      status.className = "job-status status-" + job.status;
      stage.textContent = job.stage.replace(/_/g, " ");
      box.dataset.status = job.status;
      percent.textContent = value + "%";
      bar.setAttribute("aria-valuenow", String(value));
      bar.querySelector("rect").setAttribute("width", (job.progress * 100).toFixed(1));
      if (job.error && job.status !== "succeeded") {
        error.textContent = job.error;
        error.hidden = false;
      }
    }

    function tick() {
      fetch(box.dataset.jobUrl, {
        credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" }
      }).then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      }).then(function (job) {
        failures = 0;
        show(job);
        if (FINISHED[job.status]) {
          window.setTimeout(function () { openFresh(finishedUrl(box, job)); }, 500);
        } else {
          window.setTimeout(tick, 1000);
        }
      }).catch(function () {
        failures += 1;
        if (failures >= 3) {
          error.textContent = "Lost contact with the server; retrying…";
          error.hidden = false;
        }
        window.setTimeout(tick, Math.min(10000, 1000 * failures));
      });
    }

    window.setTimeout(tick, 1000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("[data-dropzone]"), enhanceDropzone);
    // "Classify many": dropped files become the form's chosen files, which it then posts.
    Array.prototype.forEach.call(document.querySelectorAll("[data-batch-drop]"), function (zone) {
      var input = zone.querySelector("input[type=file]");
      acceptDrops(zone, function (files) { if (files.length) input.files = files; });
    });
    // A chart shrinks with the page down to its floor (charts.py), then scrolls sideways.
    Array.prototype.forEach.call(document.querySelectorAll("svg[data-min-width]"), function (svg) {
      svg.style.minWidth = svg.dataset.minWidth + "px";
    });
    Array.prototype.forEach.call(document.querySelectorAll("form[data-confirm]"), function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    });
    var job = document.getElementById("job");
    if (job && job.dataset.active === "true" && window.fetch) pollJob(job);
    // A new webhook's page answers the POST that made it (with the secret, once): give it its
    // own address, so a reload neither registers it again nor shows the secret again.
    var made = document.querySelector("[data-replace-url]");
    if (made && window.history.replaceState) {
      window.history.replaceState(null, "", made.dataset.replaceUrl);
    }
    // A page with something still pending (a webhook delivery) reloads until it settles.
    var pending = document.querySelector("[data-reload-after]");
    if (pending) {
      window.setTimeout(function () { window.location.reload(); },
                        Number(pending.dataset.reloadAfter));
    }
  });
})();
