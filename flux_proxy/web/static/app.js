// flux-proxy's page: wires the prompt, the knobs, the references, the stage and the history to
// the public API. Each part lives in its own module; this one holds the generate flow.

import { ApiFailure, apiKey, describeFailure, generateImages, getHealth, listModels } from "./api.js";
import { Controls } from "./controls.js";
import { HistoryStore, HistoryView } from "./history.js";
import { KeyDialog } from "./key-dialog.js";
import { PromptEditor } from "./prompt.js";
import { ReferenceTray } from "./references.js";
import { ResultView } from "./results.js";
import { StatusBar } from "./status.js";
import { base64ToBlob, extensionFor, formatSeconds, scaleImage, toast } from "./util.js";
import { BatchesView } from "./batches.js";
import { UsageView } from "./usage.js";
import { ViewSwitch } from "./views.js";

const $ = (selector) => document.querySelector(selector);
const HEALTH_EVERY_MS = 15000;

const state = {
  busy: false,
  abort: null,
  modelsLoaded: false,
  modelsProblem: "Loading models…",
  defaultModel: null,
  timer: null,
};

const statusBar = new StatusBar({
  container: $("#status"),
  badge: $("#emulator-badge"),
  details: $("#accounts-details"),
});

const controls = new Controls(document, { onChange: () => syncControls() });

const prompt = new PromptEditor({
  textarea: $("#prompt"),
  modeInputs: [...document.querySelectorAll('input[name="prompt-mode"]')],
  jsonTools: $("#json-tools"),
  templateButton: $("#json-template"),
  formatButton: $("#json-format"),
  errorLine: $("#prompt-error"),
  counter: $("#prompt-count"),
  onChange: () => updateGenerateButton(),
});

const references = new ReferenceTray($("#references"), { onChange: () => updateGenerateButton() });

const results = new ResultView($(".stage"), {
  onUseReference: (image) => useAsReference(image),
  onReuse: (record) => reuseSettings(record),
});

const batches = new BatchesView($("#view-batches"));
const usage = new UsageView($("#view-usage"));
const views = new ViewSwitch({ batches, usage });

const historyStore = new HistoryStore();
const history = new HistoryView($("#history"), historyStore, {
  onOpen: (record) => {
    results.show(record);
    clearMessage();
    revealStage();
  },
  onReuse: (record) => reuseSettings(record),
  onChange: (what, id) => {
    if ((what === "cleared" || (what === "deleted" && results.record?.id === id)) && results.record) results.clear();
  },
});

// --- status -------------------------------------------------------------------------------

async function refreshHealth() {
  try {
    const health = await getHealth();
    statusBar.show(health);
    if (!state.defaultModel && health.model) state.defaultModel = health.model;
  } catch {
    statusBar.showError("Proxy unreachable");
  }
}

// --- models and the key ---------------------------------------------------------------------

async function loadModels() {
  state.modelsProblem = "Loading models…";
  updateGenerateButton();
  try {
    const models = await listModels();
    if (!models.length) throw new ApiFailure("The proxy lists no models.");
    controls.setModels(models, state.defaultModel);
    batches.setModels(models, state.defaultModel);
    usage.setModels(models);
    state.modelsLoaded = true;
    state.modelsProblem = null;
    keyDialog.setState(apiKey.get() ? "ok" : "none-needed");
    syncControls();
    if (views.name !== "generate") views.views[views.name]?.show?.(); // now with the key
  } catch (error) {
    state.modelsLoaded = false;
    if (error instanceof ApiFailure && error.isAuth) {
      state.modelsProblem = "Enter the API key to start.";
      keyDialog.setState(apiKey.get() ? "refused" : "missing");
      keyDialog.open(apiKey.get() ? describeFailure(error) : null);
    } else {
      state.modelsProblem = "Models could not be loaded.";
      showMessage(describeFailure(error), "error", { label: "Retry", run: loadModels });
    }
  }
  updateGenerateButton();
}

// What one key read (its batches, its usage) is not shown to the next.
function forgetKeysViews() {
  batches.reset();
  usage.reset();
}

const keyDialog = new KeyDialog({
  onSaved: () => {
    clearMessage();
    forgetKeysViews();
    loadModels();
  },
  onForgotten: forgetKeysViews,
});

// --- the form -------------------------------------------------------------------------------

function syncControls() {
  references.setModel(controls.model);
  updateGenerateButton();
}

function whyNotReady() {
  if (state.modelsProblem) return state.modelsProblem;
  if (prompt.error) return "Fix the JSON prompt first.";
  if (prompt.value() === null) return prompt.mode === "json" ? "Write a JSON prompt first." : "Write a prompt first.";
  return controls.problem();
}

