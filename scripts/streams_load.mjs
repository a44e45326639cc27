// The read benchmark's client for event streams opened all at once: every `GET /status/<id>/events`
// of the plan is started in the same turn of one Node event loop, at `startAt`, and followed until
// its job's terminal event (or `timeoutS`). Prints, for each stream in order, what tests/streams.py's
// Stream records: opened, connected, answered (status line), firstEvent, ended (epoch seconds),
// httpStatus, error and the last event.
//
// Usage: node scripts/streams_load.mjs PLAN_FILE [PROCESSES]
//   PLAN_FILE: {"host": "127.0.0.1", "port": 8000, "timeoutS": 120, "startAt": <epoch s>,
//               "streams": [[jobId, token], ...]}
//   PROCESSES (default 1): split the streams over that many Node processes (stream i to process i % n),
//   all starting at startAt, as many browsers would; one loop needs about 0.2 s to start 2,000 connects.
//
// Why not Python: one asyncio loop on the box's 2 shared cores needed 0.5-0.9 s of its own to start
// 2,000 connects, and that time was counted in every stream's first event.
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";

const TERMINAL = new Set(["completed", "failed", "canceled"]);
const plan = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const now = () => Date.now() / 1000; // the wall clock, as the jobs' endedAt

function follow([jobId, token]) {
  const seen = { opened: now(), connected: null, answered: null, firstEvent: null, ended: null,
                 httpStatus: null, error: null, last: null };
  return new Promise((resolve) => {
    const socket = net.connect({ host: plan.host, port: plan.port });
    let buffer = "";
    let headersDone = false;
    let data = [];
    const finish = (error) => {
      if (error && !seen.error && !seen.ended) seen.error = error;
      clearTimeout(timer);
      socket.destroy();
      resolve(seen);
    };
    const timer = setTimeout(() => finish("timeout"), plan.timeoutS * 1000);
    socket.setEncoding("utf8");
    socket.on("connect", () => {
      seen.connected = now();
      socket.write(`GET /status/${jobId}/events HTTP/1.0\r\nHost: ${plan.host}:${plan.port}\r\n` +
                   `Authorization: Bearer ${token}\r\nAccept: text/event-stream\r\n\r\n`);
    });
    socket.on("data", (chunk) => {
      buffer += chunk;
      let end;
      while ((end = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, end).replace(/\r$/, "");
        buffer = buffer.slice(end + 1);
        if (seen.answered === null) {
          seen.answered = now();
          seen.httpStatus = Number(line.split(" ")[1]);
          continue;
        }
        if (!headersDone) {
          if (line === "") headersDone = true;
          continue;
        }
        if (line.startsWith("data:")) {
          data.push(line.slice(5).trim());
        } else if (line === "" && data.length) {
          const event = JSON.parse(data.join("\n"));
          data = [];
          const at = now();
          if (seen.firstEvent === null) seen.firstEvent = at;
          seen.last = event;
          if (TERMINAL.has(event.status)) {
            seen.ended = at;
            finish(null);
            return;
          }
        }
      }
    });
    socket.on("error", (err) => finish(`${err.code || "Error"}: ${err.message}`));
    socket.on("close", () => finish(seen.ended ? null : "closed before the job ended"));
  });
}

function runShares(processes) {
  const children = Array.from({ length: processes }, (_, i) => new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [process.argv[1], process.argv[2], "1"],
                        { env: { ...process.env, STREAMS_SHARE: `${i}/${processes}` }, stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (chunk) => { out += chunk; });
    child.on("exit", (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`share ${i} exited ${code}`))));
  }));
  return Promise.all(children).then((shares) => plan.streams.map((_, i) => shares[i % processes][Math.floor(i / processes)]));
}

const processes = Number(process.argv[3] || 1);
if (processes > 1) {
  process.stdout.write(JSON.stringify(await runShares(processes)));
} else {
  const [share, of] = (process.env.STREAMS_SHARE || "0/1").split("/").map(Number);
  const mine = plan.streams.filter((_, i) => i % of === share);
  setTimeout(async () => {
    const results = await Promise.all(mine.map(follow));
    process.stdout.write(JSON.stringify(results));
  }, Math.max(0, plan.startAt * 1000 - Date.now()));
}
