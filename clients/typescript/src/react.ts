/**
 * `useJob(client, jobId)`: a job's live status for a React component, from `@inkq/client/react`.
 *
 * Design decisions (TanStack Query's, for one job):
 * - The state is keyed by `jobId`: a render with a new id never shows the previous job's status.
 * - The effect depends on `client.key`, not on the client object, so a client created in the component
 *   (a new object every render, the same settings) does not restart the stream.
 * - `error` is the job's own failure reason, as in the status object; `requestError` is the `InkqError`
 *   of reading it (code, status), so a lost network is never shown as a failed job. After a transient
 *   error (`InkqError.retryable`) the hook keeps following, with a growing delay; it stops on a final
 *   status, on any other error (401, 404...), and when the component unmounts or the id changes.
 * - Each effect run aborts its own follow on cleanup and ignores what it reads after, so StrictMode's
 *   mount, unmount, mount leaves exactly one follow running.
 * React is a peer dependency of this entry point only.
 */
import { useEffect, useRef, useState } from "react";

import { type CompletedJob, type InkqClient, InkqError, type Job, type JobResult, type JobStatusWord } from "./index.js";
import { backoff, sleep } from "./retry.js";

interface Common {
  progress: number;
  stage: string;
  /** Waiting jobs: 1 = the next to start in its queue; null when unknown. */
  queuePosition: number | null;
  /** Estimated seconds until the result; null when unknown. */
  etaS: number | null;
  /** The job's failure reason (`failed`, `canceled`), as in the status object. */
  error: string | null;
  /** The last error reading the job (no answer, 404, 503...); cleared by the next status read. */
  requestError: InkqError | null;
}

/** What `useJob` returns; `status === "completed"` narrows `result` to the job's result. */
export type JobState = Common & (
  | { status: "completed"; result: JobResult; job: CompletedJob }
  | { status: Exclude<JobStatusWord, "completed"> | null; result: null; job: Job | null });

interface Held {
  /** The jobId and client key this was read for. */
  for: string;
  job: Job | null;
  requestError: InkqError | null;
}

function stateOf({ job, requestError }: Held): JobState {
  const common = { progress: job?.progress ?? 0, stage: job?.stage ?? "", queuePosition: job?.queuePosition ?? null,
                   etaS: job?.etaS ?? null, error: job?.error ?? null, requestError };
  return job?.status === "completed" ? { ...common, status: job.status, result: job.result, job }
    : { ...common, status: job?.status ?? null, result: null, job };
}

function asInkqError(err: unknown): InkqError {
  return err instanceof InkqError ? err
    : new InkqError((err as Error)?.message ?? String(err), "client_error", 0, null, null, { cause: err });
}

/** The live status of `jobId` (nothing to follow while it is null or empty). */
export function useJob(client: InkqClient, jobId: string | null | undefined): JobState {
  const key = jobId ? `${jobId} ${client.key}` : "";
  const [held, setHeld] = useState<Held>({ for: "", job: null, requestError: null });
  const latest = useRef(client);
  useEffect(() => {
    latest.current = client;
  });
  useEffect(() => {
    if (!jobId) return;
    const controller = new AbortController();
    const { signal } = controller;
    const show = (job: Job | null, requestError: InkqError | null) => {
      if (!signal.aborted) setHeld((h) => ({ for: key, job: job ?? (h.for === key ? h.job : null), requestError }));
    };
    (async () => {
      for (let failures = 1; ; failures++) {
        try {
          show(await latest.current.waitForJob(jobId, { signal, onProgress: (job) => show(job, null) }), null);
          return;
        } catch (err) {
          if (signal.aborted) return;
          const error = asInkqError(err);
          show(null, error);
          if (!error.retryable) return;
          const delay = error.retryAfter !== null ? error.retryAfter * 1000
            : backoff(failures, { retries: 0, minDelayMs: 1000, maxDelayMs: 30_000 });
          await sleep(delay, signal).catch(() => undefined);
          if (signal.aborted) return;
        }
      }
    })();
    return () => controller.abort();
  }, [key]);   // the client enters through its key (in `key`), the latest one through `latest`
  return stateOf(held.for === key && key ? held : { for: key, job: null, requestError: null });
}
