// Real faults between the client and the API: a lost answer (a proxy that closes the connection after the
// API answered), limits lowered until the API refuses (429 with Retry-After), event streams refused
// (MAX_STREAMS_PER_USER=0), cut by the server (EVENTS_MAX_S=1) or gone silent (a proxy that stops relaying).
import assert from "node:assert/strict";
import { after, test } from "node:test";

import { createClient } from "../dist/index.js";
import { baseUrl, need, photo, tokenFor } from "./env.mjs";
import { startProxy } from "./proxy.mjs";

const token = tokenFor("net");
const proxies = [];
after(() => Promise.all(proxies.map((p) => p.close())));

async function through(target, settings = {}) {
  const proxy = await startProxy(target);
  proxies.push(proxy);
  const retries = [];
  const client = createClient({ baseUrl: proxy.url, token, ...settings,
                                retry: { minDelayMs: 100, ...settings.retry, onRetry: (e) => retries.push(e) } });
  return { proxy, client, retries };
}

/** An ia-gen job: the fake provider answers it after 2.5 s (tests/test_ts_client.py). */
const slowJob = (client) => client.createJob({ operation: "ia-gen", prompt: "a swallow, fine lines" });

test("createJob whose answer is lost is retried with its Idempotency-Key: one job, not two", async () => {
  const { proxy, client, retries } = await through(baseUrl);
  const before = (await client.listJobs({ limit: 100 })).jobs.length;
  proxy.drop((r) => r.method === "POST" && r.path === "/generate");
  const accepted = await client.createJob({ image: photo, engine: "local" });
  const posts = proxy.requests("POST", "/generate");
  assert.equal(posts.length, 2);
  assert.equal(posts[0].action, "drop");
  assert.equal(posts[0].status, 202, "the API made the job; its answer was lost");
  assert.equal(posts[1].status, 200, "the retry got the same job back");
  assert.match(posts[0].headers["idempotency-key"], /^[0-9a-f]{32}$/);
  assert.equal(posts[1].headers["idempotency-key"], posts[0].headers["idempotency-key"]);
  assert.deepEqual(retries.map((r) => r.error.code), ["network_error"]);
  const jobs = (await client.listJobs({ limit: 100 })).jobs;
  assert.equal(jobs.length, before + 1);
  assert.equal(jobs[0].jobId, accepted.jobId);
  assert.equal((await client.waitForJob(accepted.jobId)).status, "completed");
});

test("cancelJob whose answer is lost resolves with the cancel its first try made", async () => {
  const { proxy, client, retries } = await through(baseUrl);
  const { jobId } = await slowJob(client);
  proxy.drop((r) => r.method === "DELETE");
  assert.deepEqual(await client.cancelJob(jobId), { jobId, status: "canceled" });
  assert.deepEqual(proxy.requests("DELETE", `/jobs/${jobId}`).map((r) => r.status), [200, 409]);
  assert.deepEqual(retries.map((r) => r.error.code), ["network_error"]);
  await assert.rejects(client.cancelJob(jobId), { code: "conflict", status: 409 }, "a real conflict stays one");
});

test("deleteJobData whose answer is lost resolves: the first try erased the job", async () => {
  const { proxy, client, retries } = await through(baseUrl);
  const { jobId } = await slowJob(client);
  proxy.drop((r) => r.method === "DELETE");
  assert.equal(await client.deleteJobData(jobId), undefined);
  assert.deepEqual(proxy.requests("DELETE", `/jobs/${jobId}/data`).map((r) => r.status), [204, 404]);
  assert.deepEqual(retries.map((r) => r.error.code), ["network_error"]);
  await assert.rejects(client.deleteJobData(jobId), { code: "not_found", status: 404 }, "a real 404 stays one");
});

