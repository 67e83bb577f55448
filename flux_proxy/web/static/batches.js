// The Batches view: many images, no hurry. Prompts (or a JSONL file) go to the Files and Batch
// APIs; the proxy spreads the lines over the accounts' budgets, over days if it must, and this
// view shows each batch's progress and hands back its output as JSONL or as a zip of images.

import {
  ApiFailure,
  cancelBatch,
  createBatch,
  describeFailure,
  estimateBatch,
  fetchImageBytes,
  fileText,
  listBatches,
  uploadBatchFile,
} from "./api.js";
import { GENERATIONS, imagesFromOutput, linesFromJsonl, linesFromPrompts, toJsonl } from "./batch-input.js";
import { normaliseModel, SIZE_PRESETS } from "./controls.js";
import { extensionFor, formatNeurons, formatWhen, h, icon, sniffImageType, toast } from "./util.js";
import { zipFiles } from "./zip.js";

const POLL_MS = 2000;
const ESTIMATE_DELAY_MS = 350;
const REFUSED = new Set([400, 403, 404, 413, 422]); // the lines' fault: the batch would fail
const ACTIVE = new Set(["validating", "in_progress", "finalizing", "cancelling"]);
const STATUS_LABELS = {
  validating: "validating",
  in_progress: "in progress",
  finalizing: "finalizing",
  completed: "completed",
  failed: "failed",
  expired: "expired",
  cancelling: "cancelling",
  cancelled: "cancelled",
};

/** Unix seconds (OpenAI's timestamps) or an ISO string -> milliseconds, or null. */
export function toMillis(value) {
  if (typeof value === "number" && Number.isFinite(value)) return value < 1e11 ? value * 1000 : value;
  if (typeof value === "string" && value) {
    const parsed = Date.parse(value);
    return Number.isFinite(parsed) ? parsed : null;
  }
  return null;
}

/** "≈ 37,500 neurons: at today's budgets about 4 days". */
export function describeEstimate(estimate) {
  const neurons = `≈ ${formatNeurons(estimate.estimated_neurons)} neurons`;
  const days = Number(estimate.estimated_days);
  if (!Number.isFinite(days)) return neurons;
  if (days <= 1) return `${neurons}: at today's budgets it fits in today`;
  const whole = Math.ceil(days);
  return `${neurons}: at today's budgets about ${whole} days`;
}

function downloadBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: name, hidden: true });
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30000);
}

// --- the form ---------------------------------------------------------------------------------

class BatchForm {
  constructor(root, { onSubmitted }) {
    const $ = (selector) => root.querySelector(selector);
    this.el = {
      form: root,
      prompts: $("#batch-prompts"),
      drop: $("#batch-drop"),
      fileInput: $("#batch-file"),
      fileChip: $("#batch-file-chip"),
      fileName: $("#batch-file-name"),
      fileClear: $("#batch-file-clear"),
      inputError: $("#batch-input-error"),
      lineCount: $("#batch-line-count"),
      knobs: $("#batch-knobs"),
      model: $("#batch-model"),
      size: $("#batch-size"),
      steps: $("#batch-steps"),
      stepsNote: $("#batch-steps-note"),
      window: $("#batch-window"),
      estimate: $("#batch-estimate"),
      submit: $("#batch-submit"),
      why: $("#batch-why"),
    };
    this.onSubmitted = onSubmitted;
    this.models = [];
    this.file = null; // {name, lines, endpoint}
    this.estimateTimer = null;
    this.estimateAbort = null;
    this.busy = false;
    this.bind();
  }

  bind() {
    const { el } = this;
    el.prompts.addEventListener("input", () => this.changed());
    for (const control of [el.model, el.size, el.steps, el.window]) control.addEventListener("change", () => this.changed());
    el.model.addEventListener("change", () => this.applyModel());
    el.steps.addEventListener("input", () => this.changed());
    el.drop.addEventListener("click", () => el.fileInput.click());
    el.fileInput.addEventListener("change", () => {
      if (el.fileInput.files?.length) this.readFile(el.fileInput.files[0]);
      el.fileInput.value = "";
    });
    el.drop.addEventListener("dragover", (event) => {
      event.preventDefault();
      el.drop.classList.add("is-dragging");
    });
    el.drop.addEventListener("dragleave", () => el.drop.classList.remove("is-dragging"));
    el.drop.addEventListener("drop", (event) => {
      event.preventDefault();
      el.drop.classList.remove("is-dragging");
      const file = event.dataTransfer?.files?.[0];
      if (file) this.readFile(file);
    });
    el.fileClear.addEventListener("click", () => {
      this.file = null;
      this.changed();
    });
    el.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
  }

