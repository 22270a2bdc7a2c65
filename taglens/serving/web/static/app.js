// taglens page: choose or drop a photo, POST it to /predict, show the ranked hashtags.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, previewUrl: null, tagLine: "", maxBytes: null };

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function megabytes(bytes) {
  if (bytes < 1e6) return `${Math.max(1, Math.round(bytes / 1e3))} KB`;
  return `${Math.round((bytes / 1e6) * 10) / 10} MB`;
}

function percent(value) {
  return `${(value * 100).toFixed(value >= 0.1 ? 0 : 1)}%`;
}

async function loadHealth() {
  try {
    const response = await fetch("/health", { cache: "no-store" });
    const health = await response.json();
    $("model").textContent = `model: ${health.model.name} v${health.model.version}`;
    state.maxBytes = health.max_upload_bytes;
    $("limits").textContent = `JPEG, PNG, GIF, BMP, WebP or TIFF · up to ${megabytes(state.maxBytes)}`;
  } catch (err) {
    $("model").textContent = "model: server unreachable";
    showError("The server does not answer: is `python -m taglens.serving.web` running?");
  }
}

function setFile(file) {
  clearError();
  $("answer").hidden = true;
  $("placeholder").hidden = false;
  if (!file) return;
  if (state.maxBytes !== null && file.size > state.maxBytes) {
    showError(`${file.name} is ${megabytes(file.size)}, over the upload limit of ${megabytes(state.maxBytes)}: choose a smaller photo.`);
  }
  state.file = file;
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(file);
  const preview = $("preview");
  preview.src = state.previewUrl;
  preview.hidden = false;
  $("drop-hint").hidden = true;
  $("file-name").textContent = `${file.name} · ${megabytes(file.size)} · click or drop to change`;
  $("file-name").hidden = false;
  $("predict").disabled = false;
}

function row(label, value, fraction, className) {
  const item = document.createElement("li");
  const name = document.createElement("span");
  name.className = className;
  name.textContent = label;
  const bar = document.createElement("span");
  bar.className = "bar";
  const fill = document.createElement("span");
  fill.className = "fill";
  fill.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
  bar.appendChild(fill);
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = percent(value);
  item.append(name, bar, score);
  return item;
}

function render(result) {
  $("top-class").textContent = result.top_class;
  $("top-prob").textContent = `(${percent(result.top_probability)})`;
  $("model").textContent = `model: ${result.model.name} v${result.model.version}`;

  const tags = result.hashtags.map((h) => h.tag.replace(/^#/, ""));
  const best = Math.max(...result.hashtags.map((h) => h.score), 1e-12);
  const list = $("hashtags");
  list.replaceChildren(
    ...result.hashtags.map((h, i) => {
      const item = row(`#${tags[i]}`, h.score, h.score / best, "tag");
      item.dataset.tag = tags[i];
      const reason = h.why === "image" ? "; suggested for this photo" :
        h.why === "class" ? "; suggested for its class" : "";
      item.title = `${h.posts ?? "?"} training posts${reason}`;
      return item;
    }),
  );
  state.tagLine = tags.map((t) => `#${t}`).join(" ");
  $("tag-line").textContent = state.tagLine || "no hashtags for this photo";
  $("copy").disabled = tags.length === 0;
  $("copy-status").textContent = "";

  const classes = Object.entries(result.probabilities).sort((a, b) => b[1] - a[1]);
  $("classes").replaceChildren(...classes.map(([name, p]) => row(name, p, p, "tag")));
  $("placeholder").hidden = true;
  $("answer").hidden = false;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    return JSON.stringify(body.detail ?? body);
  } catch (err) {
    return `the server answered HTTP ${response.status}`;
  }
}

async function predict(event) {
  event.preventDefault();
  if (!state.file) return;
  clearError();
  const button = $("predict");
  button.disabled = true;
  button.textContent = "Predicting…";
  $("results").setAttribute("aria-busy", "true");
  const form = new FormData();
  form.append("file", state.file, state.file.name);
  try {
    const response = await fetch("/predict", { method: "POST", body: form });
    if (!response.ok) {
      $("answer").hidden = true;
      $("placeholder").hidden = false;
      showError(`Could not predict: ${await errorMessage(response)}`);
    } else {
      render(await response.json());
    }
  } catch (err) {
    showError("The server does not answer: check that it is still running, then try again.");
  } finally {
    button.disabled = false;
    button.textContent = "Predict hashtags";
    $("results").removeAttribute("aria-busy");
  }
}

function copyWithTextarea(text) {
  // For browsers without the async clipboard (e.g. plain http on a LAN address).
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "visually-hidden";
  document.body.appendChild(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } finally {
    area.remove();
  }
  return ok;
}

async function copyTags() {
  const status = $("copy-status");
  let ok = false;
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(state.tagLine);
      ok = true;
    } catch (err) {
      ok = copyWithTextarea(state.tagLine);
    }
  } else {
    ok = copyWithTextarea(state.tagLine);
  }
  status.textContent = ok ? "Copied!" : "Copy failed: select the hashtags below and copy them.";
}

function setUpDrop() {
  const zone = $("drop");
  ["dragenter", "dragover"].forEach((type) =>
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    }),
  );
  ["dragleave", "drop"].forEach((type) =>
    zone.addEventListener(type, () => zone.classList.remove("dragging")),
  );
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) setFile(file);
  });
  // A photo dropped beside the zone must not make the browser leave the page to show it.
  ["dragover", "drop"].forEach((type) => window.addEventListener(type, (e) => e.preventDefault()));
}

function previewFailed() {
  // Not something the browser can show (e.g. not an image): keep the drop zone, say so.
  $("preview").hidden = true;
  $("drop-hint").hidden = false;
  $("file-name").textContent = `${state.file.name} · no preview: it may not be an image`;
}

document.addEventListener("DOMContentLoaded", () => {
  $("preview").addEventListener("error", previewFailed);
  $("file").addEventListener("change", (event) => setFile(event.target.files[0]));
  $("form").addEventListener("submit", predict);
  $("copy").addEventListener("click", copyTags);
  setUpDrop();
  loadHealth();
});
