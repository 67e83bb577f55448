// Small DOM and formatting helpers shared by the page's modules.
//
// Every piece of text that reaches the page goes through text nodes or textContent: server
// messages and prompts are never parsed as markup (the seed pasted upstream error text into
// its page as HTML; this page builds every node itself).

const SVG_NS = "http://www.w3.org/2000/svg";

/** Build an element: h("button", {class: "btn", onclick: fn, "aria-label": "x"}, "text", child). */
export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else if (child instanceof Node) node.appendChild(child);
    else node.appendChild(document.createTextNode(String(child)));
  }
}

// Icon paths (24x24, stroked), drawn with createElementNS so no markup is ever parsed.
const ICONS = {
  download: ["M12 4v11", "M7 10l5 5 5-5", "M5 20h14"],
  copy: ["M9 9h10v10H9z", "M5 15V5h10"],
  reference: ["M4 5h16v14H4z", "M4 15l4-4 4 4 3-3 5 5", "M15 9.5h.01"],
  reuse: ["M4 12a8 8 0 0 1 13.7-5.6L20 8", "M20 4v4h-4", "M20 12a8 8 0 0 1-13.7 5.6L4 16", "M4 20v-4h4"],
  trash: ["M4 7h16", "M9 7V4h6v3", "M6 7l1 13h10l1-13"],
  open: ["M14 4h6v6", "M20 4l-8 8", "M18 14v6H4V6h6"],
  left: ["M15 6l-6 6 6 6"],
  right: ["M9 6l6 6-6 6"],
  close: ["M6 6l12 12", "M18 6L6 18"],
  dice: ["M5 5h14v14H5z", "M9 9h.01", "M15 15h.01", "M15 9h.01", "M9 15h.01", "M12 12h.01"],
  lock: ["M6 11h12v9H6z", "M8.5 11V8a3.5 3.5 0 0 1 7 0v3"],
  unlock: ["M6 11h12v9H6z", "M8.5 11V8a3.5 3.5 0 0 1 6.8-1.2"],
  check: ["M5 12.5l4.5 4.5L19 7"],
};

export function icon(name, label) {
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("class", "icon");
  if (label) {
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
  } else {
    svg.setAttribute("aria-hidden", "true");
  }
  for (const d of ICONS[name] || []) {
    const path = document.createElementNS(SVG_NS, "path");
    path.setAttribute("d", d);
    svg.appendChild(path);
  }
  return svg;
}

export function clamp(value, minimum, maximum) {
  return Math.min(maximum, Math.max(minimum, value));
}

/** "a cat, on the moon!" -> "a-cat-on-the-moon" (for download file names). */
export function slugify(text, maxLength = 60) {
  const slug = String(text || "")
    .normalize("NFKD")
    .replace(/[\u0300-\u036f]/g, "")
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, maxLength)
    .replace(/-+$/g, "");
  return slug || "image";
}

function gcd(a, b) {
  return b === 0 ? a : gcd(b, a % b);
}

/** 1920x1080 -> "16:9"; awkward sizes get a decimal ratio instead of "277:180". */
export function aspectRatio(width, height) {
  if (!(width > 0 && height > 0)) return "";
  const d = gcd(width, height);
  const w = width / d;
  const h = height / d;
  if (w <= 32 && h <= 32) return `${w}:${h}`;
  return `${(width / height).toFixed(2)}:1`;
}

export function formatSeconds(seconds) {
  if (!Number.isFinite(seconds)) return "—";
  return seconds < 10 ? `${seconds.toFixed(1)} s` : `${Math.round(seconds)} s`;
}

export function formatNeurons(value) {
  if (value === null || value === undefined || !Number.isFinite(Number(value))) return "—";
  const n = Number(value);
  return n >= 100 ? Math.round(n).toLocaleString("en-US") : n.toFixed(1);
}

export function formatWhen(timestamp) {
  const date = new Date(timestamp);
  const today = new Date();
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (date.toDateString() === today.toDateString()) return time;
  return `${date.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
}

/** A seed the page picks itself (32-bit unsigned, which every model accepts). */
export function randomSeed() {
  const buffer = new Uint32Array(1);
  crypto.getRandomValues(buffer);
  return buffer[0] % 2147483648;
}

export function promptSummary(prompt) {
  if (typeof prompt === "string") return prompt;
  if (prompt && typeof prompt === "object") {
    return String(prompt.scene || prompt.description || JSON.stringify(prompt));
  }
  return "";
}

/** base64 from the API -> Blob, with the type read from the first bytes. */
export function base64ToBlob(b64, fallbackType = "image/png") {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: sniffImageType(bytes) || fallbackType });
}

export function sniffImageType(bytes) {
  if (bytes[0] === 0x89 && bytes[1] === 0x50 && bytes[2] === 0x4e && bytes[3] === 0x47) return "image/png";
  if (bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) return "image/jpeg";
  if (bytes[0] === 0x52 && bytes[1] === 0x49 && bytes[2] === 0x46 && bytes[3] === 0x46 &&
      bytes[8] === 0x57 && bytes[9] === 0x45 && bytes[10] === 0x42 && bytes[11] === 0x50) {
    return "image/webp";
  }
  return null;
}

export function extensionFor(type) {
  return { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp" }[type] || "png";
}

export function blobToDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

/** A smaller copy of an image (for thumbnails and for references the model would shrink). */
export async function scaleImage(blob, maxSide, type = "image/jpeg", quality = 0.85) {
  const bitmap = await createImageBitmap(blob);
  const scale = Math.min(1, maxSide / Math.max(bitmap.width, bitmap.height));
  const width = Math.max(1, Math.round(bitmap.width * scale));
  const height = Math.max(1, Math.round(bitmap.height * scale));
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  canvas.getContext("2d").drawImage(bitmap, 0, 0, width, height);
  bitmap.close();
  const scaled = await new Promise((resolve) => canvas.toBlob(resolve, type, quality));
  return { blob: scaled || blob, width, height };
}

/** Announce short status text to screen readers and show a toast. */
export function toast(message, kind = "info") {
  const region = document.getElementById("toasts");
  if (!region) return;
  const item = h("div", { class: `toast toast-${kind}`, role: "status", text: message });
  region.appendChild(item);
  requestAnimationFrame(() => item.classList.add("toast-in"));
  setTimeout(() => {
    item.classList.remove("toast-in");
    setTimeout(() => item.remove(), 300);
  }, 2600);
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // Clipboard API needs a secure context; fall back to a hidden textarea + execCommand.
    const area = h("textarea", { class: "visually-hidden", "aria-hidden": "true" });
    area.value = text;
    document.body.appendChild(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}
