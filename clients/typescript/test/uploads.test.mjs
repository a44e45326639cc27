// Large photos with the S3 store (SeaweedFS, from tests/test_ts_client.py): they go from the client
// straight to the bucket, and the API, behind a real proxy that counts the bytes it is sent, gets none of them.
import assert from "node:assert/strict";
import { after, test } from "node:test";

import { createClient } from "../dist/index.js";
import { baseUrl, photo, tokenFor } from "./env.mjs";
import { startProxy } from "./proxy.mjs";

const token = tokenFor("s3");
const proxy = await startProxy(baseUrl);
after(() => proxy.close());
const sent = (from) => proxy.log.slice(from).reduce((sum, e) => sum + e.bytesIn, 0);

test("a photo over the threshold goes to the object store; the API is sent none of its bytes", async () => {
  assert.ok(photo.length > 1024 * 1024, `the photo is ${photo.length} bytes`);
  const client = createClient({ baseUrl: proxy.url, token });
  const from = proxy.log.length;
  const { jobId } = await client.createJob({ image: new Blob([photo]), operation: "color-match", colors: 3 });
  assert.deepEqual(proxy.log.slice(from).map((e) => `${e.method} ${e.path} ${e.status}`),
                   ["POST /uploads 201", "POST /generate 202"]);
  assert.ok(sent(from) < 2048, `the API was sent ${sent(from)} bytes`);
  const job = await client.waitForJob(jobId);
  assert.equal(job.status, "completed", job.error);
  assert.equal((await fetch(job.result.image)).status, 200);
});

test("the same photo under the threshold goes through the API (so the count above can fail)", async () => {
  const client = createClient({ baseUrl: proxy.url, token, uploadThresholdBytes: Infinity });
  const from = proxy.log.length;
  const { jobId } = await client.createJob({ image: photo, operation: "color-match", colors: 3 });
  assert.ok(sent(from) > photo.length, `the API was sent ${sent(from)} bytes`);
  await client.cancelJob(jobId).catch(() => undefined);
});

test("uploadImage alone, then createJob with its upload; a lost answer still makes one job", async () => {
  const client = createClient({ baseUrl: proxy.url, token });
  const upload = await client.uploadImage(photo);
  assert.equal(upload.contentType, "image/jpeg");
  assert.equal(upload.size, photo.length);
  assert.ok(Date.parse(upload.expiresAt) > Date.now());
  const before = (await client.listJobs({ limit: 100 })).jobs.length;
  const from = proxy.log.length;
  proxy.drop((r) => r.method === "POST" && r.path === "/generate");
  const accepted = await client.createJob({ upload: upload.uploadId, operation: "color-match", colors: 2 });
  const posts = proxy.log.slice(from).filter((e) => e.path === "/generate");
  assert.deepEqual(posts.map((e) => e.status), [202, 200], "the retry got the first try's job");
  const { jobs } = await client.listJobs({ limit: 100 });
  assert.equal(jobs.length, before + 1);
  assert.equal(jobs[0].jobId, accepted.jobId);
  assert.equal((await client.waitForJob(accepted.jobId)).status, "completed");
  await assert.rejects(client.uploadImage(new Blob([Buffer.from("GIF89a" + "\0".repeat(64))])),
                       { code: "unsupported_media_type", status: 415 });
});
