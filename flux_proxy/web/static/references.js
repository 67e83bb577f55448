// Reference images: up to four, added by click, drag and drop or paste, in an order that matters
// (the prompt can say "the person from image 0"), checked before anything is sent.

import { blobToDataUrl, h, icon, scaleImage, sniffImageType } from "./util.js";

export const ACCEPTED_TYPES = ["image/png", "image/jpeg", "image/webp"];
export const MAX_FILE_BYTES = 10 * 1024 * 1024;
// FLUX.2 sees references below 512 px; the proxy scales them. Shrinking huge photos here as
// well keeps the upload small (four 10 MB photos would not fit in one request).
const UPLOAD_MAX_SIDE = 1024;
const REORDER_TYPE = "application/x-flux-reference";

/** Rounded up, so a file just over the limit never reads as "10.0 MB; the limit is 10 MB". */
function megabytes(bytes) {
  const value = Math.ceil((bytes / (1024 * 1024)) * 10) / 10;
  return `${Number.isInteger(value) ? value : value.toFixed(1)} MB`;
}

export class ReferenceTray {
  constructor(root, { onChange }) {
    this.root = root;
    this.dropzone = root.querySelector("#reference-drop");
    this.input = root.querySelector("#reference-input");
    this.list = root.querySelector("#reference-list");
    this.errorLine = root.querySelector("#reference-error");
    this.note = root.querySelector("#reference-note");
    this.count = root.querySelector("#reference-count");
    this.onChange = onChange;
    this.items = [];
    this.max = 4;
    this.modelName = "";
    this.nextId = 1;
    this.bindEvents();
    this.render();
  }

