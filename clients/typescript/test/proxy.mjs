// A real HTTP proxy in front of the API, for the faults a network makes: an answer lost after the API
// acted on the request, a stream that goes silent, every connection refused for a while. It logs what
// passed (method, path, request bytes, status) so a test can count requests and bytes.
import http from "node:http";

/**
 * Start a proxy to `target` on a free port of 127.0.0.1.
 * - `proxy.url`: where the client goes instead of the API.
 * - `proxy.log`: one entry per request: {method, path, headers, bytesIn, status, action, closedByClient}.
 * - `proxy.drop(match, times)`: the next `times` requests matching are forwarded and fully answered by the
 *   API, then their connection is closed without the answer.
 * - `proxy.stall(match, times)`: the answer's headers and first chunk are relayed, then nothing more,
 *   the connection kept open (a stream gone silent).
 * - `proxy.blackout(ms)`: every open connection is closed now and every new one for `ms`.
 */
export async function startProxy(target) {
  const upstream = new URL(target);
  const log = [];
  const rules = [];
  const sockets = new Set();
  let darkUntil = 0;

  const server = http.createServer((req, res) => {
    const entry = { method: req.method, path: req.url, headers: req.headers, bytesIn: 0, status: null,
                    action: null, closedByClient: false };
    log.push(entry);
    if (Date.now() < darkUntil) {
      entry.action = "blackout";
      req.socket.destroy();
      return;
    }
    const rule = rules.find((r) => r.times > 0 && r.match(entry));
    if (rule) {
      rule.times--;
      entry.action = rule.action;
    }
    const out = http.request({ host: upstream.hostname, port: upstream.port, method: req.method, path: req.url,
                               headers: req.headers, agent: false }, (answer) => {
      entry.status = answer.statusCode;
      if (entry.action === "drop") {
        answer.resume();
        answer.on("end", () => req.socket.destroy());
        return;
      }
      res.writeHead(answer.statusCode, answer.headers);
      if (entry.action === "stall") {
        answer.once("data", (chunk) => {
          res.write(chunk);
          answer.pause();
        });
        return;
      }
      answer.pipe(res);
    });
    out.on("error", () => req.socket.destroy());
    req.on("data", (chunk) => { entry.bytesIn += chunk.length; });
    req.pipe(out);
    res.on("close", () => {
      if (!res.writableFinished) {
        entry.closedByClient = entry.action !== "drop";
        out.destroy();
      }
    });
  });
  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));

  return {
    url: `http://127.0.0.1:${server.address().port}`,
    log,
    drop(match, times = 1) {
      rules.push({ match, times, action: "drop" });
    },
    stall(match, times = 1) {
      rules.push({ match, times, action: "stall" });
    },
    blackout(ms) {
      darkUntil = Date.now() + ms;
      for (const socket of sockets) socket.destroy();
    },
    /** The log entries of requests whose method and path match (path: a string it ends with, or a RegExp). */
    requests(method, path) {
      return log.filter((e) => e.method === method
        && (typeof path === "string" ? e.path.split("?")[0].endsWith(path) : path.test(e.path)));
    },
    close() {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}
