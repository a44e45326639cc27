// useJob in a real React (react-dom's client renderer) over a happy-dom document, against the real API,
// through a real proxy that counts the requests and, for one test, refuses every connection for 2 s.
import assert from "node:assert/strict";
import { after, test } from "node:test";

import { Window } from "happy-dom";

import { createClient, InkqError } from "../dist/index.js";
import { baseUrl, flat, photo, tokenFor, until } from "./env.mjs";
import { startProxy } from "./proxy.mjs";

const window = new Window({ url: baseUrl });
globalThis.window = window;
globalThis.document = window.document;
globalThis.navigator ??= window.navigator;   // Node 20 has no navigator; react-dom reads its userAgent

const { createElement, StrictMode } = await import("react");
const { createRoot } = await import("react-dom/client");
const { useJob } = await import("../dist/react.js");

const token = tokenFor("react");
const roots = [];
const proxies = [];
after(async () => {
  for (const root of roots) root.unmount();
  await Promise.all(proxies.map((p) => p.close()));
});

async function through(settings = {}) {
  const proxy = await startProxy(baseUrl);
  proxies.push(proxy);
  return { proxy, client: createClient({ baseUrl: proxy.url, token, ...settings }) };
}

/** Render `element` in a fresh root; the root, to render again. */
function mount(element) {
  const root = createRoot(document.createElement("div"));
  roots.push(root);
  root.render(element);
  return root;
}

/** Records what useJob returned at every render, with the id it was asked for. */
function Probe({ client, jobId, log }) {
  log.push({ jobId, ...useJob(client, jobId) });
  return null;
}

/** Builds its own client at every render, as a component that does not memoise it would. */
function Recreating({ settings, jobId, log }) {
  log.push({ jobId, ...useJob(createClient(settings), jobId) });
  return null;
}

const ended = (log) => ["completed", "failed", "canceled"].includes(log.at(-1)?.status);
/** An ia-gen job: the fake provider answers it after 2.5 s (tests/test_ts_client.py). */
const slowJob = (client) => client.createJob({ operation: "ia-gen", prompt: "a koi, fine lines" });

