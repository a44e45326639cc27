/**
 * @inkq/client: submit image jobs to an inkq API, follow them, read their results.
 *
 * Design decisions:
 * - No runtime dependency: `fetch`, `FormData`, `Blob` and streams are in browsers and Node >= 20.
 * - Types come from the server's own /openapi.json (openapi-typescript, in ./schema.ts), never
 *   written twice; a test regenerates them and fails when they differ.
 * - `waitForJob` follows `GET /status/{id}/events` through fetch's streaming body (an EventSource
 *   cannot send the Authorization header) and falls back to polling `GET /status/{id}` every 2 s,
 *   as the seed's front end does, when the stream cannot be opened or ends before the job does.
 * - Every non-2xx answer becomes an `InkqError` carrying the API's `code`, the HTTP status, the
 *   request id and `Retry-After`; a failed or canceled job is not an error: it is a final status.
 */
import type { components, operations } from "./schema.js";

export type { components, operations, paths } from "./schema.js";

export type Job = components["schemas"]["JobStatusBody"];
export type JobAccepted = components["schemas"]["JobAccepted"];
export type JobList = components["schemas"]["JobList"];
export type Canceled = components["schemas"]["Canceled"];
export type Credits = components["schemas"]["Credits"];
export type GenerateRequest = components["schemas"]["GenerateRequest"];
export type JobStatusWord = Job["status"];
export type ListJobsQuery = NonNullable<operations["listJobs"]["parameters"]["query"]>;

/** The error codes of the API's contract; `network_error` when no answer came at all. */
export type ErrorCode =
  | "invalid_request" | "unauthenticated" | "insufficient_credits" | "forbidden" | "not_found"
  | "method_not_allowed" | "conflict" | "payload_too_large" | "unsupported_media_type" | "rate_limited"
  | "too_many_jobs" | "unavailable" | "queue_full" | "provider_unavailable" | "storage_unavailable"
  | "internal_error" | "network_error";

export const TERMINAL: readonly JobStatusWord[] = ["completed", "failed", "canceled"];
export const POLL_INTERVAL_MS = 2000;

/** An answer of the API that was not a success, or no answer at all (`network_error`, status 0). */
export class InkqError extends Error {
  readonly code: ErrorCode | (string & {});
  readonly status: number;
  readonly requestId: string | null;
  /** Seconds to wait before trying again, from `Retry-After` (429 and 503). */
  readonly retryAfter: number | null;

  constructor(message: string, code: string, status: number, requestId: string | null = null,
              retryAfter: number | null = null, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "InkqError";
    this.code = code;
    this.status = status;
    this.requestId = requestId;
    this.retryAfter = retryAfter;
  }
}

/** A photo: a File or Blob, bytes (a Node Buffer is a Uint8Array), or a data: URL / base64 string. */
export type ImageInput = Blob | Uint8Array | ArrayBuffer | string;

/** The fields of `POST /generate`, with `image` as any `ImageInput`. */
export type CreateJobInput = Omit<GenerateRequest, "image" | "operation"> & {
  operation?: GenerateRequest["operation"];
  image?: ImageInput;
  /** Sent as the `Idempotency-Key` header: a retry with the same key answers the same job. */
  idempotencyKey?: string;
};

export interface WaitOptions {
  /** Called with every status object that differs from the last one. */
  onProgress?: (job: Job) => void;
  signal?: AbortSignal;
  pollIntervalMs?: number;
}

export interface ClientOptions {
  baseUrl: string;
  /** An API key or a JWT, sent as `Authorization: Bearer <token>`. */
  token?: string | (() => string | Promise<string>);
  fetch?: typeof fetch;
}

export interface InkqClient {
  readonly baseUrl: string;
  createJob(input: CreateJobInput | ImageInput, options?: { signal?: AbortSignal }): Promise<JobAccepted>;
  getJob(id: string, options?: { signal?: AbortSignal }): Promise<Job>;
  waitForJob(id: string, options?: WaitOptions): Promise<Job>;
  cancelJob(id: string): Promise<Canceled>;
  listJobs(query?: ListJobsQuery): Promise<JobList>;
  getCredits(): Promise<Credits>;
}

function isImage(input: unknown): input is ImageInput {
  return typeof input === "string" || input instanceof Blob || input instanceof Uint8Array
    || input instanceof ArrayBuffer;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => { signal?.removeEventListener("abort", onAbort); resolve(); }, ms);
    const onAbort = () => { clearTimeout(timer); reject(signal!.reason); };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** The `data:` lines of each server-sent event in a byte stream, parsed as JSON. */