  setModels(rawModels, preferredId) {
    this.models = rawModels.map(normaliseModel);
    const { model } = this.el;
    const previous = model.value;
    model.replaceChildren(...this.models.map((m) => h("option", { value: m.id, text: m.name })));
    const choice = [previous, preferredId, this.models.find((m) => m.isDefault)?.id].find((id) =>
      this.models.some((m) => m.id === id),
    );
    if (choice) model.value = choice;
    this.applyModel();
  }

  get model() {
    return this.models.find((m) => m.id === this.el.model.value) || null;
  }

  /** Sizes and steps the chosen model takes; a fixed-size or fixed-steps model shows that. */
  applyModel() {
    const model = this.model;
    const { el } = this;
    if (!model) return;
    const previous = el.size.value;
    if (model.sizeRange) {
      const fits = SIZE_PRESETS.filter(([w, hgt]) => Math.max(w, hgt) <= model.sizeRange.max && Math.min(w, hgt) >= model.sizeRange.min);
      el.size.replaceChildren(...fits.map(([w, hgt]) => h("option", { value: `${w}x${hgt}`, text: `${w}×${hgt}` })));
      el.size.disabled = false;
      const fallback = `${model.defaultWidth}x${model.defaultHeight}`;
      el.size.value = fits.some(([w, hgt]) => `${w}x${hgt}` === previous) ? previous : fallback;
      if (!el.size.value && el.size.options.length) el.size.selectedIndex = 0;
    } else {
      el.size.replaceChildren(h("option", { value: "", text: `${model.defaultWidth}×${model.defaultHeight} (fixed)` }));
      el.size.disabled = true;
    }
    if (model.stepsRange && model.fixedSteps === null) {
      el.steps.disabled = false;
      el.steps.min = model.stepsRange.min;
      el.steps.max = model.stepsRange.max;
      el.steps.value = String(model.defaultSteps ?? model.stepsRange.min);
      el.stepsNote.textContent = `${model.stepsRange.min}–${model.stepsRange.max}`;
    } else {
      el.steps.disabled = true;
      el.steps.value = model.fixedSteps ?? "";
      el.stepsNote.textContent = model.fixedSteps ? `fixed at ${model.fixedSteps}` : "not used";
    }
    this.changed();
  }

  async readFile(file) {
    const text = await file.text();
    const parsed = linesFromJsonl(text);
    if (parsed.problem) {
      this.showInputError(`${file.name}: ${parsed.problem}`);
      return;
    }
    this.file = { name: file.name, lines: parsed.lines, endpoint: parsed.endpoint };
    this.changed();
  }

  showInputError(text) {
    this.el.inputError.textContent = text || "";
    this.el.inputError.hidden = !text;
  }

  /** The request fields the knobs give each pasted prompt. */
  fields() {
    const model = this.model;
    const fields = { model: model?.id };
    if (model?.sizeRange && this.el.size.value) fields.size = this.el.size.value;
    if (!this.el.steps.disabled) {
      const steps = Number(this.el.steps.value);
      if (Number.isInteger(steps)) fields.steps = steps;
    }
    return fields;
  }

  /** {endpoint, lines, filename} for what is on the form now. */
  batch() {
    if (this.file) return { endpoint: this.file.endpoint, lines: this.file.lines, filename: this.file.name };
    const lines = linesFromPrompts(this.el.prompts.value, this.fields());
    return { endpoint: GENERATIONS, lines, filename: "prompts.jsonl" };
  }

  stepsProblem() {
    const { steps } = this.el;
    if (steps.disabled || this.file) return null;
    const value = Number(steps.value);
    const min = Number(steps.min);
    const max = Number(steps.max);
    return Number.isInteger(value) && value >= min && value <= max ? null : `Steps must be a whole number from ${min} to ${max}.`;
  }

  whyNot() {
    if (!this.models.length) return "Models are not loaded yet.";
    if (!this.batch().lines.length) return this.file ? "The file has no lines." : "Write one prompt per line, or drop a JSONL file.";
    return this.stepsProblem();
  }

