/**
 * `useJob(client, jobId)`: a job's live status for a React component, from `@inkq/client/react`.
 *
 * It follows the job with `client.waitForJob` (the event stream, or polling every 2 s where that
 * fails), so a component needs no interval of its own; it stops following when the component
 * unmounts or `jobId` changes. React is a peer dependency of this entry point only.
 */
import { useEffect, useState } from "react";

import type { InkqClient, Job, JobStatusWord } from "./index.js";

export interface JobState {
  /** null until the first status arrives, or when there is no job id. */
  status: JobStatusWord | null;
  progress: number;
  stage: string;
  result: Job["result"];
  /** The job's failure reason, or the message of an error reading it. */
  error: string | null;
  job: Job | null;
}

const EMPTY: JobState = { status: null, progress: 0, stage: "", result: null, error: null, job: null };

function stateOf(job: Job): JobState {
  return { status: job.status, progress: job.progress, stage: job.stage, result: job.result, error: job.error, job };
}

/** The live status of `jobId` (nothing to follow while it is null or empty). */
export function useJob(client: InkqClient, jobId: string | null | undefined): JobState {
  const [state, setState] = useState<JobState>(EMPTY);
  useEffect(() => {
    setState(EMPTY);
    if (!jobId) return;
    const controller = new AbortController();
    client.waitForJob(jobId, { signal: controller.signal, onProgress: (job) => setState(stateOf(job)) })
      .then((job) => setState(stateOf(job)))
      .catch((err: unknown) => {
        if (!controller.signal.aborted) setState((s) => ({ ...s, error: (err as Error).message ?? String(err) }));
      });
    return () => controller.abort();
  }, [client, jobId]);
  return state;
}