function updateGenerateButton() {
  const reason = whyNotReady();
  const button = $("#generate");
  button.disabled = state.busy || Boolean(reason);
  $("#generate-why").textContent = state.busy ? "" : reason || "";
}

$("#generate-form").addEventListener("submit", (event) => {
  event.preventDefault();
  generate();
});

document.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && !keyDialog.isOpen && views.name === "generate") {
    event.preventDefault();
    generate();
  }
});

$("#cancel").addEventListener("click", () => state.abort?.abort());

// The shortcut hint says the right modifier for this keyboard.
if (!/Mac|iPhone|iPad/.test(navigator.platform || navigator.userAgent)) {
  $(".shortcut").textContent = "Ctrl ↵";
  $("#prompt-hint").replaceChildren(kbd("Ctrl"), " + ", kbd("Enter"), " to generate");
} else {
  $("#prompt-hint").replaceChildren(kbd("⌘"), " + ", kbd("Enter"), " to generate");
}

function kbd(text) {
  const node = document.createElement("kbd");
  node.textContent = text;
  return node;
}

// --- generating -----------------------------------------------------------------------------

async function buildPayload() {
  const values = controls.values();
  const payload = {
    prompt: prompt.value(),
    model: values.model,
    n: values.n,
    response_format: "b64_json",
  };
  for (const name of ["width", "height", "steps", "seed"]) {
    if (values[name] !== null) payload[name] = values[name];
  }
  const images = await references.dataUrls();
  if (images.length) payload.images = images;
  return payload;
}

async function generate() {
  if (state.busy || whyNotReady()) {
    updateGenerateButton();
    return;
  }
  const model = controls.model;
  const values = controls.values();
  const controller = new AbortController();
  state.abort = controller;
  setBusy(true);
  clearMessage();
  const started = performance.now();
  startProgress(model, values, started);
  try {
    const payload = await buildPayload();
    const response = await generateImages(payload, controller.signal);
    const seconds = (performance.now() - started) / 1000;
    const record = await recordFrom(response, payload, model, seconds);
    results.show(record);
    if (Array.isArray(response.errors) && response.errors.length) {
      const first = response.errors[0]?.error?.message || "unknown error";
      showMessage(`${response.errors.length} of ${payload.n} images could not be made: ${first}`, "info");
    }
    revealStage();
    controls.afterGeneration(record.images[0]?.seed);
    try {
      await historyStore.add(record);
      await history.refresh();
    } catch {
      toast("Could not save to history (storage full or blocked)", "error");
    }
  } catch (error) {
    if (error?.name === "AbortError") {
      showMessage("Cancelled. The proxy may still finish the image it had started.", "info");
    } else if (error instanceof ApiFailure && error.isAuth) {
      keyDialog.setState("refused");
      showMessage(describeFailure(error), "error", { label: "Enter key", run: () => keyDialog.open(describeFailure(error)) });
      keyDialog.open(describeFailure(error));
    } else {
      showMessage(describeFailure(error), "error");
    }
  } finally {
    stopProgress();
    state.abort = null;
    setBusy(false);
    refreshHealth();
  }
}

async function recordFrom(response, payload, model, seconds) {
  const data = Array.isArray(response.data) ? response.data : [];
  if (!data.length || !data.every((item) => typeof item.b64_json === "string")) {
    throw new ApiFailure("The proxy answered without an image.");
  }
  const seeds = Array.isArray(response.seeds) ? response.seeds : [];
  const accounts = Array.isArray(response.accounts_used) ? response.accounts_used : [];
  const images = await Promise.all(
    data.map(async (item, index) => {
      const blob = base64ToBlob(item.b64_json);
      let thumb = null;
      try {
        thumb = (await scaleImage(blob, 320, "image/webp", 0.8)).blob;
      } catch {
        thumb = null; // the full image still shows; only the small copy is missing
      }
      const seed = seeds[index] ?? item.seed ?? (data.length === 1 ? payload.seed : undefined);
      return {
        blob,
        thumb,
        seed: Number.isInteger(seed) ? seed : null,
        account: accounts[index] ?? item.account_used ?? response.account_used ?? null,
        revisedPrompt: item.revised_prompt ?? null,
      };
    }),
  );
  return {
    id: response.id || crypto.randomUUID(),
    created: Date.now(),
    prompt: payload.prompt,
    model: payload.model,
    modelName: model.name,
    width: payload.width ?? null,
    height: payload.height ?? null,
    steps: payload.steps ?? model.fixedSteps ?? null,
    seed: payload.seed ?? null,
    n: payload.n,
    referenceCount: payload.images?.length || 0,
    images,
    neurons: response.usage?.neurons ?? null,
    seconds,
  };
}

