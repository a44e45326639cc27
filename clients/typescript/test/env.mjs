// What the tests talk to: the API and workers started by tests/test_ts_client.py (INKQ_URL, INKQ_TOKEN),
// and a photo it wrote (INKQ_PHOTO).
import { readFileSync } from "node:fs";

for (const name of ["INKQ_URL", "INKQ_TOKEN", "INKQ_PHOTO"]) {
  if (!process.env[name]) throw new Error(`${name} is not set: run these tests through pytest tests/test_ts_client.py`);
}
export const baseUrl = process.env.INKQ_URL;
export const token = process.env.INKQ_TOKEN;
export const photo = readFileSync(process.env.INKQ_PHOTO);
