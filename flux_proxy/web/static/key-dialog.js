// The API key: the header button that shows its state, and the dialog that asks for it.

import { apiKey } from "./api.js";
import { toast } from "./util.js";

const LABELS = {
  ok: "Key set",
  "none-needed": "No key needed",
  missing: "Enter API key",
  refused: "Key refused",
};

export class KeyDialog {
  constructor({ onSaved, onForgotten }) {
    this.dialog = document.querySelector("#key-dialog");
    this.input = document.querySelector("#key-input");
    this.error = document.querySelector("#key-error");
    this.button = document.querySelector("#key-button");
    this.label = document.querySelector("#key-label");
    this.onSaved = onSaved;
    this.onForgotten = onForgotten;
    this.bindEvents();
  }

  get isOpen() {
    return this.dialog.open;
  }

  bindEvents() {
    this.button.addEventListener("click", () => this.open(null));
    document.querySelector("#key-cancel").addEventListener("click", () => this.dialog.close());
    document.querySelector("#key-show").addEventListener("click", (event) => {
      const show = this.input.type === "password";
      this.input.type = show ? "text" : "password";
      event.currentTarget.textContent = show ? "Hide" : "Show";
      event.currentTarget.setAttribute("aria-pressed", String(show));
    });
    document.querySelector("#key-forget").addEventListener("click", () => {
      apiKey.clear();
      this.input.value = "";
      this.setState("missing");
      toast("Key removed from this browser");
      this.onForgotten?.();
      this.input.focus();
    });
    document.querySelector("#key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = this.input.value.trim();
      if (!value) {
        this.showError("Enter a key, or Cancel.");
        return;
      }
      apiKey.set(value);
      this.dialog.close();
      this.onSaved?.();
    });
  }

  open(errorText) {
    this.showError(errorText);
    this.input.value = apiKey.get();
    if (!this.dialog.open) this.dialog.showModal();
    this.input.focus();
    this.input.select();
  }

  showError(text) {
    this.error.textContent = text || "";
    this.error.hidden = !text;
  }

  /** ok | none-needed | missing | refused: shown on the header button. */
  setState(kind) {
    this.button.dataset.state = kind;
    this.label.textContent = LABELS[kind];
    this.button.setAttribute("aria-label", `API key: ${LABELS[kind]}. Change it.`);
  }
}
