/**
 * @inkq/client: submit image jobs to an inkq API, follow them, read their results.
 *
 * Design decisions:
 * - No runtime dependency: `fetch`, `FormData`, `Blob` and streams are in browsers and Node >= 20.
 * - Types come from the server's own /openapi.json (openapi-typescript, in ./schema.ts); the input of
 *   `createJob` and the job's shape are written over them here, where the generated ones say less than
 *   the API does (every field with a server default is optional; a completed job has a result).
 * - Transient failures (no answer, 429, 502, 503, 504) are retried (./retry.ts). `createJob` sends an
 *   `Idempotency-Key` (its own when the caller gives none), so a retry after a lost answer never makes
 *   a second job. `cancelJob` retried after a lost answer reads the job to tell "already canceled" from a
 *   real conflict.
 * - `waitForJob` follows `GET /status/{id}/events` through fetch's streaming body, reopens it when it
 *   ends before a final status or goes silent past `idleTimeoutMs` (the server sends a heartbeat every
 *   EVENTS_POLL_S, 10 s by default), and polls `GET /status/{id}` only while the stream cannot be had.
 * - Images over `uploadThresholdBytes` go straight to the object store (`uploadImage`: `POST /uploads`,
 *   then the presigned form POST) when the server offers it (S3 store; otherwise `/uploads` is 404 and
 *   the client remembers to send multipart).
 * - Every non-2xx answer becomes an `InkqError`; a failed or canceled job is not an error: it is a final status.
 * - Every status object has `queuePosition` and `etaS`, null when the server leaves them out, so a caller
 *   tests them against null only.
 * - `deleteJobData` retried after a lost answer takes its 404 as done: the first try erased the job.
 */
import { InkqError, networkError, toError } from "./errors.js";
import { events } from "./events.js";
import { byteSize, type ImageInput, isImage, toBlob } from "./images.js";
import { backoff, type RetryOptions, retrying, retryPolicy, sleep } from "./retry.js";
import type { components, operations } from "./schema.js";

export type { components, operations, paths } from "./schema.js";
export { InkqError, type ErrorCode } from "./errors.js";
export type { ImageInput } from "./images.js";
export type { RetryEvent, RetryOptions } from "./retry.js";

type Schemas = components["schemas"];
type StatusBody = Schemas["JobStatusBody"];
export type GenerateRequest = Schemas["GenerateRequest"];
export type Canceled = Schemas["Canceled"];
export type Credits = Schemas["Credits"];
export type JobStatusWord = StatusBody["status"];
export type ListJobsQuery = NonNullable<operations["listJobs"]["parameters"]["query"]>;

/** Where a job stands (null when the server does not know, or does not say: the client fills in null). */
export interface QueueFields {
  /** Waiting jobs: 1 = the next to start in its queue, in the fair order across users; otherwise null. */
  queuePosition: number | null;
  /** Waiting and active jobs: estimated seconds until the result; otherwise null, and null when unknown. */
  etaS: number | null;
}

/** A completed job's result: the image's signed URL (usable in an `<img>` without a token) and more. */
export type JobResult = Schemas["JobResult"] & { image: string };
type JobBase = Omit<StatusBody, "status" | "result"> & QueueFields;
export type CompletedJob = JobBase & { status: "completed"; result: JobResult };
/** A job's status object (`GET /status/{id}`); narrowing on `status === "completed"` gives its `result`. */
export type Job = CompletedJob | (JobBase & { status: Exclude<JobStatusWord, "completed">; result: null });
export type JobAccepted = Schemas["JobAccepted"] & QueueFields;
export type JobList = { jobs: Job[] };
/** What `deleteUserData` erased: the user's jobs, and the objects (inputs, outputs, uploads) deleted with them. */
export type UserErased = { jobs: number; objects: number };

export const TERMINAL: readonly JobStatusWord[] = ["completed", "failed", "canceled"];
export const POLL_INTERVAL_MS = 2000;
export const IDLE_TIMEOUT_MS = 25_000;
export const UPLOAD_THRESHOLD_BYTES = 1024 * 1024;

/** The fields of `POST /generate`, every one optional as the server defaults it, with `image` as any
 * `ImageInput` (required except for `ia-gen`, which needs a `prompt`: the API answers 400 otherwise). */
export type CreateJobInput = { [K in Exclude<keyof GenerateRequest, "image">]?: GenerateRequest[K] } & {
  image?: ImageInput;
  /** A job not started within this many seconds of its submission (1..86400) ends `canceled`, with an
   * `error` saying why: it never runs and is never charged. */
  maxWaitS?: number;
  /** The job, its inputs and outputs are deleted this many seconds after it ends (60 up to the server's
   * `RESULT_TTL_S`). */
  retentionS?: number;
  /** Sent as the `Idempotency-Key` header (one is made when absent): a retry answers the same job. */
  idempotencyKey?: string;
};

