// The client's calls against the real API and workers: inputs, results, errors, cancel, signals, idempotency,
// the place in line, the start deadline and erasure.
import assert from "node:assert/strict";
import { test } from "node:test";

import { createClient, InkqError } from "../dist/index.js";
import { baseUrl, need, photo, tokenFor, userFor } from "./env.mjs";

const token = tokenFor("client");
const client = createClient({ baseUrl, token });

test("a Buffer is submitted and followed through the event stream to its result", async () => {
  const accepted = await client.createJob({ image: photo, engine: "local", style: "bold" });
  assert.equal(accepted.status, "waiting");
  assert.equal(accepted.operation, "stencil");
  const seen = [];
  const job = await client.waitForJob(accepted.jobId, { onProgress: (j) => seen.push(j.progress) });
  assert.equal(job.status, "completed");
  assert.deepEqual(seen, [...seen].sort((a, b) => a - b));
  assert.equal(seen.at(-1), 100);
  assert.ok(seen.length >= 2, `progress seen: ${seen}`);
  const image = await fetch(job.result.image);
  assert.equal(image.headers.get("content-type"), "image/png");
  assert.deepEqual([...new Uint8Array(await image.arrayBuffer()).slice(0, 4)], [0x89, 0x50, 0x4e, 0x47]);
});

test("a data URL, a Blob and a File are accepted; the job is listed and read", async () => {
  const dataUrl = `data:image/jpeg;base64,${photo.toString("base64")}`;
  const inputs = [dataUrl, new Blob([photo], { type: "image/jpeg" }), new File([photo], "me.jpg")];
  const ids = [];
  for (const image of inputs) {
    const accepted = await client.createJob({ image, engine: "local", operation: "color-match", colors: 3 });
    assert.equal(accepted.queue, "color-match");
    ids.push(accepted.jobId);
  }
  const bare = await client.createJob(dataUrl);   // the image alone, as the seed sends it
  assert.equal(bare.operation, "stencil");
  ids.push(bare.jobId);
  const listed = await client.listJobs({ limit: 4 });
  assert.deepEqual(new Set(listed.jobs.map((j) => j.jobId)), new Set(ids));
  assert.equal((await client.getJob(ids[0])).jobId, ids[0]);
  const completed = (await client.listJobs({ status: "completed" })).jobs;   // the first test's job at least
  assert.ok(completed.length >= 1 && completed.every((j) => j.status === "completed"));
  assert.equal(typeof (await client.getCredits()).enabled, "boolean");
  for (const id of ids) await client.cancelJob(id).catch(() => undefined);
});

test("errors carry the API's code, status and request id; only transient ones are retried", async () => {
  const retries = [];
  const counting = createClient({ baseUrl, token, retry: { minDelayMs: 20, onRetry: (e) => retries.push(e) } });
  await assert.rejects(counting.getJob("0123456789abcdef0123456789abcdef"), (err) => {
    assert.ok(err instanceof InkqError);
    assert.equal(err.code, "not_found");
    assert.equal(err.status, 404);
    assert.equal(err.retryable, false);
    assert.match(err.requestId, /^[A-Za-z0-9._:-]+$/);
    return true;
  });
  await assert.rejects(createClient({ baseUrl, token: "wrong" }).listJobs(),
                       { name: "InkqError", code: "unauthenticated", status: 401 });
  await assert.rejects(counting.createJob({ image: "not an image", engine: "local" }),
                       { code: "invalid_request", status: 400 });
  await assert.rejects(counting.createJob(new Blob([Buffer.from("GIF89a" + "\0".repeat(64))])),
                       { code: "unsupported_media_type", status: 415 });
  assert.deepEqual(retries, [], "answers that will not change are not retried");

  const nobody = createClient({ baseUrl: "http://127.0.0.1:9", token,
                                retry: { retries: 3, minDelayMs: 40, onRetry: (e) => retries.push(e) } });
  await assert.rejects(nobody.getJob("x"), { code: "network_error", status: 0, retryable: true });
  assert.deepEqual(retries.map((r) => [r.request, r.error.code, r.attempt]),
                   [1, 2, 3].map((n) => ["GET /status/x", "network_error", n]));
  const delays = retries.map((r) => r.delayMs);   // 40, 80, 160 ms, each jittered down to half at most
  delays.forEach((d, i) => assert.ok(d >= 20 * 2 ** i && d <= 40 * 2 ** i, `backoff ${delays}`));
  await assert.rejects(createClient({ baseUrl: "http://127.0.0.1:9", token, retry: false }).getJob("x"),
                       { code: "network_error" });
});

test("cancelJob cancels a waiting job; a second cancel is a conflict", async () => {
  const jobs = [];
  for (let i = 0; i < 4; i++) jobs.push((await client.createJob({ image: photo, engine: "local" })).jobId);
  const last = jobs.at(-1);
  const canceled = await client.cancelJob(last);
  assert.deepEqual(canceled, { jobId: last, status: "canceled" });
  assert.equal((await client.waitForJob(last)).status, "canceled");
  await assert.rejects(client.cancelJob(last), { code: "conflict", status: 409 });
  for (const id of jobs.slice(0, -1)) await client.cancelJob(id).catch(() => undefined);
});

