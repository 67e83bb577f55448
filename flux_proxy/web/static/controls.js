// Model, size, steps, seed and count: the knobs, which adapt to what the chosen model takes.

import { aspectRatio, clamp, randomSeed } from "./util.js";

export const SIZE_PRESETS = [
  [512, 512],
  [1024, 1024],
  [1024, 768],
  [768, 1024],
  [1280, 720],
  [1536, 1024],
  [1920, 1080],
];
const DEFAULT_SIZE_RANGE = { min: 256, max: 1920 };
export const SEED_MAX = Number.MAX_SAFE_INTEGER; // the proxy takes up to 2^63-1; JS numbers stop here
const PREFS_STORAGE = "flux-proxy.settings";

function range(value) {
  if (Array.isArray(value)) value = { min: value[0], max: value[1] };
  if (!value || typeof value !== "object") return null;
  const min = value.minimum ?? value.min;
  const max = value.maximum ?? value.max;
  return Number.isFinite(min) && Number.isFinite(max) ? { min, max } : null;
}

/** /v1/models entries in one shape, tolerant of missing fields (a proxy older than the page). */
export function normaliseModel(raw) {
  const stepsRange = range(raw.steps_range);
  const maxReferences = Number.isFinite(raw.max_references)
    ? raw.max_references
    : raw.takes_references === false
      ? 0
      : 4;
  return {
    id: raw.id,
    name: raw.short_name || String(raw.id).split("/").pop(),
    description: raw.description || "",
    maxReferences,
    fixedSteps: Number.isFinite(raw.fixed_steps) ? raw.fixed_steps : null,
    stepsRange,
    defaultSteps: raw.default_steps ?? (stepsRange ? Math.min(stepsRange.max, 25) : null),
    // `size_range: null` means a fixed output size; an absent field means the usual range.
    sizeRange: raw.size_range === null ? null : range(raw.size_range) || DEFAULT_SIZE_RANGE,
    defaultWidth: raw.default_width || 1024,
    defaultHeight: raw.default_height || 1024,
    typicalSeconds: Number(raw.typical_seconds) > 0 ? Number(raw.typical_seconds) : 20,
    takesSeed: raw.takes_seed !== false,
    isDefault: raw.default === true,
  };
}

export class Controls {
  constructor(root, { onChange }) {
    this.el = {
      model: root.querySelector("#model"),
      modelDescription: root.querySelector("#model-description"),
      presets: root.querySelector("#size-presets"),
      width: root.querySelector("#width"),
      height: root.querySelector("#height"),
      aspect: root.querySelector("#aspect"),
      sizeError: root.querySelector("#size-error"),
      sizeNote: root.querySelector("#size-note"),
      sizeFields: root.querySelector("#size-fields"),
      steps: root.querySelector("#steps"),
      stepsValue: root.querySelector("#steps-value"),
      stepsNote: root.querySelector("#steps-note"),
      seed: root.querySelector("#seed"),
      seedRandom: root.querySelector("#seed-random"),
      seedLock: root.querySelector("#seed-lock"),
      seedError: root.querySelector("#seed-error"),
      seedNote: root.querySelector("#seed-note"),
      countInputs: [...root.querySelectorAll('input[name="n"]')],
    };
    this.onChange = onChange;
    this.models = [];
    this.seedLocked = false;
    this.buildPresets();
    this.bindEvents();
  }