async function* events(body: ReadableStream<Uint8Array>): AsyncGenerator<Job> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n?/g, "\n");
      let end: number;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(l.startsWith("data: ") ? 6 : 5)).join("\n");
        if (data) yield JSON.parse(data) as Job;
      }
    }
  } finally {
    reader.cancel().catch(() => undefined);
  }
}

/** Build a client for the API at `baseUrl`. */
export function createClient(options: ClientOptions): InkqClient {
  const baseUrl = options.baseUrl.replace(/\/+$/, "");
  const fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);

  async function send(method: string, path: string, init: { body?: BodyInit; headers?: Record<string, string>;
                                                            signal?: AbortSignal } = {}): Promise<Response> {
    const headers: Record<string, string> = { ...init.headers };
    const token = typeof options.token === "function" ? await options.token() : options.token;
    if (token) headers.Authorization = `Bearer ${token}`;
    let response: Response;
    try {
      response = await fetchImpl(baseUrl + path, { method, headers, body: init.body, signal: init.signal });
    } catch (err) {
      if (init.signal?.aborted) throw err;
      throw new InkqError(`Cannot reach ${baseUrl}: ${(err as Error).message}`, "network_error", 0, null, null,
                          { cause: err });
    }
    if (!response.ok) throw await toError(response);
    return response;
  }

  async function call<T>(method: string, path: string, init?: Parameters<typeof send>[2]): Promise<T> {
    return (await send(method, path, init)).json() as Promise<T>;
  }

  async function createJob(input: CreateJobInput | ImageInput, opts: { signal?: AbortSignal } = {}) {
    const { image, idempotencyKey, ...fields } = isImage(input) ? { image: input } as CreateJobInput : input;
    const headers: Record<string, string> = idempotencyKey ? { "Idempotency-Key": idempotencyKey } : {};
    if (image === undefined || typeof image === "string") {
      headers["Content-Type"] = "application/json";
      const body = JSON.stringify(image === undefined ? fields : { ...fields, image });
      return call<JobAccepted>("POST", "/generate", { body, headers, signal: opts.signal });
    }
    const form = new FormData();
    for (const [name, value] of Object.entries(fields)) {
      if (value !== undefined && value !== null) form.append(name, String(value));
    }
    const blob = image instanceof Blob ? image : new Blob([image as Uint8Array<ArrayBuffer> | ArrayBuffer]);
    form.append("image", blob, blob instanceof File ? blob.name : "image");
    return call<JobAccepted>("POST", "/generate", { body: form, headers, signal: opts.signal });
  }

  function getJob(id: string, opts: { signal?: AbortSignal } = {}) {
    return call<Job>("GET", `/status/${encodeURIComponent(id)}`, { signal: opts.signal });
  }

  async function waitForJob(id: string, opts: WaitOptions = {}): Promise<Job> {
    const { onProgress, signal } = opts;
    let last = "";
    const seen = (job: Job) => {
      const key = JSON.stringify(job);
      if (key !== last) {
        last = key;
        onProgress?.(job);
      }
      return TERMINAL.includes(job.status);
    };
    try {
      const response = await send("GET", `/status/${encodeURIComponent(id)}/events`,
                                   { headers: { Accept: "text/event-stream" }, signal });
      if (response.body) {
        for await (const job of events(response.body)) {
          if (seen(job)) return job;
        }
      }
    } catch (err) {
      if (signal?.aborted || (err instanceof InkqError && [401, 403, 404].includes(err.status))) throw err;
    }
    for (;;) {
      const job = await getJob(id, { signal });
      if (seen(job)) return job;
      await sleep(opts.pollIntervalMs ?? POLL_INTERVAL_MS, signal);
    }
  }

  return {
    baseUrl,
    createJob,
    getJob,
    waitForJob,
    cancelJob: (id) => call<Canceled>("DELETE", `/jobs/${encodeURIComponent(id)}`),
    listJobs: (query = {}) => {
      const params = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== undefined)
        .map(([k, v]) => [k, String(v)]));
      const search = params.toString();
      return call<JobList>("GET", search ? `/jobs?${search}` : "/jobs");
    },
    getCredits: () => call<Credits>("GET", "/credits"),
  };
}

async function toError(response: Response): Promise<InkqError> {
  const requestId = response.headers.get("X-Request-ID");
  const retry = response.headers.get("Retry-After");
  let body: { error?: string; code?: string } = {};
  try {
    body = await response.json();
  } catch {
    // not the API's JSON (a proxy's page): the status alone says what happened
  }
  return new InkqError(body.error ?? `HTTP ${response.status}`, body.code ?? `http_${response.status}`,
                       response.status, requestId, retry === null ? null : Number(retry));
}