export interface RequestOptions {
  /** Aborting it rejects the call with the signal's reason (an `AbortError`), retries and waits included. */
  signal?: AbortSignal;
}

export interface WaitOptions extends RequestOptions {
  /** Called with every status object that differs from the last one. */
  onProgress?: (job: Job) => void;
  /** Between polls, while the event stream cannot be had (the client's setting, 2000 by default). */
  pollIntervalMs?: number;
  /** An event stream silent this long is reopened (the client's setting, 25 000 by default). */
  idleTimeoutMs?: number;
}

/** A direct upload, ready to be submitted as `createJob({ upload: uploadId })`. */
export interface UploadedImage {
  uploadId: string;
  /** When the upload is deleted if no job uses it (ISO 8601). */
  expiresAt: string;
  contentType: string;
  size: number;
}

export interface ClientOptions {
  baseUrl: string;
  /** An API key or a JWT, sent as `Authorization: Bearer <token>`; a function is called before each request. */
  token?: string | (() => string | Promise<string>);
  fetch?: typeof fetch;
  /** Retries of transient failures, or `false` for none. */
  retry?: RetryOptions | false;
  /** `createJob` uploads images larger than this straight to the object store when the server offers it
   * (1 MiB; `Infinity` never, 0 always). */
  uploadThresholdBytes?: number;
  pollIntervalMs?: number;
  idleTimeoutMs?: number;
}

export interface InkqClient {
  readonly baseUrl: string;
  /** The same for two clients made with the same settings (the token enters as a hash): `useJob` keys on it. */
  readonly key: string;
  createJob(input: CreateJobInput | ImageInput, options?: RequestOptions): Promise<JobAccepted>;
  uploadImage(image: ImageInput, options?: RequestOptions): Promise<UploadedImage>;
  getJob(id: string, options?: RequestOptions): Promise<Job>;
  waitForJob(id: string, options?: WaitOptions): Promise<Job>;
  cancelJob(id: string, options?: RequestOptions): Promise<Canceled>;
  listJobs(query?: ListJobsQuery, options?: RequestOptions): Promise<JobList>;
  getCredits(options?: RequestOptions): Promise<Credits>;
  /** Erase a job of one's own now: canceled first if it has not ended, then its record, input, outputs
   * and links are deleted; every call about it answers 404 `not_found` after. */
  deleteJobData(id: string, options?: RequestOptions): Promise<void>;
  /** Admin: erase everything of a user (jobs, uploads, idempotency keys, counters, credit balance). */
  deleteUserData(userId: string, options?: RequestOptions): Promise<UserErased>;
}

interface Send extends RequestOptions {
  body?: BodyInit;
  headers?: Record<string, string>;
}

const IDLE = Symbol("idle");
const FATAL_STATUSES = [401, 403, 404];