test("429 answers are retried after their Retry-After", async () => {
  // RATE_LIMIT=1/second, READ_RATE_LIMIT=3/second
  const { client, retries } = await through(need("INKQ_URL_LOW_LIMITS"));
  const started = Date.now();
  const ids = [];
  for (let i = 0; i < 2; i++) ids.push((await client.createJob({ image: photo, engine: "local" })).jobId);
  assert.equal(new Set(ids).size, 2);
  assert.ok(Date.now() - started >= 900, "the second submission waited for the window");
  const reads = await Promise.all([client.getCredits(), client.listJobs({ limit: 2 }), client.getCredits(),
                                   client.listJobs({ limit: 2 })]);
  assert.deepEqual(reads[3].jobs.map((j) => j.jobId), ids.toReversed());
  assert.equal(retries[0].request, "POST /generate", "the submission limit was met");
  assert.ok(retries.some((r) => /^GET \/(credits|jobs)/.test(r.request)), "the read limit was met");
  for (const r of retries) {
    assert.equal(r.error.code, "rate_limited");
    assert.equal(r.error.status, 429);
    assert.ok(r.error.retryAfter >= 1 && r.delayMs >= r.error.retryAfter * 1000, JSON.stringify(r));
  }
  const unthrottled = createClient({ baseUrl, token });
  for (const id of ids) await unthrottled.cancelJob(id).catch(() => undefined);
});

test("while the API refuses streams, waitForJob polls; it tries the stream again after its Retry-After", async () => {
  const { proxy, client } = await through(need("INKQ_URL_NO_STREAMS"), { pollIntervalMs: 400 });
  const { jobId } = await client.createJob({ image: photo, engine: "local" });
  const started = Date.now();
  const job = await client.waitForJob(jobId);
  assert.equal(job.status, "completed");
  const streams = proxy.requests("GET", `/status/${jobId}/events`);
  assert.equal(streams[0].status, 429);
  if (Date.now() - started < 10_000) assert.equal(streams.length, 1, "the stream is tried again after Retry-After (10 s)");
  const polls = proxy.requests("GET", `/status/${jobId}`);
  assert.ok(polls.length >= 2, `polled ${polls.length} times`);
  assert.ok(Date.now() - started >= (polls.length - 1) * 400 - 50, "polls are 400 ms apart");
});

test("a stream the server ends before the job does is reopened, and nothing polls", async () => {
  const { proxy, client } = await through(need("INKQ_URL_SHORT_STREAMS"));   // EVENTS_MAX_S=1
  const { jobId } = await slowJob(client);
  const job = await client.waitForJob(jobId);
  assert.equal(job.status, "completed");
  assert.ok(proxy.requests("GET", `/status/${jobId}/events`).length >= 2, "reopened");
  assert.deepEqual(proxy.requests("GET", `/status/${jobId}`), [], "no polls");
});

test("a stream silent past idleTimeoutMs is reopened, and nothing polls", async () => {
  // the API sends a heartbeat every 0.5 s (EVENTS_POLL_S), which the proxy stops relaying
  const { proxy, client } = await through(baseUrl, { idleTimeoutMs: 1500 });
  const { jobId } = await slowJob(client);
  proxy.stall((r) => r.path.endsWith("/events"));
  const job = await client.waitForJob(jobId);
  assert.equal(job.status, "completed");
  const streams = proxy.requests("GET", `/status/${jobId}/events`);
  assert.equal(streams.length, 2);
  assert.equal(streams[0].action, "stall");
  assert.ok(streams[0].closedByClient, "the silent stream was closed by the client");
  assert.deepEqual(proxy.requests("GET", `/status/${jobId}`), [], "no polls");
});

test("without the S3 store, an image over the threshold goes as multipart; /uploads is asked once", async () => {
  const { proxy, client } = await through(baseUrl, { uploadThresholdBytes: 1000 });
  const ids = [];
  for (let i = 0; i < 2; i++) ids.push((await client.createJob({ image: photo, engine: "local" })).jobId);
  assert.deepEqual(proxy.log.map((e) => `${e.method} ${e.path} ${e.status}`),
                   ["POST /uploads 404", "POST /generate 202", "POST /generate 202"]);
  assert.ok(proxy.log[1].bytesIn > photo.length && proxy.log[1].headers["content-type"].startsWith("multipart/"));
  for (const id of ids) await client.cancelJob(id).catch(() => undefined);
});