test("every call stops when its signal aborts, waits between retries included", async () => {
  const { jobId } = await client.createJob({ image: photo, engine: "local" });
  const controller = new AbortController();
  const waiting = client.waitForJob(jobId, { signal: controller.signal });
  controller.abort();
  await assert.rejects(waiting, { name: "AbortError" });

  const signal = AbortSignal.abort();
  const calls = [() => client.createJob({ image: photo }, { signal }), () => client.uploadImage(photo, { signal }),
                 () => client.getJob(jobId, { signal }), () => client.waitForJob(jobId, { signal }),
                 () => client.cancelJob(jobId, { signal }), () => client.listJobs({}, { signal }),
                 () => client.getCredits({ signal })];
  for (const call of calls) await assert.rejects(call(), { name: "AbortError" });

  await client.cancelJob(jobId).catch(() => undefined);

  const nobody = createClient({ baseUrl: "http://127.0.0.1:9", token, retry: { minDelayMs: 10_000 } });
  const started = Date.now();
  await assert.rejects(nobody.listJobs({}, { signal: AbortSignal.timeout(300) }), { name: "TimeoutError" });
  assert.ok(Date.now() - started < 2000, "the backoff's sleep ends with the signal");
});

test("the same Idempotency-Key answers the same job", async () => {
  const key = `k-${Date.now()}`;
  const first = await client.createJob({ image: photo, engine: "local", idempotencyKey: key });
  const again = await client.createJob({ image: photo, engine: "local", idempotencyKey: key });
  assert.equal(again.jobId, first.jobId);
  await client.waitForJob(first.jobId);
});

test("a job behind a busy slot says its place in line; maxWaitS cancels it at its deadline", async () => {
  // ia-gen has one slot, and the fake provider answers after 2.5 s: the slot is busy for 5 s
  const busy = [];
  for (const prompt of ["a koi", "a crane"]) busy.push(await client.createJob({ operation: "ia-gen", prompt }));
  assert.ok(busy.every((b) => Number.isInteger(b.queuePosition) && "etaS" in b), JSON.stringify(busy));
  const late = await client.createJob({ operation: "ia-gen", prompt: "a wave", maxWaitS: 1, retentionS: 60 });
  assert.ok(Number.isInteger(late.queuePosition) && late.queuePosition >= 1, JSON.stringify(late));
  assert.ok(late.etaS === null || late.etaS > 0, JSON.stringify(late));
  const seen = [];
  const final = await client.waitForJob(late.jobId, { onProgress: (j) => seen.push(j) });
  assert.ok(seen.some((j) => j.status === "waiting" && j.queuePosition >= 1), JSON.stringify(seen));
  assert.equal(final.status, "canceled");
  assert.match(final.error, /\w/);
  assert.equal(final.attempts, 0, "it never ran");
  assert.deepEqual([final.queuePosition, final.etaS], [null, null]);
  for (const bad of [{ maxWaitS: 0 }, { retentionS: 5 }]) {
    await assert.rejects(client.createJob({ operation: "ia-gen", prompt: "x", ...bad }),
                         { code: "invalid_request", status: 400 }, JSON.stringify(bad));
  }
  for (const { jobId } of busy) await client.cancelJob(jobId).catch(() => undefined);
});

test("deleteJobData erases a job: every call about it answers 404 after, its image link stops working", async () => {
  const { jobId } = await client.createJob({ image: photo, engine: "local" });
  const done = await client.waitForJob(jobId);
  assert.equal((await fetch(done.result.image)).status, 200);
  assert.equal(await client.deleteJobData(jobId), undefined);
  const calls = [() => client.getJob(jobId), () => client.waitForJob(jobId), () => client.cancelJob(jobId),
                 () => client.deleteJobData(jobId)];
  for (const call of calls) await assert.rejects(call(), { code: "not_found", status: 404 });
  assert.notEqual((await fetch(done.result.image)).status, 200);
  assert.ok(!(await client.listJobs({ limit: 100 })).jobs.some((j) => j.jobId === jobId));
  const waiting = await client.createJob({ operation: "ia-gen", prompt: "a moth" });   // not ended: canceled first
  await client.deleteJobData(waiting.jobId);
  await assert.rejects(client.getJob(waiting.jobId), { code: "not_found" });
});

test("deleteUserData is the admin's: a user gets 403, the admin erases all of the user's jobs", async () => {
  const user = createClient({ baseUrl, token: tokenFor("erase") });
  const ids = [];
  for (let i = 0; i < 2; i++) ids.push((await user.createJob({ image: photo, engine: "local" })).jobId);
  await user.waitForJob(ids[1]);
  await assert.rejects(user.deleteUserData(userFor("erase")), { code: "forbidden", status: 403 });
  assert.equal((await user.getJob(ids[0])).jobId, ids[0], "nothing was erased");
  const admin = createClient({ baseUrl, token: need("INKQ_ADMIN_TOKEN") });
  const erased = await admin.deleteUserData(userFor("erase"));
  assert.equal(erased.jobs, 2);
  assert.ok(Number.isInteger(erased.objects) && erased.objects >= 2, JSON.stringify(erased));
  for (const id of ids) await assert.rejects(user.getJob(id), { code: "not_found" });
  assert.deepEqual((await user.listJobs()).jobs, []);
});