/** A short hash of a string (cyrb53), so `key` does not carry the token itself. */
function hash(text: string): string {
  let h1 = 0xdeadbeef, h2 = 0x41c6ce57;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    h1 = Math.imul(h1 ^ c, 2654435761);
    h2 = Math.imul(h2 ^ c, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return (4294967296 * (2097151 & h2) + (h1 >>> 0)).toString(36);
}

/** A status object with `queuePosition` and `etaS` null where the server left them out. */
function placed<T extends object>(body: T): T & QueueFields {
  return { queuePosition: null, etaS: null, ...body };
}

/** A random Idempotency-Key (getRandomValues is there on plain-http pages too, unlike randomUUID). */
function newKey(): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

function json(value: unknown): Send {
  return { body: JSON.stringify(value), headers: { "Content-Type": "application/json" } };
}

/** Build a client for the API at `baseUrl`. */
export function createClient(options: ClientOptions): InkqClient {
  const baseUrl = options.baseUrl.replace(/\/+$/, "");
  const fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
  const policy = retryPolicy(options.retry);
  const threshold = options.uploadThresholdBytes ?? UPLOAD_THRESHOLD_BYTES;
  const tuning = options.retry === false ? false : { ...options.retry, onRetry: undefined };
  const key = [baseUrl, hash(typeof options.token === "string" ? options.token : typeof options.token),
               JSON.stringify([tuning, threshold, options.pollIntervalMs, options.idleTimeoutMs])].join(" ");
  let uploadsOffered: boolean | undefined;

  /** One request; an `InkqError` for anything but a 2xx answer. */
  async function attempt(method: string, path: string, init: Send = {}): Promise<Response> {
    const headers: Record<string, string> = { ...init.headers };
    const token = typeof options.token === "function" ? await options.token() : options.token;
    if (token) headers.Authorization = `Bearer ${token}`;
    let response: Response;
    try {
      response = await fetchImpl(baseUrl + path, { method, headers, body: init.body, signal: init.signal });
    } catch (err) {
      if (init.signal?.aborted) throw err;
      throw networkError(baseUrl, err);
    }
    if (!response.ok) throw await toError(response);
    return response;
  }

  /** A request retried by the policy, its JSON answer. */
  function call<T>(method: string, path: string, init: Send = {}, counted?: () => void): Promise<T> {
    return retrying(`${method} ${path}`, async () => {
      counted?.();
      const response = await attempt(method, path, init);
      return (response.status === 204 ? undefined : response.json()) as Promise<T>;
    }, policy, init.signal);
  }

  /** The presigned form POST of `POST /uploads`, straight to the object store. */
  async function store(form: Schemas["UploadCreated"], blob: Blob, signal?: AbortSignal): Promise<void> {
    const body = new FormData();
    for (const [name, value] of Object.entries(form.fields)) body.append(name, value);
    body.append("file", blob);
    let response: Response;
    try {
      response = await fetchImpl(form.url, { method: "POST", body, signal });
    } catch (err) {
      if (signal?.aborted) throw err;
      throw networkError(new URL(form.url).origin, err);
    }
    if (response.ok) return;
    const text = await response.text().catch(() => "");
    const code = /<Code>([^<]*)<\/Code>/.exec(text)?.[1];
    const message = /<Message>([^<]*)<\/Message>/.exec(text)?.[1] ?? code ?? `HTTP ${response.status}`;
    throw new InkqError(`The image store refused the upload: ${message}`,
                        code === "EntityTooLarge" ? "payload_too_large"
                          : response.status >= 500 ? "storage_unavailable" : "invalid_request", response.status);
  }

  /** `POST /uploads`, then the image straight to the object store. */
  async function upload(blob: Blob, signal?: AbortSignal): Promise<UploadedImage> {
    const contentType = blob.type || "application/octet-stream";   // the API names what it accepts (415)
    const form = await call<Schemas["UploadCreated"]>("POST", "/uploads", { ...json({ contentType }), signal });
    await retrying(`POST ${form.url}`, () => store(form, blob, signal), policy, signal);
    return { uploadId: form.uploadId, expiresAt: form.expiresAt, contentType, size: blob.size };
  }

  /** `{ upload: id }` for an image worth uploading when the server offers it; null to send the image itself. */
  async function uploaded(image: ImageInput, signal?: AbortSignal): Promise<{ upload: string } | null> {
    if (uploadsOffered === false || byteSize(image) <= threshold) return null;
    const blob = await toBlob(image);
    if (!blob.type) return null;   // not an image the API takes: let its answer say so
    try {
      const { uploadId } = await upload(blob, signal);
      uploadsOffered = true;
      return { upload: uploadId };
    } catch (err) {
      if (!(err instanceof InkqError && err.code === "not_found")) throw err;
      uploadsOffered = false;   // the Redis store: /uploads is 404
      return null;
    }
  }

  async function createJob(input: CreateJobInput | ImageInput, opts: RequestOptions = {}): Promise<JobAccepted> {
    const { image, idempotencyKey, ...fields } = isImage(input) ? { image: input } as CreateJobInput : input;
    const headers = { "Idempotency-Key": idempotencyKey ?? newKey() };
    const send = async (init: Send) => placed(await call<JobAccepted>("POST", "/generate",
                                                   { ...init, headers: { ...init.headers, ...headers },
                                                     signal: opts.signal }));
    const stored = image === undefined ? null : await uploaded(image, opts.signal);
    if (stored) return send(json({ ...fields, ...stored }));
    if (image === undefined || typeof image === "string") return send(json({ ...fields, image }));
    const form = new FormData();
    for (const [name, value] of Object.entries(fields)) {
      if (value !== undefined && value !== null) form.append(name, String(value));
    }
    const blob = image instanceof Blob ? image : new Blob([image as Uint8Array<ArrayBuffer> | ArrayBuffer]);
    form.append("image", blob, blob instanceof File ? blob.name : "image");
    return send({ body: form });
  }

  async function getJob(id: string, opts: RequestOptions = {}): Promise<Job> {
    return placed(await call<Job>("GET", `/status/${encodeURIComponent(id)}`, { signal: opts.signal }));
  }

  /** Read one event stream of the job: its final status, or null when the stream ended or went silent first. */
  async function follow(id: string, seen: (job: Job) => boolean, idleMs: number,
                        signal?: AbortSignal): Promise<Job | null> {
    const controller = new AbortController();
    const stop = () => controller.abort(signal!.reason);
    signal?.addEventListener("abort", stop, { once: true });
    if (signal?.aborted) stop();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => controller.abort(IDLE), idleMs);
    };
    try {
      arm();
      const response = await attempt("GET", `/status/${encodeURIComponent(id)}/events`,
                                     { headers: { Accept: "text/event-stream" }, signal: controller.signal });
      for await (const body of events<Job>(response.body!, arm)) {
        const job = placed(body);
        if (seen(job)) return job;
      }
      return null;
    } catch (err) {
      if (controller.signal.reason === IDLE) return null;
      throw err;
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", stop);
    }
  }

  async function waitForJob(id: string, opts: WaitOptions = {}): Promise<Job> {
    const { onProgress, signal } = opts;
    const pollMs = opts.pollIntervalMs ?? options.pollIntervalMs ?? POLL_INTERVAL_MS;
    const idleMs = opts.idleTimeoutMs ?? options.idleTimeoutMs ?? IDLE_TIMEOUT_MS;
    let last = "";
    const seen = (job: Job) => {
      const text = JSON.stringify(job);
      if (text !== last) {
        last = text;
        onProgress?.(job);
      }
      return TERMINAL.includes(job.status);
    };
    let failures = 0;   // streams in a row that failed or ended within a second
    let streamAt = 0;   // when to try the stream again
    for (;;) {
      if (Date.now() >= streamAt) {
        const opened = Date.now();
        let retryAfter: number | null = null;
        try {
          const job = await follow(id, seen, idleMs, signal);
          if (job) return job;
        } catch (err) {
          if (signal?.aborted || (err instanceof InkqError && FATAL_STATUSES.includes(err.status))) throw err;
          retryAfter = err instanceof InkqError ? err.retryAfter : null;
        }
        if (retryAfter === null && Date.now() - opened >= 1000) {
          failures = 0;   // it lived (ended at the server's EVENTS_MAX_S, or went silent): reopen now
          continue;
        }
        failures++;
        streamAt = Date.now() + (retryAfter !== null ? retryAfter * 1000
          : backoff(failures, { retries: 0, minDelayMs: 1000, maxDelayMs: 30_000 }));
      }
      const job = await getJob(id, { signal });
      if (seen(job)) return job;
      await sleep(Math.max(0, Math.min(pollMs, streamAt - Date.now())), signal);
    }
  }

  async function cancelJob(id: string, opts: RequestOptions = {}): Promise<Canceled> {
    let tries = 0;
    try {
      return await call<Canceled>("DELETE", `/jobs/${encodeURIComponent(id)}`, { signal: opts.signal },
                                  () => tries++);
    } catch (err) {
      // a retry of a cancel whose answer was lost finds the job ended: canceled by that first try?
      if (tries > 1 && err instanceof InkqError && err.code === "conflict"
          && (await getJob(id, opts)).status === "canceled") {
        return { jobId: id, status: "canceled" };
      }
      throw err;
    }
  }

  async function listJobs(query: ListJobsQuery = {}, opts: RequestOptions = {}): Promise<JobList> {
    const params = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== undefined)
      .map(([k, v]) => [k, String(v)]));
    const search = params.toString();
    const { jobs } = await call<JobList>("GET", search ? `/jobs?${search}` : "/jobs", { signal: opts.signal });
    return { jobs: jobs.map(placed) };
  }

  async function deleteJobData(id: string, opts: RequestOptions = {}): Promise<void> {
    let tries = 0;
    try {
      await call<void>("DELETE", `/jobs/${encodeURIComponent(id)}/data`, { signal: opts.signal }, () => tries++);
    } catch (err) {
      // a retry of an erasure whose answer was lost finds the job gone: erased by that first try
      if (!(tries > 1 && err instanceof InkqError && err.code === "not_found")) throw err;
    }
  }

  return {
    baseUrl,
    key,
    createJob,
    uploadImage: async (image, opts = {}) => upload(await toBlob(image), opts.signal),
    getJob,
    waitForJob,
    cancelJob,
    listJobs,
    getCredits: (opts = {}) => call<Credits>("GET", "/credits", { signal: opts.signal }),
    deleteJobData,
    deleteUserData: (userId, opts = {}) => call<UserErased>("DELETE", `/admin/users/${encodeURIComponent(userId)}/data`,
                                                            { signal: opts.signal }),
  };
}