  bindEvents() {
    this.dropzone.addEventListener("click", () => this.input.click());
    this.input.addEventListener("change", () => {
      this.add([...this.input.files]);
      this.input.value = "";
    });
    let depth = 0; // dragenter/dragleave fire for every child; count to know when we truly left
    this.root.addEventListener("dragenter", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      depth += 1;
      this.root.classList.add("is-dragging");
    });
    this.root.addEventListener("dragover", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
    });
    this.root.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (depth === 0) this.root.classList.remove("is-dragging");
    });
    this.root.addEventListener("drop", (event) => {
      depth = 0;
      this.root.classList.remove("is-dragging");
      if (!hasFiles(event)) return;
      event.preventDefault();
      this.add([...event.dataTransfer.files]);
    });
    // A file dropped beside the tray must not make the browser leave the page to show it.
    window.addEventListener("dragover", (event) => hasFiles(event) && event.preventDefault());
    window.addEventListener("drop", (event) => hasFiles(event) && event.preventDefault());
    document.addEventListener("paste", (event) => {
      const files = [...(event.clipboardData?.files || [])].filter((f) => f.type.startsWith("image/"));
      if (!files.length) return;
      // Office apps put a picture of the copied text beside the text: typing into a field
      // wants the text, not a surprise reference image.
      const typing = event.target instanceof HTMLTextAreaElement || event.target instanceof HTMLInputElement;
      if (typing && event.clipboardData.types.includes("text/plain")) return;
      event.preventDefault();
      this.add(files);
    });
  }

  /** Check and add files; problems are shown as one readable message per file. */
  add(files, options = {}) {
    // One batch at a time, so two quick drops cannot both squeeze past the limit.
    this.queue = (this.queue || Promise.resolve()).then(() => this.addNow(files, options));
    return this.queue;
  }

  async addNow(files, { source } = {}) {
    const problems = [];
    if (this.max === 0) {
      this.showProblems([`${this.modelName || "This model"} takes no reference images.`]);
      return;
    }
    for (const file of files) {
      const name = file.name || source || "pasted image";
      if (this.items.length >= this.max) {
        problems.push(`${name} was not added: at most ${this.max} reference images.`);
        continue;
      }
      const head = new Uint8Array(await file.slice(0, 16).arrayBuffer());
      const type = sniffImageType(head);
      if (!type || !ACCEPTED_TYPES.includes(type)) {
        problems.push(`${name} is not a PNG, JPEG or WebP image.`);
        continue;
      }
      if (file.size > MAX_FILE_BYTES) {
        problems.push(`${name} is ${megabytes(file.size)}; the limit is ${megabytes(MAX_FILE_BYTES)}.`);
        continue;
      }
      try {
        const bitmap = await createImageBitmap(file);
        const original = { width: bitmap.width, height: bitmap.height };
        bitmap.close();
        const tooBig = Math.max(original.width, original.height) > UPLOAD_MAX_SIDE;
        const blob = tooBig ? (await scaleImage(file, UPLOAD_MAX_SIDE, type, 0.92)).blob : file;
        this.items.push({
          id: this.nextId++,
          name,
          blob,
          url: URL.createObjectURL(blob),
          width: original.width,
          height: original.height,
        });
      } catch {
        problems.push(`${name} could not be read as an image.`);
      }
    }
    this.showProblems(problems);
    this.render();
    this.onChange?.();
  }

  showProblems(problems) {
    this.errorLine.textContent = problems.join(" ");
    this.errorLine.hidden = problems.length === 0;
  }

  remove(index) {
    const [item] = this.items.splice(index, 1);
    if (item) URL.revokeObjectURL(item.url);
    this.showProblems([]);
    this.render();
    this.onChange?.();
  }

  move(from, to) {
    if (to < 0 || to >= this.items.length || from === to) return;
    const [item] = this.items.splice(from, 1);
    this.items.splice(to, 0, item);
    this.render();
    this.onChange?.();
    // Keep keyboard users on the item they moved.
    this.list.querySelector(`[data-id="${item.id}"] .ref-move-${to > from ? "right" : "left"}`)?.focus();
  }

  clear() {
    for (const item of this.items) URL.revokeObjectURL(item.url);
    this.items = [];
    this.render();
    this.onChange?.();
  }

  setModel(model) {
    this.max = model ? model.maxReferences : 4;
    this.modelName = model?.name || "";
    this.render();
  }

  /** References that will be sent: none when the model takes none. */
  get active() {
    return this.items.slice(0, this.max);
  }

  async dataUrls() {
    return Promise.all(this.active.map((item) => blobToDataUrl(item.blob)));
  }

  render() {
    const disabled = this.max === 0;
    this.root.classList.toggle("is-disabled", disabled);
    this.dropzone.disabled = disabled || this.items.length >= this.max;
    this.count.textContent = `${Math.min(this.items.length, this.max)} / ${this.max}`;
    if (disabled) {
      this.note.textContent = this.items.length
        ? `${this.modelName} takes no reference images; these will not be sent.`
        : `${this.modelName} takes no reference images.`;
    } else {
      this.note.textContent = "PNG, JPEG or WebP, up to 10 MB each. Order matters: refer to them as image 0, image 1, …";
    }
    this.list.replaceChildren(...this.items.map((item, index) => this.renderItem(item, index)));
    this.list.hidden = this.items.length === 0;
  }

  renderItem(item, index) {
    const last = this.items.length - 1;
    const li = h(
      "li",
      { class: "ref-item", draggable: "true", title: `${item.name} · ${item.width}×${item.height}`, dataset: { id: String(item.id) } },
      h(
        "div",
        { class: "ref-thumb" },
        h("img", { src: item.url, alt: `Reference image ${index}: ${item.name}`, draggable: "false" }),
        h(
          "button",
          {
            type: "button",
            class: "icon-btn ref-move-left",
            "aria-label": `Move image ${index} earlier`,
            title: "Move earlier",
            disabled: index === 0,
            onclick: () => this.move(index, index - 1),
          },
          icon("left"),
        ),
        h(
          "button",
          {
            type: "button",
            class: "icon-btn ref-move-right",
            "aria-label": `Move image ${index} later`,
            title: "Move later",
            disabled: index === last,
            onclick: () => this.move(index, index + 1),
          },
          icon("right"),
        ),
        h(
          "button",
          {
            type: "button",
            class: "icon-btn ref-remove",
            "aria-label": `Remove image ${index}`,
            title: "Remove",
            onclick: () => this.remove(index),
          },
          icon("close"),
        ),
      ),
      h("span", { class: "ref-label", text: `image ${index}` }),
    );
    // Drag a thumbnail onto another to reorder (the buttons do the same from the keyboard).
    li.addEventListener("dragstart", (event) => {
      event.dataTransfer.setData(REORDER_TYPE, String(index));
      event.dataTransfer.effectAllowed = "move";
      li.classList.add("is-moving");
    });
    li.addEventListener("dragend", () => li.classList.remove("is-moving"));
    li.addEventListener("dragover", (event) => {
      if (event.dataTransfer.types.includes(REORDER_TYPE)) event.preventDefault();
    });
    li.addEventListener("drop", (event) => {
      const from = event.dataTransfer.getData(REORDER_TYPE);
      if (from === "") return;
      event.preventDefault();
      event.stopPropagation();
      this.move(Number(from), index);
    });
    return li;
  }
}

function hasFiles(event) {
  return Boolean(event.dataTransfer && [...event.dataTransfer.types].includes("Files"));
}
