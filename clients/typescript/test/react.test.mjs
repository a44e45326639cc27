// useJob in a real React (react-dom's client renderer) over a happy-dom document, against the real API.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Window } from "happy-dom";

import { createClient } from "../dist/index.js";
import { baseUrl, photo, token } from "./env.mjs";

const window = new Window({ url: baseUrl });
globalThis.window = window;
globalThis.document = window.document;
globalThis.navigator ??= window.navigator;   // Node 20 has no navigator; react-dom reads its userAgent

const { createElement } = await import("react");
const { createRoot } = await import("react-dom/client");
const { useJob } = await import("../dist/react.js");

function JobStatus({ client, jobId, log }) {
  const { status, progress, stage, result, error } = useJob(client, jobId);
  log.push({ status, progress });
  return createElement("div", { id: "job", "data-status": status ?? "" },
    createElement("span", { id: "progress" }, String(progress)),
    createElement("span", { id: "stage" }, stage),
    result && createElement("img", { id: "result", src: result.image }),
    error && createElement("p", { id: "error" }, error));
}

async function until(check, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test("useJob follows a job to completed, with no interval in the component", async () => {
  const client = createClient({ baseUrl, token });
  const { jobId } = await client.createJob({ image: photo, engine: "local" });
  const container = document.createElement("div");
  document.body.appendChild(container);
  const root = createRoot(container);
  const log = [];
  root.render(createElement(JobStatus, { client, jobId, log }));
  const job = () => container.querySelector("#job");
  await until(() => job()?.getAttribute("data-status") === "completed", 60_000, "completed");
  assert.equal(container.querySelector("#progress").textContent, "100");
  assert.ok(container.querySelector("#stage").textContent.length > 0);
  assert.match(container.querySelector("#result").getAttribute("src"), /\/files\//);
  assert.equal(container.querySelector("#error"), null);
  const progress = log.map((l) => l.progress);
  assert.deepEqual(progress, [...progress].sort((a, b) => a - b));
  assert.ok(log.some((l) => l.status === "active" || (l.progress > 0 && l.progress < 100)), JSON.stringify(log));
  root.unmount();

  const other = document.createElement("div");
  const unknown = createRoot(other);
  unknown.render(createElement(JobStatus, { client, jobId: "0123456789abcdef0123456789abcdef", log: [] }));
  await until(() => other.querySelector("#error"), 10_000, "an error for an unknown job");
  assert.equal(other.querySelector("#error").textContent, "No such job.");
  assert.equal(other.querySelector("#job").getAttribute("data-status"), "");
  unknown.unmount();
});
