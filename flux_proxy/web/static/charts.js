// Charts as plain SVG, built node by node (no library, nothing parsed as markup): stacked bars
// per day, and a meter for "how much is left". Colours come from CSS classes (series-0 ...), so
// the theme stays in style.css.

import { formatNeurons, h } from "./util.js";

const SVG_NS = "http://www.w3.org/2000/svg";
const PLOT_BOTTOM = 22;
const PLOT_TOP = 16;

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null) node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

/** Counts as whole numbers ("3", "1,250"), fractions of neurons with one decimal. */
export function formatAmount(value) {
  const n = Number(value);
  if (!Number.isFinite(n)) return "—";
  return Number.isInteger(n) ? n.toLocaleString("en-US") : formatNeurons(n);
}

/**
 * 1, 2, 5, 10, 20, 50 ... : a round top for the y axis, whose half is the middle grid line.
 * Counts (`whole`) never get a half line at 0.5 or 2.5: their tops are 2, 6, 10, 20 ...
 */
function niceMax(value, whole = false) {
  let top = 10;
  if (value > 0) {
    const power = 10 ** Math.floor(Math.log10(value));
    top = 10 * power;
    for (const step of [5, 2, 1]) if (step * power >= value) top = step * power;
  } else {
    top = whole ? 2 : 1;
  }
  return whole && top % 2 === 1 ? top + 1 : top;
}

/** Pixels the y axis's labels take at 11 px: digits and separators are about 6.5 px each. */
function axisWidth(labels) {
  return Math.ceil(8 + 6.5 * Math.max(1, ...labels.map((label) => label.length)));
}

/** "2026-12-02" -> "2 Dec" (days are UTC dates, so they are read as UTC). */
export function dayLabel(day) {
  const date = new Date(`${day}T00:00:00Z`);
  return date.toLocaleDateString("en-GB", { day: "numeric", month: "short", timeZone: "UTC" });
}

/**
 * Stacked bars, one column per day: `series` is [{name, values: number[] (one per day)}].
 * Each segment is a <rect class="bar series-N"> with data-series, data-day and data-value, and
 * a <title> that a pointer or a screen reader can read. Columns are placed in percent of the
 * width and the height is in pixels, so text keeps its size at any width; `max` gives several
 * small charts one scale. The y axis's labels are a narrow SVG of their own beside the plot,
 * so no bar is ever drawn over them.
 */
export function stackedBars({ days, series, height = 160, unit = "", label, max = null, legendAlways = false }) {
  const plotHeight = height - PLOT_TOP - PLOT_BOTTOM;
  const totals = days.map((_, index) => series.reduce((sum, s) => sum + (Number(s.values[index]) || 0), 0));
  const whole = [max ?? 0, ...totals].every(Number.isInteger);
  const top = niceMax(Math.max(0, max ?? 0, ...totals), whole);
  const column = 100 / Math.max(1, days.length);
  const barWidth = column * 0.62;
  const y = (value) => PLOT_TOP + plotHeight - (plotHeight * value) / top;
  const levels = [0, top / 2, top];
  const grid = levels.map((value) =>
    svg("g", { class: "chart-grid" }, svg("line", { x1: "0", x2: "100%", y1: y(value), y2: y(value) })),
  );
  const labels = levels.map((value) => formatAmount(value));
  const width = axisWidth(labels);
  const axis = svg(
    "svg",
    { class: "chart-axis", width, height, "aria-hidden": "true" },
    ...levels.map((value, index) =>
      svg("text", { class: "chart-axis-label", x: width - 6, y: y(value) + 4, "text-anchor": "end" }, labels[index]),
    ),
  );
  const bars = [];
  days.forEach((day, index) => {
    let base = 0;
    const x = index * column + (column - barWidth) / 2;
    series.forEach((s, seriesIndex) => {
      const value = Number(s.values[index]) || 0;
      if (value <= 0) return;
      bars.push(
        svg(
          "rect",
          {
            class: `bar series-${seriesIndex % 8}`,
            x: `${x.toFixed(2)}%`,
            y: y(base + value).toFixed(1),
            width: `${barWidth.toFixed(2)}%`,
            height: Math.max(1, y(base) - y(base + value)).toFixed(1),
            rx: 2,
            "data-series": s.name,
            "data-day": day,
            "data-value": value,
          },
          svg("title", {}, `${s.name} · ${dayLabel(day)}: ${formatAmount(value)}${unit ? ` ${unit}` : ""}`),
        ),
      );
      base += value;
    });
  });
  const every = days.length > 8 ? 3 : 1;
  const ticks = days.map((day, index) =>
    (days.length - 1 - index) % every === 0
      ? svg("text", { class: "chart-tick", x: `${(index * column + column / 2).toFixed(2)}%`, y: height - 6, "text-anchor": "middle" }, dayLabel(day))
      : null,
  );
  const chart = svg(
    "svg",
    { class: "chart", width: "100%", height, role: "img", "aria-label": label },
    ...grid,
    ...bars,
    ...ticks,
  );
  const legend = series.length > 1 || legendAlways
    ? h("ul", { class: "chart-legend" }, series.map((s, index) => h("li", {}, h("span", { class: `swatch series-${index % 8}`, "aria-hidden": "true" }), s.name)))
    : null;
  return h("figure", { class: "chart-figure" }, h("div", { class: "chart-frame" }, axis, chart), legend);
}

/** A horizontal meter: how much of `total` is left, with its numbers as text beside it. */
export function meter({ left, total, label, unit = "neurons", className = "" }) {
  const known = Number.isFinite(left) && Number.isFinite(total) && total > 0;
  const share = known ? Math.max(0, Math.min(100, (100 * left) / total)) : 0;
  const text = known
    ? `${formatAmount(left)} of ${formatAmount(total)} ${unit} left today`
    : Number.isFinite(left)
      ? `${formatAmount(left)} ${unit} left today`
      : `no daily limit`;
  return h(
    "div",
    { class: `meter ${className}`.trim() },
    h("div", { class: "meter-label" }, h("span", { text: label }), h("span", { class: "meter-text", text })),
    !known ? null : h(
      "div",
      { class: "meter-track", role: "meter", "aria-label": `${label}: ${text}`, "aria-valuemin": "0", "aria-valuemax": String(known ? total : 0), "aria-valuenow": String(known ? left : 0) },
      h("span", { class: `meter-fill${share < 15 ? " is-low" : ""}`, style: `width: ${share.toFixed(1)}%`, "data-left": known ? left : "" }),
    ),
  );
}
