/** `InkqError`: every answer of the API that is not a success, and every request that got no answer. */

/** The error codes of the API's contract; `network_error` when no answer came at all. */
export type ErrorCode =
  | "invalid_request" | "unauthenticated" | "insufficient_credits" | "forbidden" | "not_found"
  | "method_not_allowed" | "conflict" | "payload_too_large" | "unsupported_media_type" | "rate_limited"
  | "too_many_jobs" | "unavailable" | "queue_full" | "provider_unavailable" | "storage_unavailable"
  | "internal_error" | "network_error";

/** HTTP statuses worth another try: the request was not served, and may be later. */
const TRANSIENT_STATUSES = [429, 502, 503, 504];

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

  /** True when the same request may succeed later: no answer, 429, 502, 503, 504, or a 409 with
   * Retry-After (an `Idempotency-Key` whose first request is still being stored). */
  get retryable(): boolean {
    return this.status === 0 || TRANSIENT_STATUSES.includes(this.status)
      || (this.status === 409 && this.retryAfter !== null);
  }
}

/** The `InkqError` for a non-2xx answer of the API (its JSON body, or the status alone for a proxy's page). */
export async function toError(response: Response): Promise<InkqError> {
  const requestId = response.headers.get("X-Request-ID");
  const retry = retryAfterSeconds(response.headers.get("Retry-After"));
  let body: { error?: string; code?: string } = {};
  try {
    body = await response.json();
  } catch {
    // not the API's JSON (a proxy's page): the status alone says what happened
  }
  return new InkqError(body.error ?? `HTTP ${response.status}`, body.code ?? `http_${response.status}`,
                       response.status, requestId, retry);
}

/** `Retry-After` in seconds: a number of seconds, or an HTTP date. */
function retryAfterSeconds(value: string | null): number | null {
  if (!value) return null;
  const seconds = /^\s*\d+(\.\d+)?\s*$/.test(value) ? Number(value) : (Date.parse(value) - Date.now()) / 1000;
  return Number.isFinite(seconds) ? Math.max(0, seconds) : null;
}

/** The `InkqError` for a request that got no answer (the `cause` is fetch's error). */
export function networkError(where: string, cause: unknown): InkqError {
  return new InkqError(`Cannot reach ${where}: ${(cause as Error)?.message ?? cause}`, "network_error", 0, null, null,
                       { cause });
}