  changed() {
    const { el } = this;
    const usingFile = Boolean(this.file);
    el.fileChip.hidden = !usingFile;
    el.prompts.disabled = usingFile;
    el.knobs.classList.toggle("is-disabled", usingFile);
    if (usingFile) {
      el.fileName.textContent = `${this.file.name} · ${this.file.lines.length} line${this.file.lines.length === 1 ? "" : "s"}`;
      this.showInputError(null);
    }
    const count = this.batch().lines.length;
    el.lineCount.textContent = count ? `${count} image${count === 1 ? "" : "s"}` : "";
    const reason = this.busy ? "" : this.whyNot();
    el.submit.disabled = this.busy || Boolean(reason);
    el.why.textContent = reason || "";
    this.scheduleEstimate(reason);
  }

  scheduleEstimate(reason) {
    clearTimeout(this.estimateTimer);
    this.estimateAbort?.abort();
    if (reason) {
      this.el.estimate.textContent = "";
      this.el.estimate.dataset.state = "idle";
      return;
    }
    this.el.estimate.dataset.state = "loading";
    this.estimateTimer = setTimeout(() => this.estimate(), ESTIMATE_DELAY_MS);
  }

  async estimate() {
    const { endpoint, lines } = this.batch();
    const controller = new AbortController();
    this.estimateAbort = controller;
    try {
      const estimate = await estimateBatch(endpoint, lines.map((line) => line.body), controller.signal);
      if (controller.signal.aborted) return;
      this.el.estimate.textContent = describeEstimate(estimate);
      const done = toMillis(estimate.estimated_completion_at);
      this.el.estimate.title = done ? `Estimated completion ${formatWhen(done)}` : "";
      this.el.estimate.dataset.state = "ok";
    } catch (error) {
      if (error?.name === "AbortError") return;
      // The estimate runs the batch's own checks: name the line, as the failed batch would.
      const index = /^bodies\[(\d+)\]/.exec(error?.param || "");
      const id = index ? lines[Number(index[1])]?.custom_id : null;
      // Pasted prompts are named by their line number; a file's lines by their custom_id.
      const where = id ? (this.file ? `the line with custom_id ${JSON.stringify(id)}` : `line ${Number(id)}`) : null;
      this.el.estimate.textContent = `No estimate${where ? ` (${where})` : ""}: ${describeFailure(error)}`;
      this.el.estimate.dataset.state = "error";
      if (error instanceof ApiFailure && REFUSED.has(error.status) && !this.busy) {
        // Submitted, these lines would only make a failed batch; say so before, not after.
        this.el.submit.disabled = true;
        this.el.why.textContent = `The batch would fail validation: fix ${where || "its lines"} first.`;
      }
    }
  }

  async submit() {
    if (this.busy || this.whyNot()) return;
    const { endpoint, lines, filename } = this.batch();
    this.busy = true;
    this.changed();
    this.el.submit.textContent = "Uploading…";
    try {
      const file = await uploadBatchFile(toJsonl(lines), filename);
      this.el.submit.textContent = "Submitting…";
      const first = this.file ? this.file.name : lines[0]?.body?.prompt;
      const batch = await createBatch({
        input_file_id: file.id,
        endpoint,
        completion_window: this.el.window.value,
        metadata: { source: "flux-proxy page", title: String(first || "").slice(0, 120) },
      });
      this.el.prompts.value = "";
      this.file = null;
      toast(`Batch of ${lines.length} submitted`);
      this.onSubmitted(batch);
    } catch (error) {
      this.showInputError(describeFailure(error));
    } finally {
      this.busy = false;
      this.el.submit.textContent = "Submit batch";
      this.changed();
    }
  }
}

// --- one batch ----------------------------------------------------------------------------------

class BatchCard {
  constructor(batch, { onChanged }) {
    this.onChanged = onChanged;
    this.node = h("li", { class: "batch-card", dataset: { batchId: batch.id } });
    this.update(batch);
  }

