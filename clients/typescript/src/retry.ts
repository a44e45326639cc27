/**
 * Retries of transient failures (no answer, 429, 502, 503, 504: `InkqError.retryable`), as fal's client
 * and TanStack Query do: `Retry-After` when the answer gives one, else a capped exponential backoff with
 * jitter, at most `retries` times. A `Retry-After` longer than `maxDelayMs` is not waited for: the error
 * is thrown at once (503 `provider_unavailable` says an hour; no caller wants a promise that sleeps that long).
 */
import { InkqError } from "./errors.js";

export interface RetryOptions {
  /** How many times a failed request is tried again (4; 0 for none). */
  retries?: number;
  /** The first backoff (500 ms); it doubles with each retry, with jitter. */
  minDelayMs?: number;
  /** The longest wait (30 000 ms): the backoff's cap and the longest `Retry-After` honoured. */
  maxDelayMs?: number;
  /** Called before each wait, e.g. to log it. */
  onRetry?: (event: RetryEvent) => void;
}

export interface RetryEvent {
  /** What is tried again, e.g. `GET /status/<id>`. */
  request: string;
  error: InkqError;
  /** 1 for the first retry. */
  attempt: number;
  delayMs: number;
}

export type RetryPolicy = Required<Omit<RetryOptions, "onRetry">> & Pick<RetryOptions, "onRetry">;

export function retryPolicy(options: RetryOptions | false | undefined): RetryPolicy {
  if (options === false) return { retries: 0, minDelayMs: 0, maxDelayMs: 0 };
  return { retries: 4, minDelayMs: 500, maxDelayMs: 30_000, ...options };
}

/** The capped exponential backoff before retry number `attempt` (1, 2...), with equal jitter. */
export function backoff(attempt: number, policy: RetryPolicy): number {
  const ceiling = Math.min(policy.maxDelayMs, policy.minDelayMs * 2 ** (attempt - 1));
  return ceiling / 2 + Math.random() * ceiling / 2;
}

/** How long to wait before retry number `attempt` after `error`; null when it is not to be retried. */
export function retryDelay(error: unknown, attempt: number, policy: RetryPolicy): number | null {
  if (!(error instanceof InkqError) || !error.retryable || attempt > policy.retries) return null;
  if (error.retryAfter === null) return backoff(attempt, policy);
  const asked = error.retryAfter * 1000;
  return asked > policy.maxDelayMs ? null : asked + Math.random() * Math.min(250, asked / 10);
}

/** Resolve after `ms`, or reject with the signal's reason when it aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** `attempt()` until it succeeds, its error is not transient, or the policy's retries are spent. */
export async function retrying<T>(request: string, attempt: () => Promise<T>, policy: RetryPolicy,
                                  signal?: AbortSignal): Promise<T> {
  for (let n = 1; ; n++) {
    try {
      return await attempt();
    } catch (error) {
      const delayMs = signal?.aborted ? null : retryDelay(error, n, policy);
      if (delayMs === null) throw error;
      policy.onRetry?.({ request, error: error as InkqError, attempt: n, delayMs });
      await sleep(delayMs, signal);
    }
  }
}