test("under StrictMode, useJob follows a job to completed with one live stream and no polling", async () => {
  const { proxy, client } = await through();
  const { jobId } = await client.createJob({ image: photo, engine: "local" });
  const log = [];
  mount(createElement(StrictMode, null, createElement(Probe, { client, jobId, log })));
  await until(() => ended(log), 60_000, "the job to end");
  const last = log.at(-1);
  assert.equal(last.status, "completed");
  assert.equal(last.progress, 100);
  assert.ok(last.stage.length > 0);
  assert.match(last.result.image, /\/files\//);
  assert.equal(last.error, null);
  assert.equal(last.requestError, null);
  const progress = log.map((l) => l.progress);
  assert.deepEqual(progress, [...progress].sort((a, b) => a - b));
  assert.ok(log.some((l) => l.status === "active" || (l.progress > 0 && l.progress < 100)), JSON.stringify(progress));
  const streams = proxy.requests("GET", `/status/${jobId}/events`);
  assert.equal(streams.filter((s) => !s.closedByClient).length, 1, "the first effect's stream was closed");
  assert.deepEqual(proxy.requests("GET", `/status/${jobId}`), []);
});

test("useJob shows a waiting job's place in line and estimate, null once it ends", async () => {
  const { client } = await through();
  const busy = (await slowJob(client)).jobId;   // ia-gen has one slot
  const { jobId } = await slowJob(client);
  const log = [];
  mount(createElement(Probe, { client, jobId, log }));
  await until(() => log.some((l) => l.status === "waiting" && l.queuePosition >= 1), 10_000, "a place in line");
  const waiting = log.find((l) => l.status === "waiting" && l.queuePosition >= 1);
  assert.ok(Number.isInteger(waiting.queuePosition));
  assert.ok(waiting.etaS === null || waiting.etaS > 0, JSON.stringify(waiting.etaS));
  await client.cancelJob(jobId);
  await until(() => ended(log), 10_000, "the cancel to show");
  assert.deepEqual([log.at(-1).status, log.at(-1).queuePosition, log.at(-1).etaS], ["canceled", null, null]);
  await client.cancelJob(busy).catch(() => undefined);
});

test("a new jobId never shows the previous job's status, not even for one render", async () => {
  const { client } = await through();
  const first = (await client.createJob({ image: photo, engine: "local" })).jobId;
  const log = [];
  const root = mount(createElement(Probe, { client, jobId: first, log }));
  await until(() => log.at(-1)?.status === "completed", 60_000, "the first job");
  const second = (await slowJob(client)).jobId;
  root.render(createElement(Probe, { client, jobId: second, log }));
  await until(() => log.at(-1)?.jobId === second && ended(log), 60_000, "the second job");
  const shown = log.filter((l) => l.jobId === second);
  assert.equal(shown[0].status, null);
  assert.equal(shown[0].result, null);
  for (const state of shown) assert.ok(state.job === null || state.job.jobId === second, JSON.stringify(state));
  assert.equal(shown.at(-1).status, "completed");
});

test("an error reading the job is an InkqError in requestError; a failed job is a status with its reason", async () => {
  const { client } = await through();
  const unknown = [];
  mount(createElement(Probe, { client, jobId: "0123456789abcdef0123456789abcdef", log: unknown }));
  await until(() => unknown.at(-1)?.requestError, 10_000, "an error for an unknown job");
  const { requestError, status, error } = unknown.at(-1);
  assert.ok(requestError instanceof InkqError);
  assert.equal(requestError.code, "not_found");
  assert.equal(requestError.status, 404);
  assert.equal(status, null);
  assert.equal(error, null);

  const { jobId } = await client.createJob({ image: flat(), engine: "local" });
  const failing = [];
  mount(createElement(Probe, { client, jobId, log: failing }));
  await until(() => ended(failing), 60_000, "the flat image's job to end");
  assert.equal(failing.at(-1).status, "failed");
  assert.match(failing.at(-1).error, /\w/);
  assert.equal(failing.at(-1).requestError, null);
});

test("useJob keeps following through 2 s without any connection", async () => {
  const { proxy, client } = await through({ retry: { retries: 1, minDelayMs: 100, maxDelayMs: 200 } });
  const { jobId } = await slowJob(client);
  const log = [];
  mount(createElement(Probe, { client, jobId, log }));
  await until(() => log.at(-1)?.status, 10_000, "a first status");
  proxy.blackout(2000);
  await until(() => log.at(-1)?.requestError, 10_000, "the hook to report the lost connection");
  const during = log.at(-1);
  assert.equal(during.requestError.code, "network_error");
  assert.ok(during.status !== null, "the last status read is kept");
  await until(() => ended(log), 30_000, "the job to end");
  assert.equal(log.at(-1).status, "completed");
  assert.equal(log.at(-1).requestError, null);
});

test("a client recreated at every render with the same settings does not restart the stream", async () => {
  const proxy = await startProxy(baseUrl);
  proxies.push(proxy);
  const settings = { baseUrl: proxy.url, token };
  const { jobId } = await slowJob(createClient(settings));
  const log = [];
  const root = mount(createElement(Recreating, { settings: { ...settings }, jobId, log }));
  for (let i = 0; !ended(log); i++) {
    root.render(createElement(Recreating, { settings: { ...settings }, jobId, log }));
    await new Promise((r) => setTimeout(r, 50));
    assert.ok(i < 600, "the job ends within 30 s");
  }
  assert.equal(log.at(-1).status, "completed");
  assert.ok(log.length >= 20, `${log.length} renders`);
  assert.equal(proxy.requests("GET", `/status/${jobId}/events`).length, 1);
  assert.deepEqual(proxy.requests("GET", `/status/${jobId}`), []);
});