  update(batch) {
    this.batch = batch;
    const counts = batch.request_counts || {};
    const total = Number(counts.total) || 0;
    const completed = Number(counts.completed) || 0;
    const failed = Number(counts.failed) || 0;
    const done = completed + failed;
    const share = (part) => (total ? Math.min(100, (100 * part) / total) : 0);
    const title = batch.metadata?.title || batch.id;
    const created = toMillis(batch.created_at);
    this.node.dataset.status = batch.status;
    const parts = [
      h(
        "div",
        { class: "batch-head" },
        h("span", { class: "batch-title", text: title, title }),
        h("span", { class: `state batch-status state-${batch.status}`, text: STATUS_LABELS[batch.status] || batch.status }),
      ),
      h(
        "p",
        { class: "batch-sub hint" },
        h("span", { class: "mono", text: batch.id }),
        created ? ` · ${formatWhen(created)}` : "",
        batch.completion_window ? ` · window ${batch.completion_window}` : "",
      ),
      h(
        "div",
        {
          class: "batch-track",
          role: "progressbar",
          "aria-label": `Progress of ${title}`,
          "aria-valuemin": "0",
          "aria-valuemax": String(total),
          "aria-valuenow": String(done),
        },
        h("span", { class: "batch-fill batch-fill-done", style: `width: ${share(completed)}%` }),
        h("span", { class: "batch-fill batch-fill-failed", style: `width: ${share(failed)}%` }),
      ),
      h(
        "p",
        { class: "batch-counts" },
        h("span", { class: "batch-count-text", text: `${completed} of ${total} done${failed ? ` · ${failed} failed` : ""}` }),
        h("span", { class: "batch-when hint", text: this.whenText() }),
      ),
      this.neuronsLine(),
      this.errorsList(),
      h("div", { class: "batch-actions" }, this.actions()),
    ];
    this.node.replaceChildren(...parts.filter(Boolean));
  }

  whenText() {
    const batch = this.batch;
    const at = (field) => toMillis(batch[field]);
    if (batch.status === "completed" && at("completed_at")) return `completed ${formatWhen(at("completed_at"))}`;
    if (batch.status === "cancelled" && at("cancelled_at")) return `cancelled ${formatWhen(at("cancelled_at"))}`;
    if (batch.status === "expired" && at("expired_at")) return `expired ${formatWhen(at("expired_at"))}`;
    if (batch.status === "failed" && at("failed_at")) return `failed ${formatWhen(at("failed_at"))}`;
    const eta = at("estimated_completion_at");
    if (ACTIVE.has(batch.status) && eta) return `≈ done ${formatWhen(eta)}`;
    return "";
  }

  neuronsLine() {
    const { neurons_used: used, estimated_neurons: estimated } = this.batch;
    if (used === undefined && estimated === undefined) return null;
    const parts = [];
    if (used !== undefined && used !== null) parts.push(`${formatNeurons(used)} neurons used`);
    if (estimated !== undefined && estimated !== null) parts.push(`≈ ${formatNeurons(estimated)} estimated`);
    return h("p", { class: "batch-neurons hint", text: parts.join(" · ") });
  }

  errorsList() {
    const errors = this.batch.errors?.data;
    if (!Array.isArray(errors) || !errors.length) return null;
    return h(
      "ul",
      { class: "batch-errors field-error", role: "alert" },
      errors.slice(0, 5).map((e) =>
        h("li", { text: `${e.line ? `Line ${e.line}` : "Batch"}${e.param ? ` (${e.param})` : ""}: ${e.message || e.code || "invalid"}` }),
      ),
      errors.length > 5 ? h("li", { text: `… and ${errors.length - 5} more` }) : null,
    );
  }

  actions() {
    const batch = this.batch;
    const buttons = [];
    if (batch.status === "validating" || batch.status === "in_progress") {
      buttons.push(h("button", { type: "button", class: "btn btn-small btn-danger batch-cancel", onclick: (e) => this.cancel(e.currentTarget) }, "Cancel"));
    }
    if (batch.output_file_id) {
      buttons.push(
        h("button", { type: "button", class: "btn btn-small batch-download-jsonl", onclick: (e) => this.downloadJsonl(e.currentTarget, batch.output_file_id, "output") }, icon("download"), "Output JSONL"),
        h("button", { type: "button", class: "btn btn-small btn-primary-soft batch-download-zip", onclick: (e) => this.downloadZip(e.currentTarget) }, icon("download"), "Images (.zip)"),
      );
    }
    if (batch.error_file_id) {
      buttons.push(
        h("button", { type: "button", class: "btn btn-small batch-download-errors", onclick: (e) => this.downloadJsonl(e.currentTarget, batch.error_file_id, "errors") }, icon("download"), "Errors JSONL"),
      );
    }
    return buttons;
  }

  async cancel(button) {
    button.disabled = true;
    try {
      this.update(await cancelBatch(this.batch.id));
      this.onChanged();
    } catch (error) {
      button.disabled = false;
      toast(describeFailure(error), "error");
    }
  }

