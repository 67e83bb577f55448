// What a batch is made of: pasted prompts (one per line) or a dropped JSONL file, turned into
// the Batch API's input lines. The proxy validates every line again; this only catches what a
// person can fix before uploading (a line that is not JSON, a missing prompt, a repeated id).

export const GENERATIONS = "/v1/images/generations";
export const EDITS = "/v1/images/edits";
const MAX_LINES = 50000; // OpenAI's ceiling; the proxy may set a lower one and says so

/** Prompts -> input lines. custom_id is the prompt's line number ("0001"), so the output
 * names each image after the line it came from, even when blank lines are skipped. */
export function linesFromPrompts(text, fields) {
  const lines = [];
  const rows = String(text || "").split(/\r?\n/);
  const width = Math.max(4, String(rows.length).length);
  rows.forEach((row, index) => {
    const prompt = row.trim();
    if (!prompt) return;
    lines.push({
      custom_id: String(index + 1).padStart(width, "0"),
      method: "POST",
      url: GENERATIONS,
      body: { prompt, ...fields },
    });
  });
  return lines;
}

/** A JSONL file -> {lines, endpoint, problem}. Blank lines are allowed, as at OpenAI. */
export function linesFromJsonl(text) {
  const lines = [];
  const seen = new Set();
  const rows = String(text || "").split(/\r?\n/);
  for (let index = 0; index < rows.length; index += 1) {
    const row = rows[index].trim();
    if (!row) continue;
    const where = `Line ${index + 1}`;
    let line;
    try {
      line = JSON.parse(row);
    } catch {
      return { lines: [], problem: `${where} is not JSON.` };
    }
    if (!line || typeof line !== "object" || Array.isArray(line)) return { lines: [], problem: `${where} is not a JSON object.` };
    if (typeof line.custom_id !== "string" || !line.custom_id) return { lines: [], problem: `${where} has no custom_id.` };
    if (seen.has(line.custom_id)) return { lines: [], problem: `${where} repeats custom_id "${line.custom_id}".` };
    seen.add(line.custom_id);
    if (line.url !== GENERATIONS && line.url !== EDITS) {
      return { lines: [], problem: `${where}: url must be ${GENERATIONS} or ${EDITS}.` };
    }
    if (!line.body || typeof line.body !== "object") return { lines: [], problem: `${where} has no body.` };
    lines.push(line);
  }
  if (!lines.length) return { lines: [], problem: "The file has no request lines." };
  const endpoints = new Set(lines.map((line) => line.url));
  if (endpoints.size > 1) return { lines: [], problem: `All lines of one batch go to one endpoint; this file mixes ${[...endpoints].join(" and ")}.` };
  if (lines.length > MAX_LINES) return { lines: [], problem: `${lines.length} lines; a batch takes at most ${MAX_LINES}.` };
  return { lines, endpoint: lines[0].url, problem: null };
}

export function toJsonl(lines) {
  return lines.map((line) => JSON.stringify(line)).join("\n") + "\n";
}

/** The output file's lines, each with its images as {name, url | b64}: names follow custom_id
 * (sorted, since output lines come in the order they finished), "-2", "-3" for n > 1. */
export function imagesFromOutput(text) {
  const images = [];
  const lines = String(text || "")
    .split(/\r?\n/)
    .filter((row) => row.trim())
    .map((row) => JSON.parse(row))
    .sort((a, b) => String(a.custom_id).localeCompare(String(b.custom_id), "en", { numeric: true }));
  for (const line of lines) {
    const data = line?.response?.body?.data;
    if (!Array.isArray(data)) continue;
    const stem = safeName(line.custom_id);
    data.forEach((item, index) => {
      const name = data.length > 1 ? `${stem}-${index + 1}` : stem;
      if (typeof item.b64_json === "string") images.push({ name, b64: item.b64_json });
      else if (typeof item.url === "string") images.push({ name, url: item.url });
    });
  }
  return images;
}

/** custom_id -> a file name that is safe on every system. */
export function safeName(customId) {
  const name = String(customId ?? "line").replace(/[^A-Za-z0-9._-]+/g, "_").replace(/^[._]+/, "");
  return name.slice(0, 100) || "line";
}
