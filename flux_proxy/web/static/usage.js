// The Usage view: who spent the neurons, drawn rather than listed. An admin key sees every
// account (neurons per day over the last 14 days, today's remaining budget), every key (images
// per day) and what the seeded cache saved; a user key sees its own quota and its own days.

import { describeFailure, getHealth, getQuota, getUsage } from "./api.js";
import { formatAmount, meter, stackedBars } from "./charts.js";
import { h } from "./util.js";

const DAYS = 14;
const DAY_MS = 86400000;

/** The last `count` UTC dates, oldest first, as YYYY-MM-DD. */
export function lastDays(count = DAYS, now = Date.now()) {
  return Array.from({ length: count }, (_, index) => new Date(now - (count - 1 - index) * DAY_MS).toISOString().slice(0, 10));
}

function rowsOf(body) {
  if (Array.isArray(body)) return body;
  if (Array.isArray(body?.data)) return body.data;
  if (Array.isArray(body?.rows)) return body.rows;
  return [];
}

/** An account as the usage rows name it ("1", 1, "1:ab12cd34") -> its number, or null. */
export function accountNumber(value) {
  if (Number.isInteger(value)) return value;
  const match = /^#?(\d+)(?::|$)/.exec(String(value ?? ""));
  return match ? Number(match[1]) : null;
}

/** rows -> [{name, values per day}] for one dimension and one measure. */
function seriesBy(rows, days, dimension, measure, name = (value) => String(value)) {
  const byName = new Map();
  for (const row of rows) {
    const index = days.indexOf(String(row.day).slice(0, 10));
    if (index < 0) continue;
    const key = name(row[dimension]);
    if (!byName.has(key)) byName.set(key, new Array(days.length).fill(0));
    byName.get(key)[index] += Number(row[measure]) || 0;
  }
  return [...byName.entries()].sort(([a], [b]) => a.localeCompare(b, "en", { numeric: true })).map(([n, values]) => ({ name: n, values }));
}

function sum(rows, measure) {
  return rows.reduce((total, row) => total + (Number(row[measure]) || 0), 0);
}

function numberOr(value) {
  return value === null || value === undefined || !Number.isFinite(Number(value)) ? null : Number(value);
}

export class UsageView {
  constructor(root) {
    this.root = root;
    this.message = root.querySelector("#usage-message");
    this.sections = {
      quota: root.querySelector("#usage-quota"),
      accounts: root.querySelector("#usage-accounts"),
      keys: root.querySelector("#usage-keys"),
      cache: root.querySelector("#usage-cache"),
      mine: root.querySelector("#usage-mine"),
    };
    root.querySelector("#usage-refresh").addEventListener("click", () => this.refresh());
    this.loading = null;
    this.shortNames = new Map(); // model id -> the short name people type (from /v1/models)
    this.quota = null;
    this.generation = 0; // counts key changes (reset)
  }

  /** /v1/models entries: the quota panel names a key's models as people type them. */
  setModels(models) {
    this.shortNames = new Map(models.filter((m) => m?.id && m.short_name).map((m) => [m.id, m.short_name]));
    if (this.quota) this.renderQuota(this.quota);
  }

  show() {
    this.refresh();
  }

  /** Another key (or none): nothing read with the old one stays on the page. */
  reset() {
    this.generation += 1; // a load still under way for the old key renders nothing
    this.loading = null;
    this.quota = null;
    for (const section of Object.values(this.sections)) {
      section.hidden = true;
      section.querySelector(".usage-body")?.replaceChildren();
    }
    this.message.hidden = true;
  }

  hide() {}

  refresh() {
    const loading = (this.loading ??= this.load(this.generation).finally(() => {
      if (this.loading === loading) this.loading = null;
    }));
    return loading;
  }

  async load(generation) {
    this.root.setAttribute("aria-busy", "true");
    const days = lastDays();
    const range = { start: days[0], end: days[days.length - 1] };
    const stale = () => generation !== this.generation; // the key changed while loading
    try {
      const quota = await getQuota();
      if (stale()) return;
      const admin = quota.role === "admin";
      this.renderQuota(quota);
      if (admin) {
        const [byAccount, byKey, byDay, health] = await Promise.all([
          getUsage({ ...range, groupBy: "account,day" }),
          getUsage({ ...range, groupBy: "key,day" }),
          getUsage({ ...range, groupBy: "day" }),
          getHealth(),
        ]);
        if (stale()) return;
        this.renderAccounts(rowsOf(byAccount), days, health);
        this.renderKeys(rowsOf(byKey), days);
        this.renderCache(rowsOf(byDay), days);
        this.sections.mine.hidden = true;
      } else {
        const mine = rowsOf(await getUsage({ ...range, groupBy: "day" }));
        if (stale()) return;
        this.renderMine(mine, days, quota);
        this.renderCache(mine, days);
        for (const name of ["accounts", "keys"]) this.sections[name].hidden = true;
      }
      this.message.hidden = true;
    } catch (error) {
      if (stale()) return;
      this.message.textContent = describeFailure(error);
      this.message.hidden = false;
    } finally {
      if (!stale()) this.root.setAttribute("aria-busy", "false");
    }
  }

