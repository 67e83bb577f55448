// Past generations, kept in this browser's IndexedDB (images as Blobs) across reloads.

import { formatWhen, h, icon, promptSummary } from "./util.js";

const DB_NAME = "flux-proxy";
const STORE = "generations";
const KEEP = 100; // oldest entries go first; a few hundred full-size images would fill the disk

function open() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => {
      const store = request.result.createObjectStore(STORE, { keyPath: "id" });
      store.createIndex("created", "created");
    };
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

function run(db, mode, work) {
  return new Promise((resolve, reject) => {
    const tx = db.transaction(STORE, mode);
    const result = work(tx.objectStore(STORE));
    tx.oncomplete = () => resolve(result?.result);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  });
}

export class HistoryStore {
  constructor() {
    this.db = open();
  }

  async add(record) {
    const db = await this.db;
    await run(db, "readwrite", (store) => store.put(record));
    const all = await this.list();
    const stale = all.slice(KEEP);
    if (stale.length) await run(db, "readwrite", (store) => stale.forEach((r) => store.delete(r.id)));
  }

  /** Newest first. */
  async list() {
    const db = await this.db;
    const all = await run(db, "readonly", (store) => store.getAll());
    return (all || []).sort((a, b) => b.created - a.created);
  }

  async get(id) {
    return run(await this.db, "readonly", (store) => store.get(id));
  }

  async delete(id) {
    await run(await this.db, "readwrite", (store) => store.delete(id));
  }

  async clear() {
    await run(await this.db, "readwrite", (store) => store.clear());
  }
}

export class HistoryView {
  constructor(root, store, { onOpen, onReuse, onChange }) {
    this.root = root;
    this.store = store;
    this.list = root.querySelector("#history-list");
    this.empty = root.querySelector("#history-empty");
    this.count = root.querySelector("#history-count");
    this.clearButton = root.querySelector("#history-clear");
    this.onOpen = onOpen;
    this.onReuse = onReuse;
    this.onChange = onChange;
    this.urls = [];
    this.records = [];
    this.clearButton.addEventListener("click", () => this.clearAll());
  }

  async refresh() {
    try {
      this.records = await this.store.list();
    } catch {
      this.records = [];
      this.empty.textContent = "History is unavailable in this browser (IndexedDB is blocked).";
    }
    this.render();
  }

  render() {
    for (const url of this.urls) URL.revokeObjectURL(url);
    this.urls = [];
    this.list.replaceChildren(...this.records.map((record) => this.renderCard(record)));
    this.empty.hidden = this.records.length > 0;
    this.clearButton.disabled = this.records.length === 0;
    this.count.textContent = this.records.length ? String(this.records.length) : "";
  }

  renderCard(record) {
    const first = record.images?.[0];
    const url = first ? URL.createObjectURL(first.thumb || first.blob) : "";
    if (url) this.urls.push(url);
    const summary = promptSummary(record.prompt);
    const more = record.images.length > 1 ? h("span", { class: "history-more", text: `+${record.images.length - 1}` }) : null;
    return h(
      "li",
      { class: "history-card", dataset: { id: record.id } },
      h(
        "button",
        {
          type: "button",
          class: "history-open",
          title: "Open",
          "aria-label": `Open: ${summary.slice(0, 80)}`,
          onclick: () => this.onOpen(record),
        },
        url ? h("img", { src: url, alt: "", loading: "lazy" }) : null,
        more,
      ),
      h(
        "div",
        { class: "history-info" },
        h("p", { class: "history-prompt", text: summary, title: summary }),
        h(
          "p",
          { class: "history-meta" },
          `${record.modelName} · ${record.width && record.height ? `${record.width}×${record.height}` : "default size"} · ${formatWhen(record.created)}`,
        ),
      ),
      h(
        "div",
        { class: "history-actions" },
        h(
          "button",
          { type: "button", class: "icon-btn", title: "Reuse these settings", "aria-label": "Reuse these settings", onclick: () => this.onReuse(record) },
          icon("reuse"),
        ),
        h(
          "button",
          { type: "button", class: "icon-btn danger", title: "Delete", "aria-label": "Delete from history", onclick: () => this.remove(record.id) },
          icon("trash"),
        ),
      ),
    );
  }

  async remove(id) {
    await this.store.delete(id);
    await this.refresh();
    this.onChange?.("deleted", id);
  }

  async clearAll() {
    if (!this.records.length) return;
    if (!confirm(`Delete all ${this.records.length} generations from this browser's history?`)) return;
    await this.store.clear();
    await this.refresh();
    this.onChange?.("cleared");
  }
}
