// What the tests talk to, from tests/test_ts_client.py: the APIs it started on real workers, each with
// the settings a test needs (INKQ_URL*), one user per test file (INKQ_TOKEN-<file>), and images it wrote.
import { readFileSync } from "node:fs";

/** An environment variable the test needs; run through pytest to get them all. */
export function need(name) {
  if (!process.env[name]) throw new Error(`${name} is not set: run these tests through pytest tests/test_ts_client.py`);
  return process.env[name];
}

/** The API key of this test file's own user. */
export const tokenFor = (file) => `${need("INKQ_TOKEN")}-${file}`;
/** The user id of `tokenFor(file)`. */
export const userFor = (file) => `${need("INKQ_USER")}${file}`;
export const baseUrl = need("INKQ_URL");
export const photo = readFileSync(need("INKQ_PHOTO"));
/** A flat image: every operation fails on it (no colour, no lines). */
export const flat = () => readFileSync(need("INKQ_FLAT"));

/** Resolve once `check()` is truthy (polled every 20 ms); reject after `timeoutMs`. */
export async function until(check, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
