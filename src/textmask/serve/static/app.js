// textmask web page: plain JavaScript, no build step, no external assets.
// Controls are built from GET /v1/info's option fields, so options the server adds (refine...) appear by themselves.
"use strict";

(() => {
  const $ = (selector) => document.querySelector(selector);
  const VIEWS = ["mask", "overlay", "cutout"];
  const DEBOUNCE_MS = 250;
  // How the page shows the options it knows; any other field gets a generic control under "More options".
  const PRESETS = {
    threshold: { label: "Threshold", main: true, toggle: "Binarize", min: 0, max: 1, step: 0.01, start: 0.5 },
    grow: { label: "Grow / shrink", main: true, min: -64, max: 64, step: 1, unit: "px" },
    blur: { label: "Blur", main: true, min: 0, max: 32, step: 0.5, unit: "px" },
    refine: { label: "Refine edges", main: true },
    matte: { label: "Matte (soft edges, clean cut-out colours)", main: true },
    background: { label: "Cut-out background colour", main: true, colour: true },
    feather: { label: "Feather", min: 0, max: 64, step: 0.5, unit: "px" },
    threshold_softness: { label: "Threshold softness", min: 0, max: 1, step: 0.01 },
    normalize: { label: "Normalize" },
    combine: { label: "Combine prompts" },
    invert: { label: "Invert" },
  };

  const state = {
    info: null,
    file: null,
    view: "mask",
    values: {},          // option name -> value (only what differs from the default is sent)
    fields: [],
    results: new Map(),  // request key -> {blob, url, timing}
    pending: new Map(),  // request key -> AbortController
    timer: null,
    shown: null,
  };

  // ------------------------------------------------------------------------------------------- helpers
  function apiKey() {
    return $("#api-key").value.trim();
  }
  function headers() {
    const key = apiKey();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }
  function humanBytes(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
    return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
  }
  function setStatus(text) {
    $("#status").textContent = text;
  }
  function showError(message) {
    const box = $("#error");
    box.textContent = message || "";
    box.hidden = !message;
  }
  function labelOf(field) {
    return (PRESETS[field.name] && PRESETS[field.name].label) || field.name.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
  }

  // ------------------------------------------------------------------------------------------- prompts
  function chipInput(inputId) {
    const input = document.getElementById(inputId);
    const box = input.parentElement;
    const chips = [];
    function render() {
      box.querySelectorAll(".chip").forEach((chip) => chip.remove());
      chips.forEach((text, index) => {
        const chip = document.createElement("span");
        chip.className = "chip";
        chip.textContent = text;
        const remove = document.createElement("button");
        remove.type = "button";
        remove.setAttribute("aria-label", `Remove ${text}`);
        remove.textContent = "×";
        remove.addEventListener("click", () => {
          chips.splice(index, 1);
          render();
          schedule();
        });
        chip.appendChild(remove);
        box.insertBefore(chip, input);
      });
    }
    function commit() {
      const text = input.value.trim();
      if (text && !chips.includes(text)) chips.push(text);
      input.value = "";
      render();
    }
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === ",") {
        event.preventDefault();
        commit();
        schedule();
      } else if (event.key === "Backspace" && !input.value && chips.length) {
        chips.pop();
        render();
        schedule();
      }
    });
    input.addEventListener("input", schedule);
    input.addEventListener("blur", () => {
      if (input.value.trim()) commit();
    });
    box.addEventListener("click", (event) => {
      if (event.target === box) input.focus();
    });
    // The prompts: the chips, and what is typed but not yet committed.
    return () => {
      const typed = input.value.trim();
      return typed && !chips.includes(typed) ? [...chips, typed] : [...chips];
    };
  }
  const prompts = chipInput("prompt-input");
  const negatives = chipInput("negative-input");

  // ------------------------------------------------------------------------------------------- options
  function buildControls(fields) {
    const main = $("#main-options");
    const more = $("#more-options");
    main.textContent = "";
    more.textContent = "";
    state.fields = fields;
    for (const field of fields) {
      const preset = PRESETS[field.name] || {};
      const control = makeControl(field, preset);
      (preset.main ? main : more).appendChild(control);
    }
    $("#more").hidden = !more.children.length;
  }

  function makeControl(field, preset) {
    const wrap = document.createElement("div");
    wrap.className = "option";
    wrap.dataset.option = field.name;
    if (field.description) wrap.title = field.description;
    const head = document.createElement("div");
    head.className = "option-head";
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = labelOf(field);
    head.appendChild(label);
    wrap.appendChild(head);
    const id = `opt-${field.name}`;

    if (field.type === "boolean") {
      head.textContent = "";
      const toggle = document.createElement("label");
      toggle.className = "switch";
      const box = document.createElement("input");
      box.type = "checkbox";
      box.id = id;
      box.checked = Boolean(field.default);
      box.addEventListener("change", () => setValue(field, box.checked));
      toggle.append(box, document.createTextNode(labelOf(field)));
      head.appendChild(toggle);
      return wrap;
    }
    if (field.choices) {
      const select = document.createElement("select");
      select.id = id;
      for (const choice of field.choices) {
        const option = document.createElement("option");
        option.value = option.textContent = String(choice);
        select.appendChild(option);
      }
      select.value = String(field.default);
      select.addEventListener("change", () => setValue(field, select.value));
      label.htmlFor = id;
      wrap.appendChild(select);
      return wrap;
    }
    if (field.type === "number" || field.type === "integer") {
      const low = preset.min ?? field.min ?? 0;
      const high = Math.min(preset.max ?? field.max ?? 100, field.max ?? Infinity);
      const step = preset.step ?? (field.type === "integer" ? 1 : 0.1);
      const value = document.createElement("span");
      value.className = "value";
      const slider = document.createElement("input");
      slider.type = "range";
      slider.id = id;
      slider.min = String(low);
      slider.max = String(high);
      slider.step = String(step);
      const start = field.default ?? preset.start ?? low;
      slider.value = String(start);
      const unit = preset.unit ? ` ${preset.unit}` : "";
      const show = () => {
        value.textContent = slider.disabled ? "off" : `${slider.value}${unit}`;
      };
      let enable = null;
      const right = document.createElement("span");
      right.className = "option-right";
      if (field.nullable) {
        const toggle = document.createElement("label");
        toggle.className = "switch small";
        enable = document.createElement("input");
        enable.type = "checkbox";
        enable.id = `${id}-on`;
        enable.checked = field.default !== null && field.default !== undefined;
        toggle.append(enable, document.createTextNode(preset.toggle || "On"));
        right.appendChild(toggle);
        slider.disabled = !enable.checked;
        enable.addEventListener("change", () => {
          slider.disabled = !enable.checked;
          show();
          setValue(field, enable.checked ? Number(slider.value) : null);
        });
      }
      slider.addEventListener("input", () => {
        show();
        setValue(field, Number(slider.value));
      });
      show();
      right.appendChild(value);
      head.appendChild(right);
      wrap.appendChild(slider);
      return wrap;
    }
    if (preset.colour) {  // a colour picker, off (alpha kept) until its box is ticked
      const enable = document.createElement("input");
      enable.type = "checkbox";
      enable.id = `${id}-on`;
      const picker = document.createElement("input");
      picker.type = "color";
      picker.id = id;
      picker.value = "#ffffff";
      picker.disabled = true;
      const update = () => {
        picker.disabled = !enable.checked;
        setValue(field, enable.checked ? picker.value : null);
      };
      enable.addEventListener("change", update);
      picker.addEventListener("input", update);
      const toggle = document.createElement("label");
      toggle.className = "switch";
      toggle.append(enable, document.createTextNode("On"));
      head.appendChild(toggle);
      wrap.appendChild(picker);
      return wrap;
    }
    const text = document.createElement("input");
    text.type = "text";
    text.id = id;
    text.value = field.default ?? "";
    text.addEventListener("input", () => setValue(field, text.value));
    wrap.appendChild(text);
    return wrap;
  }

  function setValue(field, value) {
    if (value === field.default || (value === null && field.default === null)) delete state.values[field.name];
    else state.values[field.name] = value;
    schedule();
  }

  // ------------------------------------------------------------------------------------------- requests
  function formFor(kind) {
    const form = new FormData();
    form.append("image", state.file, state.file.name);
    for (const text of prompts()) form.append("prompt", text);
    for (const text of negatives()) form.append("negative", text);
    for (const [name, value] of Object.entries(state.values)) form.append(name, String(value));
    if (kind !== "mask") form.append("output", kind);
    return form;
  }

  function keyFor(kind) {
    const id = state.file ? `${state.file.name}:${state.file.size}:${state.file.lastModified}` : "";
    return JSON.stringify([id, prompts(), negatives(), state.values, kind]);
  }

  function ready() {
    return state.file && prompts().length > 0;
  }

  async function fetchOutput(kind) {
    const key = keyFor(kind);
    if (state.results.has(key)) return state.results.get(key);
    if (state.pending.has(key)) return state.pending.get(key).promise;
    const controller = new AbortController();
    const started = performance.now();
    const promise = (async () => {
      const response = await fetch("/v1/mask", { method: "POST", body: formFor(kind), headers: headers(), signal: controller.signal });
      if (!response.ok) {
        let message = `${response.status} ${response.statusText}`;
        try {
          const body = await response.json();
          if (body.error) message = body.error.message;
        } catch (ignored) { /* not JSON */ }
        if (response.status === 401 || response.status === 403) $("#key-field").hidden = false;
        throw new Error(message);
      }
      const blob = await response.blob();
      const result = { blob, url: URL.createObjectURL(blob), seconds: (performance.now() - started) / 1000, kind, key };
      state.results.set(key, result);
      return result;
    })();
    state.pending.set(key, { controller, promise });
    try {
      return await promise;
    } finally {
      state.pending.delete(key);
    }
  }

  function cancelStale() {
    const wanted = new Set(VIEWS.map(keyFor));
    for (const [key, pending] of state.pending) if (!wanted.has(key)) pending.controller.abort();
    for (const [key, result] of state.results) {
      if (!wanted.has(key)) {
        URL.revokeObjectURL(result.url);
        state.results.delete(key);
      }
    }
  }

  function schedule() {
    updateCurl();
    clearTimeout(state.timer);
    state.timer = setTimeout(refresh, DEBOUNCE_MS);
  }

  async function refresh() {
    cancelStale();
    updateDownloads();
    if (!ready()) {
      if (state.file) setStatus("Type a prompt to see its mask");
      return;
    }
    const kind = state.view;
    const key = keyFor(kind);
    const stage = $("#stage");
    stage.classList.add("busy");
    $("#spinner").hidden = false;
    setStatus("Updating…");
    try {
      const result = await fetchOutput(kind);
      if (keyFor(state.view) !== key) return; // the settings moved on meanwhile
      show(result);
      showError("");
      prefetch();
    } catch (error) {
      if (error.name === "AbortError") return;
      showError(error.message);
      setStatus("");
    } finally {
      if (keyFor(state.view) === key || !state.pending.has(keyFor(state.view))) {
        stage.classList.remove("busy");
        $("#spinner").hidden = true;
      }
    }
  }

  function prefetch() {
    // The other views, so switching and downloading are instant (the server batches them together).
    for (const kind of VIEWS) {
      if (kind === state.view) continue;
      fetchOutput(kind).then(updateDownloads, () => {});
    }
  }

  function show(result) {
    const img = $("#preview-img");
    img.src = result.url;
    img.hidden = false;
    img.alt = `${result.kind} preview`;
    img.dataset.kind = result.kind;
    state.shown = result;
    $("#placeholder").hidden = true;
    $("#stage").classList.toggle("empty", result.kind !== "cutout");
    const size = state.imageSize ? `${state.imageSize[0]}×${state.imageSize[1]}` : "";
    setStatus(`${size}${size ? " · " : ""}${result.seconds.toFixed(2)} s`);
    updateDownloads();
  }

  function updateDownloads() {
    for (const kind of VIEWS) $(`#download-${kind}`).disabled = !ready();
  }

  async function download(kind) {
    try {
      const result = await fetchOutput(kind);
      const stem = state.file.name.replace(/\.[^.]+$/, "") || "image";
      const link = document.createElement("a");
      link.href = result.url;
      link.download = `${stem}.${kind}.png`;
      document.body.appendChild(link);
      link.click();
      link.remove();
    } catch (error) {
      if (error.name !== "AbortError") showError(error.message);
    }
  }

  function updateCurl() {
    const origin = window.location.origin;
    const parts = ["curl", `-F image=@${state.file ? state.file.name : "photo.jpg"}`];
    const quote = (text) => `'${String(text).replace(/'/g, "'\\''")}'`;
    const texts = prompts();
    for (const text of texts.length ? texts : ["a cat"]) parts.push(`-F prompt=${quote(text)}`);
    for (const text of negatives()) parts.push(`-F negative=${quote(text)}`);
    for (const [name, value] of Object.entries(state.values)) parts.push(`-F ${name}=${quote(value)}`);
    if (state.view !== "mask") parts.push(`-F output=${state.view}`);
    if (state.info && state.info.auth) parts.push(`-H 'Authorization: Bearer KEY'`);
    parts.push(`${origin}/v1/mask -o ${state.view}.png`);
    $("#curl").textContent = parts.join(" \\\n  ");
  }

  // ------------------------------------------------------------------------------------------- image
  function takeFile(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      showError(`${file.name} is not an image`);
      return;
    }
    state.file = file;
    state.imageSize = null;
    showError("");
    const url = URL.createObjectURL(file);
    const thumb = $("#thumb");
    thumb.onload = () => {
      state.imageSize = [thumb.naturalWidth, thumb.naturalHeight];
      $("#file-size").textContent = `${thumb.naturalWidth}×${thumb.naturalHeight} · ${humanBytes(file.size)}`;
    };
    thumb.src = url;
    $("#file-name").textContent = file.name;
    $("#file-size").textContent = humanBytes(file.size);
    $(".dz-empty").hidden = true;
    $(".dz-file").hidden = false;
    // Until the first mask arrives, show the image itself.
    const img = $("#preview-img");
    img.src = url;
    img.hidden = false;
    $("#placeholder").hidden = true;
    schedule();
  }

  function setUpDropzone() {
    const zone = $("#dropzone");
    const input = $("#file-input");
    zone.addEventListener("click", () => input.click());
    zone.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        input.click();
      }
    });
    input.addEventListener("change", () => takeFile(input.files[0]));
    for (const name of ["dragenter", "dragover"]) {
      zone.addEventListener(name, (event) => {
        event.preventDefault();
        zone.classList.add("over");
      });
    }
    for (const name of ["dragleave", "drop"]) zone.addEventListener(name, () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      takeFile(event.dataTransfer.files[0]);
    });
    // Dropping anywhere on the page works too.
    document.addEventListener("dragover", (event) => event.preventDefault());
    document.addEventListener("drop", (event) => {
      event.preventDefault();
      if (event.dataTransfer.files.length) takeFile(event.dataTransfer.files[0]);
    });
    document.addEventListener("paste", (event) => {
      const item = [...(event.clipboardData || {}).items || []].find((entry) => entry.type.startsWith("image/"));
      if (item) takeFile(item.getAsFile());
    });
  }

  function setUpViews() {
    document.querySelectorAll(".segmented button").forEach((button) => {
      button.addEventListener("click", () => {
        state.view = button.dataset.view;
        document.querySelectorAll(".segmented button").forEach((other) => other.setAttribute("aria-selected", String(other === button)));
        updateCurl();
        refresh();
      });
    });
    for (const kind of VIEWS) $(`#download-${kind}`).addEventListener("click", () => download(kind));
  }

  // ------------------------------------------------------------------------------------------- info
  async function loadInfo() {
    const badge = $("#model-badge");
    try {
      const response = await fetch("/v1/info", { headers: headers() });
      if (response.status === 401 || response.status === 403) {
        $("#key-field").hidden = false;
        badge.textContent = "API key needed";
        badge.className = "badge wait";
        return;
      }
      const info = await response.json();
      state.info = info;
      if (!state.fields.length) buildControls([...info.options, ...(info.cutout || [])]);
      const model = /^[./~]/.test(info.model) ? info.model.replace(/\/+$/, "").split("/").pop() : info.model;
      badge.textContent = `${model} · ${info.device} · ${info.dtype}`;
      badge.title = `Model ${info.model} on ${info.device} (${info.dtype}), textmask ${info.version}`;
      badge.className = `badge ${info.ready ? "ok" : "wait"}`;
      $("#random-note").hidden = !info.random_weights;
      updateCurl();
      if (!info.ready) setTimeout(loadInfo, 2000);
    } catch (error) {
      badge.textContent = "server unreachable";
      badge.className = "badge wait";
      setTimeout(loadInfo, 3000);
    }
  }

  $("#api-key").addEventListener("change", () => {
    state.results.clear();
    loadInfo();
    schedule();
  });
  setUpDropzone();
  setUpViews();
  updateCurl();
  loadInfo();
})();
