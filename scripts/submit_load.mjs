// The benchmarks' load client for submissions: one POST /generate per token, CONCURRENCY kept-alive
// connections at once, the same JSON body each time. Prints a JSON array of
// [jobId, startedAtMs, ms, etaS, queuePosition] (the last two as the 202 gave them).
//
// Usage: node scripts/submit_load.mjs URL TOKENS_FILE BODY_FILE CONCURRENCY
//
// Why not Python: a client of 32 threads on the box's 2 cores measures its own GIL. Each response waits
// for the interpreter behind the other threads (and behind a fake provider in the same process), and the
// requests library costs about as much CPU per request as the API does. One Node event loop costs a
// fraction of that, so the figures say more about the API.
import fs from "node:fs";
import http from "node:http";

const [url, tokensFile, bodyFile, concurrencyText] = process.argv.slice(2);
const tokens = fs.readFileSync(tokensFile, "utf8").split("\n").filter(Boolean);
const body = fs.readFileSync(bodyFile);
const concurrency = Number(concurrencyText);
const target = new URL("/generate", url);
const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
const rows = [];
let next = 0;

function submit(token) {
  return new Promise((resolve, reject) => {
    const startedAt = Date.now();
    const started = process.hrtime.bigint();
    const request = http.request(
      {
        hostname: target.hostname, port: target.port, path: target.pathname, method: "POST", agent,
        headers: { "content-type": "application/json", "content-length": body.length, authorization: `Bearer ${token}` },
      },
      (response) => {
        const chunks = [];
        response.on("data", (chunk) => chunks.push(chunk));
        response.on("end", () => {
          const ms = Number(process.hrtime.bigint() - started) / 1e6;
          const text = Buffer.concat(chunks).toString();
          if (response.statusCode !== 202) {
            reject(new Error(`POST /generate answered ${response.statusCode}: ${text}`));
            return;
          }
          const answer = JSON.parse(text);
          rows.push([answer.jobId, startedAt, ms, answer.etaS ?? null, answer.queuePosition ?? null]);
          resolve();
        });
      },
    );
    request.on("error", reject);
    request.end(body);
  });
}

async function lane() {
  while (next < tokens.length) {
    await submit(tokens[next++]);
  }
}

await Promise.all(Array.from({ length: concurrency }, lane));
agent.destroy();
process.stdout.write(JSON.stringify(rows));
