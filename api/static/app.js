/* inkq web page: submit an image job, follow its progress, show the result.
 * Plain JS, no dependencies. Every piece of text that comes from the user or the server
 * is inserted with textContent (never innerHTML). */
(function () {
  "use strict";

  var KEY_STORAGE = "inkq.apiKey";
  var TERMINAL = { completed: true, failed: true, canceled: true };
  var POLL_MS = 2000;
  var OPS = {
    "stencil": { label: "Stencil", submit: "Create stencil", image: "Photo", needsImage: true },
    "enhance": { label: "Enhance", submit: "Enhance image", image: "Photo", needsImage: true },
    "ia-gen": { label: "AI design", submit: "Generate design", image: "Reference image (optional)", needsImage: false },
    "color-match": { label: "Color match", submit: "Match ink colours", image: "Image", needsImage: true }
  };
  var STATUS_TEXT = {
    waiting: "Waiting", active: "Working", completed: "Completed", failed: "Failed", canceled: "Canceled"
  };

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  var ui = {
    key: $("api-key"), keyToggle: $("key-toggle"), remember: $("remember-key"), keyState: $("key-state"), keyStateText: $("key-state-text"),
    credits: $("credits"),
    form: $("job-form"), dropzone: $("dropzone"), file: $("image"), imageLabel: $("image-label"),
    empty: $("dropzone-empty"), preview: $("dropzone-preview"), previewImg: $("preview-img"),
    previewName: $("preview-name"), previewSize: $("preview-size"), clearImage: $("clear-image"),
    stencilOptions: $("stencil-options"), colorOptions: $("color-options"),
    style: $("style"), lineWeight: $("line-weight"), lineWeightOut: $("line-weight-out"), transparent: $("transparent"), svg: $("svg"),
    colors: $("colors"), colorsOut: $("colors-out"),
    promptField: $("prompt-field"), prompt: $("prompt"), promptLabel: $("prompt-label"), engine: $("engine"),
    formError: $("form-error"), submit: $("submit"), submitText: $("submit-text"),
    jobCard: $("job-card"), jobTitle: $("job-title"), jobSub: $("job-sub"), jobStatus: $("job-status"),
    jobBody: $("job-body"), progress: $("progress"), progressFill: $("progress-fill"), progressPct: $("progress-pct"),
    stage: $("job-stage"), queue: $("job-queue"), jobError: $("job-error"), erased: $("job-erased"),
    figInput: $("fig-input"), inputImg: $("input-img"), figResult: $("fig-result"), resultImg: $("result-img"),
    resultCaption: $("result-caption"), resultPlaceholder: $("result-placeholder"), jobEmpty: $("job-empty"),
    paletteWrap: $("palette-wrap"), palette: $("palette"), paletteLegend: $("palette-legend"),
    download: $("download"), downloadSvg: $("download-svg"), cancel: $("cancel"), meta: $("job-meta"),
    erase: $("erase"), eraseConfirm: $("erase-confirm"), eraseYes: $("erase-yes"), eraseNo: $("erase-no"),
    jobs: $("jobs"), jobsEmpty: $("jobs-empty"), refreshJobs: $("refresh-jobs")
  };

  var state = {
    file: null, fileUrl: null,        // the selected image and its object URL
    job: null,                        // the status object shown in the job card
    inputs: {},                       // jobId -> object URL of the image submitted from this page
    follow: null,                     // {id, ctrl}: the job being followed
    shownImage: null,                 // jobId whose result image is shown
    jobsTimer: null
  };

  // ---------------------------------------------------------------- API helpers

  function apiKey() { return ui.key.value.trim(); }

  function ApiError(status, code, message, retryAfter) {
    this.status = status; this.code = code; this.message = message; this.retryAfter = retryAfter;
  }

  function api(method, path, body, signal) {
    var headers = { "Accept": "application/json" };
    var key = apiKey();
    if (key) headers["Authorization"] = "Bearer " + key;
    var init = { method: method, headers: headers, cache: "no-store", signal: signal };
    if (body !== undefined) init.body = body;
    return fetch(path, init).then(function (res) {
      return res.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (!res.ok) {
          var message = (data && typeof data.error === "string") ? data.error : ("Request failed (HTTP " + res.status + ").");
          var code = (data && data.code) || "http_" + res.status;
          throw new ApiError(res.status, code, message, res.headers.get("Retry-After"));
        }
        return data;
      });
    }, function (err) {
      if (err && err.name === "AbortError") throw err;
      throw new ApiError(0, "network", "Cannot reach the server. Check your connection and try again.");
    });
  }

  function explain(err) {
    if (!err) return "Something went wrong.";
    if (err.status === 401) return "Your API key was not accepted. Check it and try again.";
    var msg = err.message || String(err);
    if (err.retryAfter && (err.status === 429 || err.status === 503)) {
      msg += " Try again in " + humanSeconds(parseInt(err.retryAfter, 10)) + ".";
    }
    return msg;
  }

  function humanSeconds(s) {
    if (!isFinite(s) || s <= 0) return "a moment";
    if (s < 90) return s + " s";
    if (s < 3600) return Math.round(s / 60) + " min";
    return Math.round(s / 3600) + " h";
  }

  // Where a job stands, from the status object's queuePosition and etaS (numbers or null; anything
  // else is ignored): "3rd in line · about 40 s" while waiting, "About 10 s left" while active.
  function ordinal(n) {
    var tens = n % 100, ones = n % 10;
    return n + (tens >= 10 && tens <= 20 ? "th" : ones === 1 ? "st" : ones === 2 ? "nd" : ones === 3 ? "rd" : "th");
  }

  function about(s) {
    if (s < 10) return "about " + Math.max(1, Math.round(s)) + " s";
    if (s < 90) return "about " + 5 * Math.round(s / 5) + " s";
    if (s < 5400) return "about " + Math.round(s / 60) + " min";
    return "about " + Math.round(s / 3600) + " h";
  }

  function whereText(job) {
    var position = job.queuePosition, eta = job.etaS;
    position = typeof position === "number" && position >= 1 && position % 1 === 0 ? position : null;
    eta = typeof eta === "number" && isFinite(eta) && eta >= 0 ? eta : null;
    if (job.status === "waiting") {
      var parts = [];
      if (position !== null) parts.push(position === 1 ? "Next in line" : ordinal(position) + " in line");
      if (eta !== null) parts.push(parts.length ? about(eta) : "About " + about(eta).slice(6) + " to go");
      return parts.join(" · ");
    }
    if (job.status === "active" && eta !== null) return "About " + about(eta).slice(6) + " left";
    return "";
  }

  function sleep(ms, signal) {
    return new Promise(function (resolve) {
      var t = setTimeout(resolve, ms);
      if (signal) signal.addEventListener("abort", function () { clearTimeout(t); resolve(); }, { once: true });
    });
  }

  function safeUrl(value) {
    if (typeof value !== "string" || !value) return null;
    try {
      var u = new URL(value, document.baseURI);
      return (u.protocol === "http:" || u.protocol === "https:") ? u.href : null;
    } catch (e) { return null; }
  }

  function safeHex(value) {
    return (typeof value === "string" && /^#[0-9a-f]{6}$/i.test(value)) ? value : null;
  }

  // ---------------------------------------------------------------- API key

  function setKeyState(kind, text) {
    ui.keyState.classList.remove("ok", "bad");
    if (kind) ui.keyState.classList.add(kind);
    ui.keyStateText.textContent = text;
  }

  // The key lives in sessionStorage (this tab); in localStorage only while "Remember" is ticked.
  function keepKey() {
    var key = apiKey();
    try {
      if (key) sessionStorage.setItem(KEY_STORAGE, key); else sessionStorage.removeItem(KEY_STORAGE);
      if (key && ui.remember.checked) localStorage.setItem(KEY_STORAGE, key); else localStorage.removeItem(KEY_STORAGE);
    } catch (e) { /* storage may be disabled */ }
  }

  function savedKey() {
    try {
      var remembered = localStorage.getItem(KEY_STORAGE);
      ui.remember.checked = !!remembered;
      return remembered || sessionStorage.getItem(KEY_STORAGE);
    } catch (e) { return null; }
  }

  function keyPlace() { return ui.remember.checked ? "Remembered on this device." : "Kept in this tab only."; }

  var keyTimer = null;
  function onKeyChanged() {
    var key = apiKey();
    keepKey();
    clearTimeout(keyTimer);
    if (!key) {
      setKeyState(null, keyPlace());
      ui.credits.hidden = true;
      renderJobs(null);
      return;
    }
    setKeyState(null, "Checking key…");
    keyTimer = setTimeout(function () { loadJobs(true); loadCredits(); }, 350);
  }

  function loadCredits() {
    if (!apiKey()) return;
    api("GET", "credits").then(function (data) {
      var balance = data && typeof data.balance === "number" ? data.balance : null;
      // Servers with credits off say so (`enabled: false`); their balance means nothing.
      if (balance === null || data.enabled === false) { ui.credits.hidden = true; return; }
      ui.credits.textContent = balance + (balance === 1 ? " credit" : " credits");
      ui.credits.hidden = false;
    }, function () { ui.credits.hidden = true; });
  }

  // ---------------------------------------------------------------- form

  function operation() {
    var checked = ui.form.querySelector("input[name=operation]:checked");
    return checked ? checked.value : "stencil";
  }

  function syncOperation() {
    var op = operation();
    var info = OPS[op];
    ui.stencilOptions.hidden = op !== "stencil";
    ui.colorOptions.hidden = op !== "color-match";
    ui.promptField.hidden = op === "color-match";
    ui.imageLabel.textContent = info.image;
    ui.submitText.textContent = info.submit;
    ui.promptLabel.textContent = "";
    if (op === "ia-gen") {
      ui.promptLabel.appendChild(document.createTextNode("Describe the design "));
      ui.promptLabel.appendChild(el("span", "muted", "(required)"));
      ui.prompt.placeholder = "e.g. fine-line peony with a dagger, blackwork, forearm placement";
      ui.prompt.required = true;
    } else {
      ui.promptLabel.appendChild(document.createTextNode("Notes "));
      ui.promptLabel.appendChild(el("span", "muted", "(optional)"));
      ui.prompt.placeholder = "e.g. keep the rose petals, drop the background";
      ui.prompt.required = false;
    }
    showFormError(null);
  }

  function syncRanges() {
    ui.lineWeightOut.textContent = Number(ui.lineWeight.value).toFixed(1) + "×";
    ui.colorsOut.textContent = ui.colors.value;
  }

  function formatBytes(n) {
    if (n < 1024) return n + " B";
    if (n < 1024 * 1024) return (n / 1024).toFixed(0) + " KB";
    return (n / 1024 / 1024).toFixed(1) + " MB";
  }

  function setFile(file) {
    showFormError(null);
    if (file && !/^image\/(jpeg|png|webp)$/.test(file.type)) {
      showFormError("That file is not a JPEG, PNG or WebP image.");
      return;
    }
    if (state.fileUrl && !isInputUrlInUse(state.fileUrl)) URL.revokeObjectURL(state.fileUrl);
    state.file = file || null;
    state.fileUrl = file ? URL.createObjectURL(file) : null;
    if (!file) {
      ui.file.value = "";
      ui.preview.hidden = true;
      ui.empty.hidden = false;
      ui.previewImg.removeAttribute("src");
      return;
    }
    ui.previewImg.src = state.fileUrl;
    ui.previewName.textContent = file.name || "image";
    ui.previewSize.textContent = formatBytes(file.size);
    ui.preview.hidden = false;
    ui.empty.hidden = true;
  }

  function isInputUrlInUse(url) {
    for (var id in state.inputs) if (state.inputs[id] === url) return true;
    return false;
  }

  function showFormError(text) {
    ui.formError.textContent = text || "";
    ui.formError.hidden = !text;
  }

  function setBusy(busy) {
    ui.submit.disabled = busy;
    var spinner = ui.submit.querySelector(".spinner");
    if (busy && !spinner) ui.submit.insertBefore(el("span", "spinner"), ui.submitText);
    if (!busy && spinner) spinner.remove();
  }

  function onSubmit(event) {
    event.preventDefault();
    showFormError(null);
    var op = operation();
    if (!apiKey()) { showFormError("Enter your API key first."); ui.key.focus(); return; }
    if (OPS[op].needsImage && !state.file) { showFormError("Choose an image to upload."); ui.file.focus(); return; }
    var prompt = ui.prompt.value.trim();
    if (op === "ia-gen" && !prompt) { showFormError("Describe the design you want."); ui.prompt.focus(); return; }

    var body = new FormData();
    body.append("operation", op);
    if (state.file) body.append("image", state.file, state.file.name || "image");
    if (op !== "color-match" && prompt) body.append("prompt", prompt);
    if (ui.engine.value && ui.engine.value !== "auto") body.append("engine", ui.engine.value);
    if (op === "stencil") {
      body.append("style", ui.style.value);
      if (Number(ui.lineWeight.value) !== 1) body.append("lineWeight", ui.lineWeight.value);
      if (ui.transparent.checked) body.append("transparent", "true");
      if (ui.svg.checked) body.append("format", "svg");
    }
    if (op === "color-match") body.append("colors", ui.colors.value);

    var inputUrl = state.file ? state.fileUrl : null;
    setBusy(true);
    api("POST", "generate", body).then(function (accepted) {
      setKeyState("ok", "Key accepted.");
      if (inputUrl) state.inputs[accepted.jobId] = inputUrl;
      showJob({
        jobId: accepted.jobId, queue: accepted.queue, operation: accepted.operation || op,
        status: accepted.status || "waiting", progress: 0, stage: "queued", result: null, error: null,
        attempts: 0, createdAt: new Date().toISOString(), startedAt: null, endedAt: null
      });
      follow(accepted.jobId);
      loadJobs(false);
      loadCredits();
      if (window.matchMedia && window.matchMedia("(max-width: 860px)").matches) {
        ui.jobCard.scrollIntoView({ behavior: "smooth", block: "start" });
      }
    }, function (err) {
      if (err.status === 401) setKeyState("bad", "Key rejected.");
      showFormError(explain(err));
      if (err.code === "insufficient_credits") loadCredits();
    }).then(function () { setBusy(false); });
  }

  // ---------------------------------------------------------------- following a job

  function stopFollowing() {
    if (state.follow) { state.follow.ctrl.abort(); state.follow = null; }
  }

  function follow(id) {
    stopFollowing();
    var ctrl = new AbortController();
    state.follow = { id: id, ctrl: ctrl };
    streamEvents(id, ctrl.signal).then(function (finished) {
      return finished ? null : poll(id, ctrl.signal);
    }, function (err) {
      if (ctrl.signal.aborted) return null;
      if (err && err.status === 404) { onStatusError(id, err); return null; }
      return poll(id, ctrl.signal);    // no stream: poll every 2 s instead
    }).catch(function () { /* aborted */ });
  }

  // Server-sent events over fetch(), because EventSource cannot send the Authorization header.
  // Resolves true once a terminal status was seen, false if the stream ended early.
  function streamEvents(id, signal) {
    if (!window.ReadableStream || !window.TextDecoder) return Promise.reject(new Error("no streams"));
    var headers = { "Accept": "text/event-stream", "Authorization": "Bearer " + apiKey() };
    return fetch("status/" + encodeURIComponent(id) + "/events", { headers: headers, cache: "no-store", signal: signal })
      .then(function (res) {
        if (!res.ok || !res.body) {
          var err = new ApiError(res.status, "http_" + res.status, "stream unavailable");
          throw err;
        }
        var reader = res.body.getReader();
        var decoder = new TextDecoder();
        var buffer = "";
        var finished = false;

        function handle(block) {
          var event = "message", data = [];
          block.split("\n").forEach(function (line) {
            if (!line || line.charAt(0) === ":") return;
            var colon = line.indexOf(":");
            var field = colon < 0 ? line : line.slice(0, colon);
            var value = colon < 0 ? "" : line.slice(colon + 1);
            if (value.charAt(0) === " ") value = value.slice(1);
            if (field === "event") event = value;
            else if (field === "data") data.push(value);
          });
          if (event !== "status" || !data.length) return;
          var body;
          try { body = JSON.parse(data.join("\n")); } catch (e) { return; }
          if (signal.aborted) return;
          onStatus(body);
          if (TERMINAL[body.status]) finished = true;
        }

        function pump() {
          return reader.read().then(function (chunk) {
            if (chunk.done || signal.aborted) return finished;
            buffer = (buffer + decoder.decode(chunk.value, { stream: true })).replace(/\r\n/g, "\n");
            var cut;
            while ((cut = buffer.indexOf("\n\n")) >= 0) {
              handle(buffer.slice(0, cut));
              buffer = buffer.slice(cut + 2);
            }
            if (finished) { reader.cancel().catch(function () {}); return true; }
            return pump();
          });
        }
        return pump();
      });
  }

  function poll(id, signal) {
    var failures = 0;
    function step() {
      if (signal.aborted) return null;
      return api("GET", "status/" + encodeURIComponent(id), undefined, signal).then(function (body) {
        failures = 0;
        if (signal.aborted) return null;
        onStatus(body);
        if (TERMINAL[body.status]) return null;
        return sleep(POLL_MS, signal).then(step);
      }, function (err) {
        if (signal.aborted || (err && err.name === "AbortError")) return null;
        if (err.status === 404 || err.status === 401) { onStatusError(id, err); return null; }
        failures += 1;
        return sleep(Math.min(POLL_MS * Math.pow(2, failures), 30000), signal).then(step);
      });
    }
    return step();
  }

  function onStatus(body) {
    if (!body || !state.job || body.jobId !== state.job.jobId) return;
    var was = state.job.status;
    showJob(body);
    if (TERMINAL[body.status] && !TERMINAL[was]) { loadJobs(false); loadCredits(); }
  }

  function onStatusError(id, err) {
    if (!state.job || state.job.jobId !== id) return;
    ui.jobError.className = "job-error";
    ui.jobError.textContent = err.status === 404 ? "This job no longer exists (results expire)." : explain(err);
    ui.jobError.hidden = false;
  }

  // ---------------------------------------------------------------- rendering the job card

  function opLabel(op) { return (OPS[op] && OPS[op].label) || op || "Job"; }

  function showJob(job) {
    var sameJob = state.job && state.job.jobId === job.jobId;
    state.job = job;
    var status = job.status in STATUS_TEXT ? job.status : "waiting";
    var progress = Math.max(0, Math.min(100, Math.round(Number(job.progress) || 0)));
    var terminal = !!TERMINAL[status];

    ui.jobTitle.textContent = opLabel(job.operation);
    ui.jobSub.textContent = "";
    ui.jobSub.appendChild(document.createTextNode("Job "));
    ui.jobSub.appendChild(el("code", null, job.jobId));
    ui.jobStatus.hidden = false;
    ui.jobStatus.className = "pill " + status;
    ui.jobStatus.textContent = STATUS_TEXT[status];
    ui.jobBody.hidden = false;
    ui.jobEmpty.hidden = true;
    ui.jobCard.setAttribute("aria-busy", terminal ? "false" : "true");

    ui.progress.className = "progress " + status;
    ui.progress.setAttribute("aria-valuenow", String(progress));
    ui.progress.setAttribute("aria-valuetext", progress + "%" + (job.stage ? ", " + job.stage : ""));
    ui.progressFill.style.width = progress + "%";
    ui.progressPct.textContent = progress + "%";
    ui.stage.textContent = job.stage || (status === "waiting" ? "queued" : "");
    var where = whereText(job);
    ui.queue.textContent = where;
    ui.queue.hidden = !where;
    ui.erased.hidden = true;

    ui.jobError.textContent = job.error || "";
    ui.jobError.hidden = !job.error || status === "completed";
    ui.jobError.className = "job-error" + (status === "canceled" ? " neutral" : "");

    // Original image, if it was submitted from this page.
    var inputUrl = state.inputs[job.jobId];
    ui.figInput.hidden = !inputUrl;
    if (inputUrl && ui.inputImg.getAttribute("src") !== inputUrl) ui.inputImg.src = inputUrl;
    if (!inputUrl) ui.inputImg.removeAttribute("src");

    // Result image, palette, download.
    var result = status === "completed" && job.result ? job.result : null;
    var imageUrl = result ? safeUrl(result.image) : null;
    if (imageUrl) {
      if (!sameJob || state.shownImage !== job.jobId || !ui.resultImg.getAttribute("src")) {
        ui.resultImg.src = imageUrl;
        state.shownImage = job.jobId;
      }
      ui.resultImg.alt = opLabel(job.operation) + " result";
      ui.resultImg.hidden = false;
      ui.resultPlaceholder.hidden = true;
      ui.download.href = imageUrl;
      ui.download.setAttribute("download", "inkq-" + job.operation + "-" + job.jobId + ".png");
      ui.download.hidden = false;
      var svgUrl = result.svg ? safeUrl(result.svg) : null;
      ui.downloadSvg.hidden = !svgUrl;
      if (svgUrl) {
        ui.downloadSvg.href = svgUrl;
        ui.downloadSvg.setAttribute("download", "inkq-" + job.operation + "-" + job.jobId + ".svg");
      } else {
        ui.downloadSvg.removeAttribute("href");
      }
    } else {
      ui.resultImg.hidden = true;
      ui.resultImg.removeAttribute("src");
      ui.resultPlaceholder.hidden = false;
      ui.resultPlaceholder.className = "placeholder" + (terminal ? "" : " working");
      ui.resultPlaceholder.textContent = status === "waiting" ? "Waiting for a free worker…" :
        status === "active" ? "Working on it…" : status === "completed" ? "No image in this result." :
        status === "failed" ? "No result: the job failed." : "No result: the job was canceled.";
      state.shownImage = null;
      ui.download.hidden = true;
      ui.download.removeAttribute("href");
      ui.downloadSvg.hidden = true;
      ui.downloadSvg.removeAttribute("href");
    }
    ui.resultCaption.textContent = job.operation === "color-match" ? "Ink preview" : "Result";
    renderPalette(result && Array.isArray(result.palette) ? result.palette : null);

    ui.cancel.hidden = terminal;
    ui.cancel.disabled = false;
    ui.erase.hidden = !terminal;
    ui.erase.disabled = false;
    if (!sameJob || !terminal) showEraseConfirm(false);
    renderMeta(job);
    markCurrentInList();
  }

  function renderPalette(palette) {
    ui.palette.textContent = "";
    ui.paletteWrap.hidden = !palette || !palette.length;
    if (!palette) return;
    ui.paletteLegend.hidden = !palette.some(function (ink) { return ink && safeHex(ink.sourceHex); });
    // Coverage may come as fractions (summing to 1) or as percentages (summing to 100).
    var total = palette.reduce(function (sum, ink) {
      var c = ink ? Number(ink.coverage) : NaN;
      return sum + (isFinite(c) ? c : 0);
    }, 0);
    var scale = total > 0 && total <= 1.001 ? 100 : 1;
    palette.forEach(function (ink) {
      if (!ink || typeof ink !== "object") return;
      var item = el("li", "swatch");
      var chip = el("div", "swatch-chip");
      var hex = safeHex(ink.hex);
      if (hex) chip.style.backgroundColor = hex;
      var src = safeHex(ink.sourceHex);
      if (src) {
        var strip = el("span", "swatch-src");
        strip.style.backgroundColor = src;
        strip.title = "Colour in your image: " + src.toUpperCase();
        chip.appendChild(strip);
        chip.classList.add("has-src");
      }
      item.appendChild(chip);

      var coverage = Number(ink.coverage) * scale;
      var deltaE = Number(ink.deltaE);
      var body = el("div", "swatch-body");
      body.appendChild(el("span", "swatch-name", ink.name || "Ink"));
      body.appendChild(el("span", "swatch-hex", (ink.hex || "").toString().toUpperCase()));
      var stats = el("span", "swatch-stats");
      stats.appendChild(el("span", null, isFinite(coverage) ? coverage.toFixed(1) + "%" : "–"));
      var de = el("span", null, "ΔE " + (isFinite(deltaE) ? deltaE.toFixed(1) : "–"));
      de.title = "Colour difference between your image and this ink (lower is closer)";
      stats.appendChild(de);
      body.appendChild(stats);
      var bar = el("span", "swatch-bar");
      var fill = el("span");
      fill.style.width = (isFinite(coverage) ? Math.max(0, Math.min(100, coverage)) : 0) + "%";
      bar.appendChild(fill);
      body.appendChild(bar);
      item.appendChild(body);
      item.setAttribute("aria-label", (ink.name || "Ink") + ", " + (ink.hex || "") +
        (isFinite(coverage) ? ", " + coverage.toFixed(1) + "% coverage" : "") +
        (isFinite(deltaE) ? ", delta E " + deltaE.toFixed(1) : ""));
      ui.palette.appendChild(item);
    });
  }

  function formatTime(iso) {
    if (!iso) return null;
    var d = new Date(iso);
    if (isNaN(d)) return null;
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function duration(a, b) {
    var s = (new Date(b) - new Date(a)) / 1000;
    if (!isFinite(s) || s < 0) return null;
    return s < 60 ? s.toFixed(1) + " s" : Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
  }

  function renderMeta(job) {
    ui.meta.textContent = "";
    var rows = [["Queue", job.queue], ["Submitted", formatTime(job.createdAt)], ["Started", formatTime(job.startedAt)]];
    if (job.startedAt && job.endedAt) rows.push(["Took", duration(job.startedAt, job.endedAt)]);
    else rows.push(["Ended", formatTime(job.endedAt)]);
    rows.push(["Attempts", job.attempts]);
    rows.forEach(function (row) {
      if (row[1] === null || row[1] === undefined || row[1] === "") return;
      var div = el("div");
      div.appendChild(el("dt", null, row[0]));
      div.appendChild(el("dd", null, row[1]));
      ui.meta.appendChild(div);
    });
  }

  function onCancel() {
    if (!state.job) return;
    var id = state.job.jobId;
    ui.cancel.disabled = true;
    api("DELETE", "jobs/" + encodeURIComponent(id)).then(function () {
      return api("GET", "status/" + encodeURIComponent(id)).then(function (body) {
        stopFollowing();
        onStatus(body);
        loadJobs(false);
      });
    }, function (err) {
      ui.cancel.disabled = false;
      ui.jobError.className = "job-error";
      ui.jobError.textContent = explain(err);
      ui.jobError.hidden = false;
    });
  }

  // ---------------------------------------------------------------- erasing a finished job's data

  function showEraseConfirm(open) {
    ui.eraseConfirm.hidden = !open;
    ui.erase.setAttribute("aria-expanded", open ? "true" : "false");
    ui.eraseYes.disabled = false;
  }

  function onErase() {
    if (!state.job) return;
    var id = state.job.jobId;
    ui.eraseYes.disabled = true;
    var path = "jobs/" + encodeURIComponent(id);
    api("DELETE", path + "/data").then(function () { showErased(id); }, function (err) {
      // A retry after a lost answer finds the job gone; a server without erasure also answers 404:
      // only a job the server no longer knows is shown as erased.
      var check = err.status === 404 ? api("GET", "status/" + encodeURIComponent(id)) : Promise.reject(err);
      return check.then(function () {
        throw new ApiError(404, "not_found", "This server cannot erase a job's data.");
      }, function (again) {
        if (again.status === 404) showErased(id); else throw again;
      });
    }).catch(function (err) {
      if (!state.job || state.job.jobId !== id) return;
      showEraseConfirm(false);
      ui.jobError.className = "job-error";
      ui.jobError.textContent = explain(err);
      ui.jobError.hidden = false;
    });
  }

  function showErased(id) {
    if (state.follow && state.follow.id === id) stopFollowing();
    var inputUrl = state.inputs[id];
    delete state.inputs[id];
    if (inputUrl && inputUrl !== state.fileUrl) URL.revokeObjectURL(inputUrl);
    if (!state.job || state.job.jobId !== id) { loadJobs(false); return; }
    state.job = null;
    state.shownImage = null;
    showEraseConfirm(false);
    ui.resultImg.removeAttribute("src");
    ui.inputImg.removeAttribute("src");
    ui.download.removeAttribute("href");
    ui.downloadSvg.removeAttribute("href");
    ui.jobBody.hidden = true;
    ui.jobStatus.hidden = true;
    ui.jobCard.setAttribute("aria-busy", "false");
    ui.jobTitle.textContent = "Erased";
    ui.jobSub.textContent = "";
    ui.jobSub.appendChild(document.createTextNode("Job "));
    ui.jobSub.appendChild(el("code", null, id));
    ui.erased.textContent = "The job's photo, result and record were deleted from the server. Its links no longer work.";
    ui.erased.hidden = false;
    loadJobs(false);
    loadCredits();
  }

  // ---------------------------------------------------------------- "Your jobs"

  function loadJobs(checkingKey) {
    if (!apiKey()) { renderJobs(null); return; }
    api("GET", "jobs?limit=20").then(function (data) {
      if (checkingKey) setKeyState("ok", "Key accepted.");
      renderJobs(data && Array.isArray(data.jobs) ? data.jobs : []);
    }, function (err) {
      if (err.status === 401) {
        setKeyState("bad", "Key rejected.");
        renderJobs(null, "Your API key was not accepted.");
      } else if (checkingKey) {
        setKeyState(null, explain(err));
      }
    });
  }

  function relativeTime(iso) {
    var t = new Date(iso);
    if (!iso || isNaN(t)) return "";
    var s = Math.round((Date.now() - t) / 1000);
    if (s < 45) return "just now";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return Math.round(s / 3600) + " h ago";
    return t.toLocaleDateString();
  }

  function renderJobs(jobs, message) {
    clearTimeout(state.jobsTimer);
    ui.jobs.textContent = "";
    if (!jobs || !jobs.length) {
      ui.jobsEmpty.textContent = message || (jobs ? "No jobs yet. Your recent jobs will appear here." :
        "Enter your API key to see your recent jobs.");
      ui.jobsEmpty.hidden = false;
      return;
    }
    ui.jobsEmpty.hidden = true;
    var running = false;
    jobs.forEach(function (job) {
      if (!job || !job.jobId) return;
      var status = job.status in STATUS_TEXT ? job.status : "waiting";
      if (!TERMINAL[status]) running = true;
      var li = el("li");
      var button = el("button", "job-item");
      button.type = "button";
      button.dataset.jobId = job.jobId;
      button.dataset.status = status;

      var thumb = el("span", "thumb");
      var thumbUrl = status === "completed" && job.result ? safeUrl(job.result.image) : null;
      if (thumbUrl) {
        var img = el("img");
        img.src = thumbUrl;
        img.alt = "";
        img.loading = "lazy";
        thumb.appendChild(img);
      } else {
        thumb.textContent = opLabel(job.operation).slice(0, 2).toUpperCase();
      }
      thumb.setAttribute("aria-hidden", "true");
      button.appendChild(thumb);

      var main = el("span", "job-item-main");
      main.appendChild(el("span", "job-item-title", opLabel(job.operation)));
      var sub = relativeTime(job.createdAt);
      if (status === "active") sub += " · " + (Number(job.progress) || 0) + "% " + (job.stage || "");
      else if (status === "waiting" && whereText(job)) sub += " · " + whereText(job);
      else if (status === "failed" && job.error) sub += " · " + job.error;
      main.appendChild(el("span", "job-item-sub", sub));
      button.appendChild(main);

      button.appendChild(el("span", "pill " + status, STATUS_TEXT[status]));
      button.setAttribute("aria-label", opLabel(job.operation) + ", " + STATUS_TEXT[status] + ", " + relativeTime(job.createdAt));
      button.addEventListener("click", function () { openJob(job); });
      li.appendChild(button);
      ui.jobs.appendChild(li);
    });
    markCurrentInList();
    if (running) state.jobsTimer = setTimeout(function () { loadJobs(false); }, 5000);
  }

  function markCurrentInList() {
    var current = state.job ? state.job.jobId : null;
    Array.prototype.forEach.call(ui.jobs.querySelectorAll(".job-item"), function (b) {
      if (b.dataset.jobId === current) b.setAttribute("aria-current", "true");
      else b.removeAttribute("aria-current");
    });
  }

  function openJob(job) {
    stopFollowing();
    showJob(job);
    if (!TERMINAL[job.status]) follow(job.jobId);
    else {
      // Refresh once so the signed image URL is fresh.
      var ctrl = new AbortController();
      state.follow = { id: job.jobId, ctrl: ctrl };
      api("GET", "status/" + encodeURIComponent(job.jobId), undefined, ctrl.signal).then(onStatus, function () {});
    }
    if (window.matchMedia && window.matchMedia("(max-width: 860px)").matches) {
      ui.jobCard.scrollIntoView({ behavior: "smooth", block: "start" });
    }
  }

  // ---------------------------------------------------------------- wiring

  function wire() {
    var saved = savedKey();
    if (saved) ui.key.value = saved;
    setKeyState(null, keyPlace());
    ui.key.addEventListener("input", onKeyChanged);
    ui.remember.addEventListener("change", function () { keepKey(); setKeyState(null, keyPlace()); });
    ui.keyToggle.addEventListener("click", function () {
      var show = ui.key.type === "password";
      ui.key.type = show ? "text" : "password";
      ui.keyToggle.textContent = show ? "Hide" : "Show";
      ui.keyToggle.setAttribute("aria-pressed", show ? "true" : "false");
    });

    Array.prototype.forEach.call(ui.form.querySelectorAll("input[name=operation]"), function (r) {
      r.addEventListener("change", syncOperation);
    });
    ui.lineWeight.addEventListener("input", syncRanges);
    ui.colors.addEventListener("input", syncRanges);
    ui.file.addEventListener("change", function () { setFile(ui.file.files && ui.file.files[0]); });
    ui.clearImage.addEventListener("click", function () { setFile(null); ui.file.focus(); });

    ["dragenter", "dragover"].forEach(function (type) {
      ui.dropzone.addEventListener(type, function (e) {
        e.preventDefault();
        if (e.dataTransfer) e.dataTransfer.dropEffect = "copy";
        ui.dropzone.classList.add("dragover");
      });
    });
    ["dragleave", "dragend"].forEach(function (type) {
      ui.dropzone.addEventListener(type, function (e) {
        if (e.target === ui.dropzone || !ui.dropzone.contains(e.relatedTarget)) ui.dropzone.classList.remove("dragover");
      });
    });
    ui.dropzone.addEventListener("drop", function (e) {
      e.preventDefault();
      ui.dropzone.classList.remove("dragover");
      var files = e.dataTransfer && e.dataTransfer.files;
      if (files && files.length) setFile(files[0]);
    });
    // A file dropped outside the drop zone must not navigate away from the page.
    window.addEventListener("dragover", function (e) { e.preventDefault(); });
    window.addEventListener("drop", function (e) { e.preventDefault(); });

    ui.form.addEventListener("submit", onSubmit);
    ui.cancel.addEventListener("click", onCancel);
    ui.erase.addEventListener("click", function () { showEraseConfirm(ui.eraseConfirm.hidden); });
    ui.eraseNo.addEventListener("click", function () { showEraseConfirm(false); ui.erase.focus(); });
    ui.eraseYes.addEventListener("click", onErase);
    ui.refreshJobs.addEventListener("click", function () { loadJobs(true); loadCredits(); });
    ui.resultImg.addEventListener("error", function () {
      if (state.job && state.job.status === "completed") {
        ui.jobError.textContent = "The result image could not be loaded; its link may have expired. Pick the job again to refresh it.";
        ui.jobError.hidden = false;
      }
    });

    syncOperation();
    syncRanges();
    if (apiKey()) { loadJobs(true); loadCredits(); }
  }

  wire();
})();
