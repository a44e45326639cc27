// `node test/follow.mjs <jobId>`: follow one job with waitForJob (INKQ_URL, INKQ_TOKEN), printing what
// happens as JSON lines ({status}, {retry, code, delayMs}, then {done} or {error}), for a test in
// tests/test_ts_client.py that stops Redis under it.
import { createClient } from "../dist/index.js";

const print = (line) => console.log(JSON.stringify(line));
const client = createClient({
  baseUrl: process.env.INKQ_URL, token: process.env.INKQ_TOKEN,
  retry: { onRetry: (e) => print({ retry: e.request, code: e.error.code, delayMs: Math.round(e.delayMs) }) },
});
try {
  const job = await client.waitForJob(process.argv[2], { pollIntervalMs: 500, onProgress: (j) => print({ status: j.status }) });
  print({ done: job.status });
} catch (err) {
  print({ error: err.code ?? String(err), message: err.message });
  process.exitCode = 1;
}
