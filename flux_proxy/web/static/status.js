// The status bar: what the account pool can do right now, read from /health.

import { formatNeurons, formatWhen, h } from "./util.js";

const STATES = ["available", "cooling", "parked", "disabled"];
const STATE_HINTS = {
  available: "ready to serve",
  cooling: "rate limited, back soon",
  parked: "daily allocation spent, back at 00:00 UTC",
  disabled: "token refused or account unusable",
};

export function summariseHealth(health) {
  const accounts = Array.isArray(health.accounts) ? health.accounts : [];
  const counts = Object.fromEntries(STATES.map((state) => [state, 0]));
  let remaining = 0;
  let unlimited = false;
  for (const account of accounts) {
    if (account.state in counts) counts[account.state] += 1;
    if (account.state === "disabled") continue;
    if (account.neurons_remaining_today === null || account.neurons_remaining_today === undefined) unlimited = true;
    else remaining += Number(account.neurons_remaining_today) || 0;
  }
  // Without an admin key /health has no per-account list, only its summary.
  if (!Array.isArray(health.accounts) && health.counts && typeof health.counts === "object") {
    for (const state of STATES) counts[state] = Number(health.counts[state]) || 0;
    remaining = health.neurons_remaining_today;
    unlimited = remaining === null || remaining === undefined;
  }
  return {
    counts,
    remaining: unlimited ? null : remaining,
    accounts,
    emulator: health.mode === "emulator",
    healthy: counts.available > 0,
  };
}

export class StatusBar {
  constructor({ container, badge, details }) {
    this.container = container;
    this.badge = badge;
    this.details = details;
  }

  show(health) {
    const summary = summariseHealth(health);
    this.badge.hidden = !summary.emulator;
    const { counts } = summary;
    const pills = STATES.filter((state) => state === "available" || counts[state] > 0).map((state) =>
      h(
        "span",
        { class: `pill pill-${state}`, title: `${counts[state]} ${state}: ${STATE_HINTS[state]}` },
        h("span", { class: "dot", "aria-hidden": "true" }),
        h("strong", { text: String(counts[state]) }),
        ` ${state}`,
      ),
    );
    const neurons =
      summary.remaining === null ? "unlimited" : formatNeurons(summary.remaining);
    this.container.replaceChildren(
      h("span", { class: "status-group" }, pills),
      h(
        "span",
        { class: "status-neurons", title: "Neurons the pool can still spend today (resets 00:00 UTC)" },
        h("strong", { text: neurons }),
        " neurons left today",
      ),
    );
    this.container.dataset.health = summary.healthy ? "ok" : "down";
    this.renderDetails(summary.accounts, health);
    return summary;
  }

  showError(message) {
    this.container.replaceChildren(h("span", { class: "pill pill-disabled" }, h("span", { class: "dot" }), message));
    this.container.dataset.health = "down";
  }

  renderDetails(accounts, health) {
    const rows = accounts.map((account) =>
      h(
        "tr",
        {},
        h("td", { text: `#${account.number}` }),
        h("td", { class: "mono", text: account.account || "" }),
        h("td", {}, h("span", { class: `state state-${account.state}`, text: account.state })),
        h(
          "td",
          { class: "num" },
          account.neurons_remaining_today === null || account.neurons_remaining_today === undefined
            ? "unlimited"
            : formatNeurons(account.neurons_remaining_today),
        ),
        h("td", { text: account.until ? `until ${formatWhen(account.until)}` : account.in_flight ? `${account.in_flight} in flight` : "" }),
      ),
    );
    const store = health.store && typeof health.store === "object" ? health.store : null;
    // A user key's /health is a summary with no account list: say what the pool can do and
    // who sees more, rather than an empty table captioned "0 accounts".
    const detailed = Array.isArray(health.accounts);
    const count = detailed ? accounts.length : Number(health.total_accounts) || 0;
    // The default model only for admins: a user key may not be allowed it.
    const model = detailed ? ` · default model ${shortModel(health.model)}` : "";
    const caption = `${count} account${count === 1 ? "" : "s"}${model} · v${health.version || "?"}`;
    this.details.replaceChildren(
      detailed
        ? h(
            "table",
            { class: "accounts-table" },
            h("caption", { text: caption }),
            h(
              "thead",
              {},
              h("tr", {}, ["#", "Account", "State", "Neurons left", ""].map((label) => h("th", { scope: "col", text: label }))),
            ),
            h("tbody", {}, rows),
          )
        : h(
            "div",
            { class: "accounts-summary" },
            h("p", { class: "accounts-caption", text: caption }),
            h("p", { class: "accounts-counts", text: countsLine(summariseHealth(health).counts) }),
            health.next_reset ? h("p", { class: "hint", text: `Daily budgets reset ${formatWhen(health.next_reset)}.` }) : null,
            h("p", { class: "hint accounts-admin-note", text: "Each account's detail is shown to admin keys." }),
          ),
      store ? h("p", { class: "store-line", text: `State store: ${store.backend}${store.ok === false ? " (not reachable)" : ""}` }) : null,
    );
  }
}

/** "@cf/black-forest-labs/flux-2-dev" -> "flux-2-dev", the name people type. */
function shortModel(id) {
  return id ? String(id).split("/").pop() : "?";
}

function countsLine(counts) {
  const parts = STATES.filter((state) => state === "available" || counts[state] > 0).map((state) => `${counts[state]} ${state}`);
  return parts.join(" · ");
}