  buildPresets() {
    for (const [width, height] of SIZE_PRESETS) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "chip";
      button.dataset.width = width;
      button.dataset.height = height;
      button.setAttribute("aria-pressed", "false");
      const label = document.createElement("span");
      label.textContent = `${width}×${height}`;
      const ratio = document.createElement("small");
      ratio.textContent = aspectRatio(width, height);
      button.append(label, ratio);
      button.addEventListener("click", () => this.setSize(width, height));
      this.el.presets.appendChild(button);
    }
  }

  bindEvents() {
    const { el } = this;
    el.model.addEventListener("change", () => {
      this.applyModel(true);
      this.changed();
    });
    for (const input of [el.width, el.height]) {
      input.addEventListener("input", () => this.changed());
      input.addEventListener("change", () => this.clampSize());
    }
    el.steps.addEventListener("input", () => this.changed());
    el.seed.addEventListener("input", () => this.changed());
    el.seedRandom.addEventListener("click", () => {
      el.seed.value = String(randomSeed());
      this.changed();
    });
    el.seedLock.addEventListener("click", () => this.setSeedLocked(!this.seedLocked));
    for (const input of el.countInputs) input.addEventListener("change", () => this.changed());
  }

  setModels(rawModels, preferredId) {
    this.models = rawModels.map(normaliseModel);
    const select = this.el.model;
    select.replaceChildren(
      ...this.models.map((model) => {
        const option = document.createElement("option");
        option.value = model.id;
        option.textContent = model.name;
        return option;
      }),
    );
    const saved = this.loadPrefs();
    const serverDefault = this.models.find((m) => m.isDefault)?.id;
    const choice = [saved.model, serverDefault, preferredId].find((id) => this.models.some((m) => m.id === id));
    if (choice) select.value = choice;
    this.applyModel(true);
    if (saved.model === select.value) this.apply(saved, { keepModel: true });
    this.setSeedLocked(Boolean(saved.seedLocked));
    if (!saved.seedLocked) this.el.seed.value = "";
    this.changed();
  }

  get model() {
    return this.models.find((m) => m.id === this.el.model.value) || null;
  }

  /** Make the knobs match the model; `reset` puts its defaults back (on a model change). */
  applyModel(reset) {
    const model = this.model;
    const { el } = this;
    if (!model) return;
    el.modelDescription.textContent = model.description;

    const sizeRange = model.sizeRange;
    el.sizeFields.classList.toggle("is-disabled", !sizeRange);
    for (const control of [el.width, el.height, ...el.presets.querySelectorAll("button")]) {
      control.disabled = !sizeRange;
    }
    if (sizeRange) {
      for (const input of [el.width, el.height]) {
        input.min = sizeRange.min;
        input.max = sizeRange.max;
      }
      if (!el.width.value || !el.height.value) this.setSize(model.defaultWidth, model.defaultHeight, false);
      else if (reset) this.clampSize(false);
      for (const button of el.presets.querySelectorAll("button")) {
        const fits = Number(button.dataset.width) <= sizeRange.max && Number(button.dataset.height) <= sizeRange.max;
        button.disabled = !fits;
      }
      el.sizeNote.textContent = `Custom: ${sizeRange.min}–${sizeRange.max} px per side.`;
    } else {
      this.setSize(model.defaultWidth, model.defaultHeight, false);
      el.sizeNote.textContent = `${model.name} always makes ${model.defaultWidth}×${model.defaultHeight} images.`;
    }

    if (model.fixedSteps !== null) {
      el.steps.min = 1;
      el.steps.max = Math.max(model.fixedSteps, 1);
      el.steps.value = model.fixedSteps;
      el.steps.disabled = true;
      el.stepsNote.textContent = `Fixed at ${model.fixedSteps} for ${model.name}.`;
    } else if (model.stepsRange) {
      el.steps.disabled = false;
      el.steps.min = model.stepsRange.min;
      el.steps.max = model.stepsRange.max;
      if (reset || !el.steps.value) el.steps.value = model.defaultSteps ?? model.stepsRange.min;
      el.stepsNote.textContent = `${model.stepsRange.min}–${model.stepsRange.max}; more steps, more detail, more neurons.`;
    } else {
      el.steps.disabled = true;
      el.stepsNote.textContent = `${model.name} takes no step count.`;
    }

    el.seed.disabled = !model.takesSeed;
    el.seedRandom.disabled = !model.takesSeed;
    el.seedLock.disabled = !model.takesSeed;
    el.seedNote.textContent = model.takesSeed
      ? "Empty: a new random seed each time."
      : `${model.name} takes no seed.`;
  }

  setSize(width, height, notify = true) {
    this.el.width.value = width;
    this.el.height.value = height;
    if (notify) this.changed();
    else this.renderSize();
  }

  clampSize(notify = true) {
    const range = this.model?.sizeRange || DEFAULT_SIZE_RANGE;
    for (const input of [this.el.width, this.el.height]) {
      const value = Math.round(Number(input.value));
      if (input.value.trim() === "" || !Number.isFinite(value)) continue;
      input.value = clamp(value, range.min, range.max);
    }
    if (notify) this.changed();
  }

  sizeProblem() {
    const range = this.model?.sizeRange;
    if (!range) return null;
    for (const [name, input] of [["Width", this.el.width], ["Height", this.el.height]]) {
      const value = Number(input.value);
      if (input.value.trim() === "" || !Number.isInteger(value) || value < range.min || value > range.max) {
        return `${name} must be a whole number from ${range.min} to ${range.max}.`;
      }
    }
    return null;
  }

  seedProblem() {
    const text = this.el.seed.value.trim();
    if (!text || this.el.seed.disabled) return null;
    if (!/^\d+$/.test(text) || Number(text) > SEED_MAX) return `The seed must be a whole number from 0 to ${SEED_MAX}.`;
    return null;
  }

  renderSize() {
    const { el } = this;
    const width = Number(el.width.value);
    const height = Number(el.height.value);
    const problem = this.sizeProblem();
    el.sizeError.textContent = problem || "";
    el.sizeError.hidden = !problem;
    el.width.setAttribute("aria-invalid", String(Boolean(problem && /^Width/.test(problem))));
    el.height.setAttribute("aria-invalid", String(Boolean(problem && /^Height/.test(problem))));
    const megapixels = (width * height) / 1e6;
    el.aspect.textContent = problem ? "—" : `${aspectRatio(width, height)} · ${megapixels.toFixed(2)} MP`;
    for (const button of el.presets.querySelectorAll("button")) {
      const active = Number(button.dataset.width) === width && Number(button.dataset.height) === height;
      button.setAttribute("aria-pressed", String(active));
    }
  }

  setSeedLocked(locked) {
    this.seedLocked = locked;
    const button = this.el.seedLock;
    button.setAttribute("aria-pressed", String(locked));
    button.title = locked ? "Seed locked: kept for the next generation" : "Lock the seed for the next generations";
    button.querySelector(".lock-label").textContent = locked ? "Locked" : "Lock";
    this.changed();
  }

  /** After a generation: a locked seed stays (or becomes the one used); an unlocked one clears. */
  afterGeneration(usedSeed) {
    if (this.seedLocked) {
      if (!this.el.seed.value.trim() && Number.isInteger(usedSeed)) this.el.seed.value = String(usedSeed);
    } else {
      this.el.seed.value = "";
    }
    this.changed();
  }

  changed() {
    const { el } = this;
    this.renderSize();
    el.stepsValue.textContent = el.steps.disabled && !this.model?.fixedSteps ? "—" : el.steps.value;
    const seedProblem = this.seedProblem();
    el.seedError.textContent = seedProblem || "";
    el.seedError.hidden = !seedProblem;
    el.seed.setAttribute("aria-invalid", String(Boolean(seedProblem)));
    this.savePrefs();
    this.onChange?.();
  }

  problem() {
    if (!this.model) return "Models are not loaded yet.";
    return this.sizeProblem() || this.seedProblem();
  }

  /** The knobs as request fields; fields the model does not take are null. */
  values() {
    const model = this.model;
    const { el } = this;
    const seedText = el.seed.value.trim();
    return {
      model: model?.id ?? null,
      width: model?.sizeRange ? Number(el.width.value) : null,
      height: model?.sizeRange ? Number(el.height.value) : null,
      steps: model?.stepsRange && model.fixedSteps === null ? Number(el.steps.value) : null,
      seed: model?.takesSeed && seedText ? Number(seedText) : null,
      n: Number(el.countInputs.find((input) => input.checked)?.value || 1),
    };
  }

  /** Put saved settings back (from history, "reuse these settings", or the last visit). */
  apply(settings, { keepModel = false } = {}) {
    const { el } = this;
    if (!keepModel && settings.model && this.models.some((m) => m.id === settings.model)) {
      el.model.value = settings.model;
      this.applyModel(true);
    }
    const model = this.model;
    if (model?.sizeRange && settings.width && settings.height) this.setSize(settings.width, settings.height, false);
    if (model?.stepsRange && model.fixedSteps === null && Number.isFinite(settings.steps)) {
      el.steps.value = clamp(settings.steps, model.stepsRange.min, model.stepsRange.max);
    }
    if (Number.isInteger(settings.seed)) el.seed.value = String(settings.seed);
    if (Number.isInteger(settings.n)) {
      for (const input of el.countInputs) input.checked = Number(input.value) === clamp(settings.n, 1, 4);
    }
    this.changed();
  }

  loadPrefs() {
    try {
      return JSON.parse(localStorage.getItem(PREFS_STORAGE) || "{}") || {};
    } catch {
      return {};
    }
  }

  savePrefs() {
    if (!this.models.length) return;
    const values = this.values();
    const prefs = {
      model: values.model,
      width: Number(this.el.width.value) || null,
      height: Number(this.el.height.value) || null,
      steps: values.steps,
      n: values.n,
      seedLocked: this.seedLocked,
      seed: this.seedLocked ? values.seed : null,
    };
    try {
      localStorage.setItem(PREFS_STORAGE, JSON.stringify(prefs));
    } catch {
      // Private mode or a full quota: preferences are a convenience, not a requirement.
    }
  }
}
