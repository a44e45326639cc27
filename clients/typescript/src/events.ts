/** Server-sent events read from fetch's streaming body (an `EventSource` cannot send the Authorization header). */

/**
 * The `data` of each event in a text/event-stream, parsed as JSON. `onChunk` is called for every chunk
 * received, comments (the server's heartbeats) included, so a caller can tell a live stream from a silent one.
 */
export async function* events<T>(body: ReadableStream<Uint8Array>, onChunk: () => void): AsyncGenerator<T> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      onChunk();
      buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n?/g, "\n");
      let end: number;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5)).join("\n");
        if (data) yield JSON.parse(data) as T;
      }
    }
  } finally {
    reader.cancel().catch(() => undefined);
  }
}
