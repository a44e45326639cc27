// A typed app that calls every function of @inkq/client and its hook as the README shows them.
// tests/test_ts_client.py compiles it with `tsc --noEmit --strict` against the package `npm pack` builds,
// as an app that installed it would, so a change of the API's schema that breaks callers fails the suite.
import { createClient, type CreateJobInput, InkqError, type Job, type RetryEvent, type UserErased } from "@inkq/client";
import { type JobState, useJob } from "@inkq/client/react";

const inkq = createClient({
  baseUrl: "https://inkq.example.com",
  token: async () => "a JWT from the session",
  retry: { retries: 6, maxDelayMs: 10_000, onRetry: (e: RetryEvent) => console.warn(e.request, e.error.code, e.delayMs) },
  uploadThresholdBytes: 512 * 1024,
});

export async function everything(file: File, dataUrl: string, bytes: Uint8Array, signal: AbortSignal) {
  await inkq.createJob(file);
  await inkq.createJob(dataUrl);
  await inkq.createJob({ image: file });
  await inkq.createJob({ image: file, style: "bold" });
  await inkq.createJob({ operation: "color-match", image: dataUrl, colors: 5 });
  await inkq.createJob({ operation: "ia-gen", prompt: "a swallow with a banner" });
  await inkq.createJob({ operation: "ia-gen", prompt: "the same, in fine lines", image: bytes, engine: "gemini" });
  const input: CreateJobInput = { image: bytes.buffer as ArrayBuffer, format: "svg", transparent: true, lineWeight: 1.5,
                                  engine: "local", webhookUrl: "https://example.com/hook", idempotencyKey: "order-42",
                                  maxWaitS: 120, retentionS: 3600 };
  await inkq.createJob(input, { signal });

  const { uploadId, expiresAt } = await inkq.uploadImage(file, { signal });
  const accepted = await inkq.createJob({ operation: "enhance", upload: uploadId });
  const position: number | null = accepted.queuePosition;
  const eta: number | null = accepted.etaS;
  console.log(expiresAt, position, eta, accepted.statusUrl);

  const job: Job = await inkq.getJob(accepted.jobId, { signal });
  if (job.status === "completed") {
    const url: string = job.result.image;
    const svg: string | null = job.result.svg;
    console.log(url, svg, job.result.palette?.map((ink) => `${ink.name} ${ink.coverage}`));
  } else {
    const reason: string | null = job.error;
    console.log(reason, job.progress, job.stage, job.etaS);
  }

  const final = await inkq.waitForJob(accepted.jobId, {
    signal, pollIntervalMs: 1000, idleTimeoutMs: 30_000,
    onProgress: (j) => console.log(`${j.progress}% ${j.stage}`),
  });
  if (final.status !== "completed") throw new Error(final.error ?? final.status);

  try {
    const canceled = await inkq.cancelJob(final.jobId, { signal });
    console.log(canceled.status === "canceled");
  } catch (err) {
    if (!(err instanceof InkqError)) throw err;
    const { code, status, requestId, retryAfter, retryable } = err;
    if (code === "conflict") console.log("already ended", status, requestId, retryAfter, retryable);
  }

  const { jobs } = await inkq.listJobs({ limit: 10, status: "completed" }, { signal });
  const images: string[] = jobs.flatMap((j) => (j.status === "completed" ? [j.result.image] : []));
  await inkq.deleteJobData(final.jobId, { signal });
  const erased: UserErased = await inkq.deleteUserData("user-42", { signal });
  console.log(`${erased.jobs} jobs, ${erased.objects} objects`);
  const { balance, enabled } = await inkq.getCredits({ signal });
  return { images, balance: enabled ? balance : null };
}

export function JobCard({ jobId }: { jobId: string | null }) {
  const state: JobState = useJob(inkq, jobId);
  const { status, progress, stage, result, error, requestError, queuePosition, etaS } = state;
  if (requestError) return <p role="alert">{requestError.code} ({requestError.status}): {requestError.message}</p>;
  if (status === "completed") return <img src={result.image} alt="stencil" />;
  if (status === "failed" || status === "canceled") return <p>{status}: {error}</p>;
  if (status === "waiting" && queuePosition !== null) return <p>#{queuePosition} in line, about {etaS ?? "?"} s</p>;
  if (status === "active" && etaS !== null) return <progress value={progress} max={100}>{Math.round(etaS)} s left</progress>;
  return <progress value={progress} max={100}>{stage}</progress>;
}

/** A client made at every render, as a component without useMemo has it: useJob keys on its settings. */
export function Inline({ jobId, token }: { jobId: string; token: string }) {
  const client = createClient({ baseUrl: "https://inkq.example.com", token });
  const { status, job } = useJob(client, jobId);
  return <span title={job?.createdAt ?? ""}>{status ?? "…"}</span>;
}