function setBusy(busy) {
  state.busy = busy;
  $("#generate").hidden = busy;
  $("#cancel").hidden = !busy;
  $("#generate-form").setAttribute("aria-busy", String(busy));
  if (views.name === "generate") document.title = busy ? "Generating… · flux-proxy" : "flux-proxy";
  if (busy) $("#cancel").focus();
  else if (document.activeElement === $("#cancel") || document.activeElement === document.body) $("#generate").focus();
  updateGenerateButton();
}

/** The model's typical time is for 1024x1024 at its default steps; the n images run at once. */
function expectedSeconds(model, values) {
  let seconds = model.typicalSeconds;
  if (values.width && values.height) seconds *= Math.max(0.25, (values.width * values.height) / (1024 * 1024));
  if (values.steps && model.defaultSteps) seconds *= values.steps / model.defaultSteps;
  return Math.max(1, seconds);
}

function startProgress(model, values, started) {
  const count = values.n;
  const expected = expectedSeconds(model, values);
  const fill = $("#progress-fill");
  const track = $(".progress-track");
  $("#progress-text").textContent = `Generating ${count > 1 ? `${count} images` : "an image"} with ${model.name}…`;
  $("#progress").hidden = false;
  $(".stage").classList.add("is-busy");
  const tick = () => {
    const elapsed = (performance.now() - started) / 1000;
    // Linear up to the typical time, then creeping towards (never reaching) the end.
    const ratio = elapsed <= expected ? 0.9 * (elapsed / expected) : 0.9 + 0.09 * (1 - Math.exp(-(elapsed - expected) / expected));
    fill.style.transform = `scaleX(${ratio.toFixed(4)})`;
    track.setAttribute("aria-valuenow", String(Math.round(ratio * 100)));
    $("#progress-time").textContent = `${formatSeconds(elapsed)} · usually ~${formatSeconds(expected)}`;
    $("#progress").classList.toggle("is-slow", elapsed > expected * 1.5);
  };
  tick();
  state.timer = setInterval(tick, 100);
}

function stopProgress() {
  clearInterval(state.timer);
  state.timer = null;
  $("#progress").hidden = true;
  $(".stage").classList.remove("is-busy");
}

// --- messages -------------------------------------------------------------------------------

function showMessage(text, kind = "error", action = null) {
  const box = $("#message");
  box.dataset.kind = kind;
  $("#message-text").textContent = text;
  const button = $("#message-action");
  button.hidden = !action;
  button.onclick = action ? action.run : null;
  if (action) button.textContent = action.label;
  box.hidden = false;
}

function clearMessage() {
  $("#message").hidden = true;
  $("#message-text").textContent = "";
}

function revealStage() {
  if (window.matchMedia("(max-width: 900px)").matches) {
    $(".stage").scrollIntoView({ behavior: "smooth", block: "start" });
  }
}

// --- result actions -------------------------------------------------------------------------

async function useAsReference(image) {
  const model = controls.model;
  if (model && model.maxReferences === 0) {
    showMessage(`${model.name} takes no reference images; pick a FLUX.2 model to use one.`, "info");
    return;
  }
  const before = references.items.length;
  const name = `generated-${image.seed ?? "image"}.${extensionFor(image.blob.type)}`;
  await references.add([new File([image.blob], name, { type: image.blob.type })]);
  if (references.items.length > before) {
    toast(`Added as image ${references.items.length - 1}`);
    $("#references").scrollIntoView({ behavior: "smooth", block: "nearest" });
  }
}

function reuseSettings(record) {
  prompt.setPrompt(record.prompt);
  controls.apply({
    model: record.model,
    width: record.width,
    height: record.height,
    steps: record.steps,
    seed: record.seed ?? record.images?.[0]?.seed ?? null,
    n: record.n,
  });
  toast("Settings restored");
  $("#prompt").focus({ preventScroll: true });
  $("#generate-form").scrollIntoView({ behavior: "smooth", block: "start" });
}

// --- start ----------------------------------------------------------------------------------

async function start() {
  keyDialog.setState(apiKey.get() ? "ok" : "missing");
  views.apply();
  await refreshHealth();
  setInterval(() => document.visibilityState === "visible" && !state.busy && refreshHealth(), HEALTH_EVERY_MS);
  document.addEventListener("visibilitychange", () => document.visibilityState === "visible" && refreshHealth());
  history.refresh();
  loadModels();
}

start();
