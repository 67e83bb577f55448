// The page's only way to talk to the proxy: the public API, with the key the user typed.
//
// The key lives in this browser's localStorage and nowhere else: the server never writes it
// into the page (the seed printed its master key into the HTML, so it protected nothing).

const KEY_STORAGE = "flux-proxy.api-key";

export const apiKey = {
  get() {
    try {
      return localStorage.getItem(KEY_STORAGE) || "";
    } catch {
      return "";
    }
  },
  set(value) {
    localStorage.setItem(KEY_STORAGE, value.trim());
  },
  clear() {
    localStorage.removeItem(KEY_STORAGE);
  },
};

/** A failed API call, with what the user needs to read and what the page needs to decide. */
export class ApiFailure extends Error {
  constructor(message, { status = 0, type = null, code = null, param = null, retryAfter = null } = {}) {
    super(message);
    this.name = "ApiFailure";
    this.status = status;
    this.type = type;
    this.code = code;
    this.param = param;
    this.retryAfter = retryAfter;
  }

  get isAuth() {
    return this.status === 401;
  }
}

async function readJson(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function failureFrom(response, body) {
  const error = body && typeof body.error === "object" && body.error ? body.error : {};
  const header = response.headers.get("Retry-After");
  const retryAfter = header !== null && header !== "" && Number.isFinite(Number(header)) ? Number(header) : null;
  const message =
    typeof error.message === "string" && error.message
      ? error.message
      : `The proxy answered ${response.status} ${response.statusText || ""}`.trim();
  return new ApiFailure(message, {
    status: response.status,
    type: error.type ?? null,
    code: error.code ?? null,
    param: error.param ?? null,
    retryAfter,
  });
}

/** `form` (a FormData) goes as multipart; `as: "text" | "blob"` reads a body that is not JSON. */
async function request(path, { method = "GET", json, form, signal, auth = true, as = "json" } = {}) {
  const headers = { Accept: as === "json" ? "application/json" : "*/*" };
  const key = apiKey.get();
  if (auth && key) headers.Authorization = `Bearer ${key}`;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form; // the browser writes the multipart boundary into Content-Type itself
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body, signal, cache: "no-store" });
  } catch (error) {
    if (error && error.name === "AbortError") throw error;
    throw new ApiFailure("Could not reach the proxy. Is it running, and is the network up?", { status: 0 });
  }
  if (as !== "json" && response.ok) return as === "blob" ? response.blob() : response.text();
  const data = await readJson(response);
  if (!response.ok) throw failureFrom(response, data);
  if (data === null) throw new ApiFailure("The proxy sent an answer that is not JSON.", { status: response.status });
  return data;
}

/** /health answers 503 with the same body when nothing can serve: both are a status to show.
 * The key goes along: an admin key sees each account, others only the summary. */
export async function getHealth() {
  const headers = { Accept: "application/json" };
  const key = apiKey.get();
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch("/health", { headers, cache: "no-store" });
  const data = await readJson(response);
  if (!data) throw new ApiFailure(`/health answered ${response.status}`, { status: response.status });
  return data;
}

export async function listModels() {
  const body = await request("/v1/models");
  return Array.isArray(body.data) ? body.data : [];
}

export function generateImages(payload, signal) {
  return request("/v1/images/generations", { method: "POST", json: payload, signal });
}

// --- Files and Batch API (OpenAI's shapes, plus the proxy's estimate) -----------------------

export function uploadBatchFile(text, filename) {
  const form = new FormData();
  form.append("purpose", "batch");
  form.append("file", new Blob([text], { type: "application/jsonl" }), filename);
  return request("/v1/files", { method: "POST", form });
}

export function estimateBatch(endpoint, bodies, signal) {
  return request("/v1/batches/estimate", { method: "POST", json: { endpoint, bodies }, signal });
}

export function createBatch(fields) {
  return request("/v1/batches", { method: "POST", json: fields });
}

export async function listBatches(limit = 20) {
  const body = await request(`/v1/batches?limit=${limit}`);
  return Array.isArray(body.data) ? body.data : [];
}

export function getBatch(id) {
  return request(`/v1/batches/${encodeURIComponent(id)}`);
}

export function cancelBatch(id) {
  return request(`/v1/batches/${encodeURIComponent(id)}/cancel`, { method: "POST" });
}

export function fileText(id) {
  return request(`/v1/files/${encodeURIComponent(id)}/content`, { as: "text" });
}

/** An image a batch line answered with a URL (the proxy's own, which needs no key). */
export async function fetchImageBytes(url) {
  let response;
  try {
    response = await fetch(url, { cache: "no-store" });
  } catch {
    throw new ApiFailure(`Could not download ${url}.`, { status: 0 });
  }
  if (!response.ok) throw new ApiFailure(`Downloading an image answered ${response.status}.`, { status: response.status });
  return new Uint8Array(await response.arrayBuffer());
}

// --- usage ------------------------------------------------------------------------------------

export function getUsage({ start, end, groupBy }) {
  const query = new URLSearchParams({ start, end, group_by: groupBy });
  return request(`/v1/usage?${query}`);
}

export function getQuota() {
  return request("/v1/usage/quota");
}

/** A sentence a person can act on, for any failure the page shows. */
export function describeFailure(error) {
  if (!(error instanceof ApiFailure)) return `Something went wrong: ${error?.message || error}`;
  switch (error.status) {
    case 401:
      return "The proxy refused the API key (401). Enter the correct key to continue.";
    case 403:
      return `Not allowed (403): ${error.message}`;
    case 413:
      return `Too large (413): ${error.message}`;
    case 429: {
      const wait = error.retryAfter !== null ? ` Try again in ${formatWait(error.retryAfter)}.` : "";
      // The key's own quota, not the pool: no account is at fault and none will free up.
      if (error.code === "key_quota_exceeded") return `Over your key's daily quota (429): ${error.message}${wait}`;
      return `No account can take this right now (429): ${error.message}${wait}`;
    }
    default:
      if (error.status >= 500) return `The proxy could not make the image (${error.status}): ${error.message}`;
      if (error.status >= 400) return `The request was refused (${error.status}): ${error.message}`;
      return error.message;
  }
}

function formatWait(seconds) {
  if (seconds < 90) return `${Math.ceil(seconds)} s`;
  if (seconds < 5400) return `${Math.ceil(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}