  async downloadJsonl(button, fileId, kind) {
    button.disabled = true;
    try {
      const text = await fileText(fileId);
      downloadBlob(new Blob([text], { type: "application/jsonl" }), `${this.batch.id}-${kind}.jsonl`);
    } catch (error) {
      toast(describeFailure(error), "error");
    } finally {
      button.disabled = false;
    }
  }

  /** Every image of the output in one zip, named by custom_id, built here in the browser. */
  async downloadZip(button) {
    button.disabled = true;
    const label = button.lastChild;
    const original = label.textContent;
    try {
      const images = imagesFromOutput(await fileText(this.batch.output_file_id));
      if (!images.length) throw new ApiFailure("The output has no images.");
      const files = [];
      for (const [index, image] of images.entries()) {
        label.textContent = `Zipping ${index + 1}/${images.length}…`;
        const bytes = image.b64 ? Uint8Array.from(atob(image.b64), (c) => c.charCodeAt(0)) : await fetchImageBytes(image.url);
        files.push({ name: `${image.name}.${extensionFor(sniffImageType(bytes))}`, bytes });
      }
      downloadBlob(zipFiles(files), `${this.batch.id}-images.zip`);
    } catch (error) {
      toast(describeFailure(error), "error");
    } finally {
      label.textContent = original;
      button.disabled = false;
    }
  }
}

// --- the view -------------------------------------------------------------------------------------

export class BatchesView {
  constructor(root) {
    this.root = root;
    this.form = new BatchForm(root.querySelector("#batch-form"), { onSubmitted: (batch) => this.upsert([batch], true) });
    this.list = root.querySelector("#batch-list");
    this.empty = root.querySelector("#batch-empty");
    this.message = root.querySelector("#batches-message");
    this.cards = new Map();
    this.timer = null;
    this.active = false;
    this.generation = 0; // counts key changes (reset)
    root.querySelector("#batch-refresh").addEventListener("click", () => this.refresh());
  }

  setModels(models, preferredId) {
    this.form.setModels(models, preferredId);
  }

  show() {
    this.active = true;
    this.refresh();
  }

  hide() {
    this.active = false;
    clearTimeout(this.timer);
  }

  /** Another key (or none): its batches are not this one's, so none stay on the page. */
  reset() {
    this.generation += 1; // a list still loading for the old key is dropped
    clearTimeout(this.timer);
    this.cards.clear();
    this.list.replaceChildren();
    this.empty.hidden = false;
    this.message.hidden = true;
  }

  async refresh() {
    clearTimeout(this.timer);
    const generation = this.generation;
    try {
      const listed = await listBatches();
      if (generation !== this.generation) return;
      // The list is what this key may see: a card it no longer lists goes.
      const ids = new Set(listed.map((batch) => batch.id));
      for (const [id, card] of this.cards) {
        if (!ids.has(id)) {
          card.node.remove();
          this.cards.delete(id);
        }
      }
      this.upsert(listed);
      this.message.hidden = true;
    } catch (error) {
      if (generation !== this.generation) return;
      this.message.hidden = false;
      this.message.textContent = describeFailure(error);
    }
    this.schedule();
  }

  /** Polls while the view is open and some batch is still moving. */
  schedule() {
    clearTimeout(this.timer);
    const moving = [...this.cards.values()].some((card) => ACTIVE.has(card.batch.status));
    if (this.active && moving) this.timer = setTimeout(() => document.visibilityState === "visible" ? this.refresh() : this.schedule(), POLL_MS);
  }

  /** `batches` newest first (as GET /v1/batches lists them, or the one just submitted). */
  upsert(batches, first = false) {
    for (const batch of [...batches].reverse()) {
      const card = this.cards.get(batch.id);
      if (card) card.update(batch);
      else {
        const fresh = new BatchCard(batch, { onChanged: () => this.schedule() });
        fresh.seq = this.cards.size; // breaks ties of batches made in the same second
        this.cards.set(batch.id, fresh);
      }
    }
    const created = (card) => toMillis(card.batch.created_at) || 0;
    const ordered = [...this.cards.values()].sort((a, b) => created(b) - created(a) || b.seq - a.seq);
    for (const card of ordered) this.list.appendChild(card.node);
    this.empty.hidden = this.cards.size > 0;
    if (first) this.schedule();
  }
}