  /** Who is calling, and what is left of their own daily quota (GET /v1/usage/quota). */
  renderQuota(quota) {
    const section = this.sections.quota;
    const rows = ["images", "neurons"].map((measure) => {
      const limit = numberOr(quota[`daily_${measure}`]);
      const used = numberOr(quota[`${measure}_used`]) ?? 0;
      const left = numberOr(quota[`${measure}_remaining`]);
      return h(
        "div",
        { class: `quota-row quota-${measure}` },
        meter({ left, total: limit, label: `Your ${measure}`, unit: measure }),
        h("p", { class: "hint quota-used", text: `${formatAmount(Math.round(used))} ${measure} used today` }),
      );
    });
    section.querySelector(".usage-body").replaceChildren(
      h(
        "p",
        { class: "quota-who" },
        h("span", { class: "mono quota-name", text: quota.key || "this key" }),
        h("span", { class: `state role-${quota.role}`, text: quota.role || "user" }),
      ),
      ...rows,
      ...(Array.isArray(quota.models) ? [this.modelList(quota.models)] : []),
    );
    this.quota = quota;
    section.hidden = false;
  }

  /** "Models: flux-2-dev, …", short names with each full id in a tooltip. */
  modelList(ids) {
    const names = ids.map((id) => {
      const short = this.shortNames.get(id) || String(id).split("/").pop();
      return h("span", { class: "mono quota-model", title: id, dataset: { id }, text: short });
    });
    const parts = names.flatMap((name, index) => (index ? [", ", name] : [name]));
    return h("p", { class: "hint quota-models" }, "Models: ", ...(parts.length ? parts : ["none"]));
  }

  /** Per account: neurons per day (one small chart each) and today's remaining budget. */
  renderAccounts(rows, days, health) {
    const section = this.sections.accounts;
    const snapshot = Array.isArray(health?.accounts) ? health.accounts : [];
    const numbers = new Set(snapshot.map((a) => a.number));
    for (const row of rows) {
      const number = accountNumber(row.account);
      if (number !== null) numbers.add(number);
    }
    const series = seriesBy(rows, days, "account", "neurons", (value) => `#${accountNumber(value) ?? value}`);
    const highest = Math.max(0, ...series.flatMap((s) => s.values)); // one scale for every account
    const cards = [...numbers].sort((a, b) => a - b).map((number) => {
      const account = snapshot.find((a) => a.number === number) || {};
      const values = series.find((s) => s.name === `#${number}`)?.values || new Array(days.length).fill(0);
      const total = values.reduce((a, b) => a + b, 0);
      return h(
        "li",
        { class: "account-usage", dataset: { account: String(number), neurons: String(total) } },
        h(
          "div",
          { class: "account-usage-head" },
          h("strong", { text: `#${number}` }),
          account.state ? h("span", { class: `state state-${account.state}`, text: account.state }) : null,
          h("span", { class: "hint", text: `${formatAmount(Math.round(total))} neurons in ${DAYS} days` }),
        ),
        stackedBars({ days, series: [{ name: `#${number}`, values }], height: 120, max: highest, unit: "neurons", label: `Account #${number}: neurons per day, last ${DAYS} days` }),
        meter({
          left: numberOr(account.neurons_remaining_today),
          total: numberOr(account.daily_budget),
          label: "Today's budget",
          className: "account-remaining",
        }),
      );
    });
    section.querySelector(".usage-body").replaceChildren(
      cards.length ? h("ul", { class: "account-usage-list" }, cards) : h("p", { class: "hint", text: "No accounts are configured." }),
    );
    section.hidden = false;
  }

  /** Per key: images per day, stacked, for admins. */
  renderKeys(rows, days) {
    const section = this.sections.keys;
    const series = seriesBy(rows, days, "key", "images");
    section.querySelector(".usage-body").replaceChildren(
      series.length
        ? stackedBars({ days, series, unit: "images", legendAlways: true, label: `Images per key per day, last ${DAYS} days` })
        : h("p", { class: "hint", text: `No images in the last ${DAYS} days.` }),
    );
    section.hidden = false;
  }

  /** A user key's own images per day. */
  renderMine(rows, days, quota) {
    const section = this.sections.mine;
    const series = [{ name: quota.key || "this key", values: seriesBy(rows, days, "day", "images", () => "all")[0]?.values || new Array(days.length).fill(0) }];
    section.querySelector(".usage-body").replaceChildren(
      stackedBars({ days, series, unit: "images", label: `Your images per day, last ${DAYS} days` }),
    );
    section.hidden = false;
  }

  /** The seeded cache: hits and the neurons they did not cost. */
  renderCache(rows, days) {
    const section = this.sections.cache;
    const hits = sum(rows, "cache_hits");
    const saved = sum(rows, "neurons_saved");
    const series = seriesBy(rows, days, "day", "cache_hits", () => "cache hits");
    section.querySelector(".usage-body").replaceChildren(
      h(
        "div",
        { class: "stat-tiles" },
        h("div", { class: "stat-tile" }, h("span", { class: "stat-value cache-hits", text: formatAmount(hits) }), h("span", { class: "hint", text: "cache hits" })),
        h("div", { class: "stat-tile" }, h("span", { class: "stat-value cache-saved", text: formatAmount(Math.round(saved)) }), h("span", { class: "hint", text: "neurons saved" })),
      ),
      hits ? stackedBars({ days, series, height: 100, unit: "hits", label: `Cache hits per day, last ${DAYS} days` }) : h("p", { class: "hint", text: "A repeated request with a seed is answered from the cache, without spending neurons." }),
    );
    section.hidden = false;
  }
}
