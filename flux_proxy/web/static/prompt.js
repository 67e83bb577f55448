// The prompt box: plain text, or a FLUX.2 JSON prompt validated as you type.
//
// Each mode keeps its own text, so flipping to JSON and back never loses a sentence.

import { lineAndColumn, locateJsonError } from "./json-check.js";

/** A starting point with the fields FLUX.2's structured prompts understand. */
export const JSON_TEMPLATE = {
  scene: "A quiet harbour town at dawn, fishing boats resting on glassy water",
  subjects: [
    {
      type: "person",
      description: "an old fisherman in a yellow raincoat mending a net",
      pose: "seated on an upturned crate, head bowed over his work",
      position: "foreground, left third",
    },
    {
      type: "animal",
      description: "a ginger cat watching the net",
      pose: "sitting upright, tail curled around its paws",
      position: "foreground, right of the fisherman",
    },
  ],
  style: "cinematic photograph, natural light, fine film grain",
  color_palette: ["#1F3B4D", "#F2B134", "#E8E2D0"],
  lighting: "soft golden-hour side light with long shadows",
  mood: "calm, nostalgic",
  background: "pastel houses stacked up a hillside in light morning mist",
  composition: "rule of thirds, leading lines along the pier",
  camera: {
    angle: "eye level",
    distance: "medium shot",
    focus: "sharp on the fisherman's hands",
    lens: "35mm",
    "f-number": "f/2.8",
    ISO: 200,
  },
};

const PLACEHOLDERS = {
  text: "Describe the image: a lighthouse on a cliff at dusk, storm clouds, oil painting…",
  json: '{ "scene": "…", "subjects": [ … ], "style": "…" }  — or use “Start from template”',
};

/** Parse a JSON prompt; returns {value} or {error: "Line 3, column 5: …"}. */
export function parseJsonPrompt(text) {
  if (!text.trim()) return { error: "Write a JSON object, or start from the template." };
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    return { error: describeSyntaxError(text, error) };
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    return { error: "A JSON prompt must be an object: { \"scene\": \"…\", … }" };
  }
  if (Object.keys(value).length === 0) return { error: "The JSON object is empty." };
  const palette = value.color_palette;
  if (palette !== undefined) {
    const ok = Array.isArray(palette) && palette.every((c) => typeof c === "string" && /^#[0-9a-f]{6}$/i.test(c));
    if (!ok) return { error: "color_palette should be a list of hex colours like \"#1F3B4D\"." };
  }
  return { value };
}

function describeSyntaxError(text, error) {
  const found = locateJsonError(text);
  if (found) {
    const { line, column } = lineAndColumn(text, found.position);
    return `Line ${line}, column ${column}: ${found.reason}.`;
  }
  return `Not valid JSON: ${String(error.message || error)}`;
}

export class PromptEditor {
  constructor({ textarea, modeInputs, jsonTools, templateButton, formatButton, errorLine, counter, onChange }) {
    this.textarea = textarea;
    this.modeInputs = modeInputs;
    this.jsonTools = jsonTools;
    this.errorLine = errorLine;
    this.counter = counter;
    this.onChange = onChange;
    this.mode = "text";
    this.buffers = { text: "", json: "" };
    this.error = null;

    textarea.addEventListener("input", () => {
      this.buffers[this.mode] = textarea.value;
      this.validate();
    });
    for (const input of modeInputs) {
      input.addEventListener("change", () => input.checked && this.setMode(input.value));
    }
    templateButton.addEventListener("click", () => {
      const current = this.buffers.json.trim();
      if (current && current !== pretty(JSON_TEMPLATE) && !confirm("Replace the JSON prompt with the template?")) return;
      this.setText(pretty(JSON_TEMPLATE));
      textarea.focus();
      textarea.setSelectionRange(0, 0);
      textarea.scrollTop = 0;
    });
    formatButton.addEventListener("click", () => this.format());
    this.render();
  }

  setMode(mode) {
    if (mode === this.mode) return;
    if (mode === "json" && !this.buffers.json.trim() && this.buffers.text.trim()) {
      // Carry the sentence over as the scene, so switching is a step forward, not a blank box.
      this.buffers.json = pretty({ scene: this.buffers.text.trim() });
    }
    this.mode = mode;
    this.render();
  }

  setText(text) {
    this.buffers[this.mode] = text;
    this.textarea.value = text;
    this.validate();
  }

  /** Show a prompt from history or a result: objects open in JSON mode. */
  setPrompt(prompt) {
    if (prompt && typeof prompt === "object") {
      this.buffers.json = pretty(prompt);
      this.mode = "json";
    } else {
      this.buffers.text = String(prompt ?? "");
      this.mode = "text";
    }
    this.render();
  }

  format() {
    const parsed = parseJsonPrompt(this.buffers.json);
    if (parsed.value) this.setText(pretty(parsed.value));
  }

  /** The prompt to send: a string, a parsed object, or null when there is nothing valid. */
  value() {
    if (this.mode === "text") return this.buffers.text.trim() || null;
    return parseJsonPrompt(this.buffers.json).value || null;
  }

  render() {
    for (const input of this.modeInputs) input.checked = input.value === this.mode;
    this.textarea.value = this.buffers[this.mode];
    this.textarea.placeholder = PLACEHOLDERS[this.mode];
    this.textarea.classList.toggle("mono", this.mode === "json");
    this.textarea.spellcheck = this.mode === "text";
    this.jsonTools.hidden = this.mode !== "json";
    this.validate();
  }

  validate() {
    const text = this.buffers[this.mode];
    this.error = null;
    // An empty JSON box is "not ready", not an error: no red text before the user types.
    if (this.mode === "json" && text.trim()) this.error = parseJsonPrompt(text).error || null;
    this.errorLine.textContent = this.error || "";
    this.errorLine.hidden = !this.error;
    this.textarea.setAttribute("aria-invalid", this.error ? "true" : "false");
    this.counter.textContent = `${text.length.toLocaleString("en-US")} chars`;
    this.onChange?.();
  }
}

function pretty(value) {
  return JSON.stringify(value, null, 2);
}
