// The stage: the images of one generation, what made them, and what you can do with them.

import { copyText, extensionFor, formatNeurons, formatSeconds, h, icon, promptSummary, slugify, toast } from "./util.js";

export class ResultView {
  constructor(root, { onUseReference, onReuse }) {
    this.root = root;
    this.body = root.querySelector("#result");
    this.empty = root.querySelector("#result-empty");
    this.onUseReference = onUseReference;
    this.onReuse = onReuse;
    this.urls = [];
    this.record = null;
  }

  clear() {
    for (const url of this.urls) URL.revokeObjectURL(url);
    this.urls = [];
    this.record = null;
    this.body.replaceChildren();
    this.body.hidden = true;
    this.empty.hidden = false;
  }

  show(record) {
    this.clear();
    this.record = record;
    this.empty.hidden = true;
    this.body.hidden = false;
    const summary = promptSummary(record.prompt);
    const count = record.images.length;
    const figures = record.images.map((image, index) => this.renderImage(record, image, index));
    this.body.replaceChildren(
      h(
        "div",
        { class: "result-head" },
        h(
          "div",
          { class: "result-title" },
          h("h3", { class: "result-prompt", text: summary, title: summary }),
          h(
            "ul",
            { class: "meta-list", "aria-label": "Generation details" },
            meta("Model", record.modelName),
            record.width ? meta("Size", `${record.width}×${record.height}`) : null,
            record.steps ? meta("Steps", String(record.steps)) : null,
            meta("Time", formatSeconds(record.seconds)),
            meta("Neurons", formatNeurons(record.neurons)),
            record.referenceCount ? meta("References", String(record.referenceCount)) : null,
          ),
        ),
        h(
          "button",
          { type: "button", class: "btn btn-secondary", id: "reuse-settings", onclick: () => this.onReuse(record) },
          icon("reuse"),
          "Reuse these settings",
        ),
      ),
      h("div", { class: `result-grid count-${Math.min(count, 4)}` }, figures),
    );
  }

  renderImage(record, image, index) {
    const url = URL.createObjectURL(image.blob);
    this.urls.push(url);
    const name = `${slugify(promptSummary(record.prompt))}${Number.isInteger(image.seed) ? `-${image.seed}` : ""}.${extensionFor(image.blob.type)}`;
    const seedText = Number.isInteger(image.seed) ? String(image.seed) : "—";
    return h(
      "figure",
      { class: "result-figure" },
      h(
        "a",
        { href: url, target: "_blank", rel: "noopener", class: "result-link", title: "Open full size in a new tab" },
        h("img", {
          class: "result-image",
          src: url,
          alt: `Generated image ${index + 1} of ${record.images.length}: ${promptSummary(record.prompt).slice(0, 120)}`,
        }),
      ),
      h(
        "figcaption",
        { class: "result-caption" },
        h(
          "dl",
          { class: "facts" },
          h("div", {}, h("dt", { text: "Account" }), h("dd", { class: "fact-account", text: image.account != null ? `#${image.account}` : "—" })),
          h("div", {}, h("dt", { text: "Seed" }), h("dd", { class: "fact-seed", text: seedText })),
        ),
        h(
          "div",
          { class: "result-actions" },
          h("a", { class: "btn btn-small btn-primary-soft", href: url, download: name, title: `Download ${name}` }, icon("download"), "Download"),
          h(
            "button",
            {
              type: "button",
              class: "btn btn-small",
              disabled: !Number.isInteger(image.seed),
              onclick: async () => toast((await copyText(seedText)) ? `Seed ${seedText} copied` : "Could not copy", "info"),
            },
            icon("copy"),
            "Copy seed",
          ),
          h(
            "button",
            { type: "button", class: "btn btn-small", onclick: () => this.onUseReference(image, record) },
            icon("reference"),
            "Use as reference",
          ),
        ),
      ),
    );
  }
}

function meta(label, value) {
  return h("li", {}, h("span", { class: "meta-label", text: label }), h("span", { class: "meta-value", text: value }));
}
