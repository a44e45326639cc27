"""Browsers on other origins (`CORS_ORIGINS`, api/cors.py): the headers over plain HTTP on every kind
of path, the status fast path included, and a page on another origin in a real Chromium."""
from __future__ import annotations

import base64
import os
import uuid

import pytest

from api import ConfigError, create_app
from tests.conftest import base_config, drawing, photo
from tests.servers import page_server

APP = "http://127.0.0.1:3999"
OTHER = "https://evil.example"
PREFLIGHT = {"Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization,content-type,idempotency-key,x-request-id"}


def _preflight(api, path, origin=APP, method="POST"):
    return api.call("OPTIONS", path, token=None,
                    headers={**PREFLIGHT, "Origin": origin, "Access-Control-Request-Method": method})


def _vary(response) -> list[str]:
    return [v.strip().lower() for v in response.headers.get("Vary", "").split(",")]


@pytest.fixture
def cors_api(make_api):
    return make_api(CORS_ORIGINS=f"{APP}/, https://app.example.com")


@pytest.mark.parametrize("path,method", [
    ("/generate", "POST"), ("/status/abc123", "GET"), ("/status/abc123/events", "GET"),
    ("/result/abc123", "GET"), ("/jobs", "GET"), ("/jobs/abc123", "DELETE"), ("/jobs/abc123/data", "DELETE"),
    ("/credits", "GET"), ("/uploads", "POST")])
def test_preflight_on_job_paths(cors_api, path, method):
    response = _preflight(cors_api, path, method=method)
    assert response.status_code == 204, response.text
    h = response.headers
    assert h["Access-Control-Allow-Origin"] == APP
    assert method in h["Access-Control-Allow-Methods"]
    assert {x.strip().lower() for x in h["Access-Control-Allow-Headers"].split(",")} == {
        "authorization", "content-type", "idempotency-key", "x-request-id"}
    assert "Access-Control-Allow-Credentials" not in h
    assert "origin" in _vary(response) and h["X-Request-ID"]


def test_actual_requests_carry_the_headers_fast_path_included(cors_api, workers):
    headers = {"Origin": APP}
    body = {"image": base64.b64encode(drawing((96, 96))).decode(), "engine": "local"}
    submitted = cors_api.post("/generate", json=body, headers=headers)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["jobId"]
    for response in (submitted, cors_api.get(f"/status/{job_id}", headers=headers),   # the fast path
                     cors_api.get("/status/0123456789abcdef", headers=headers),       # Flask's 404
                     cors_api.get("/jobs", headers=headers), cors_api.get("/credits", headers=headers),
                     cors_api.get("/credits", token=None, headers=headers)):          # a 401
        h = response.headers
        assert h["Access-Control-Allow-Origin"] == APP, (response.url, response.status_code)
        assert {x.strip() for x in h["Access-Control-Expose-Headers"].split(",")} == {
            "X-Request-ID", "Retry-After", "Location"}
        assert "origin" in _vary(response)
    cors_api.wait(job_id)


@pytest.mark.parametrize("path", ["/admin/queue-stats", "/admin/rq/", "/admin/users/abc/data", "/metrics", "/healthz",
                                  "/openapi.json"])
def test_no_cors_outside_the_job_paths(cors_api, path):
    preflight = _preflight(cors_api, path, method="GET")
    assert "Access-Control-Allow-Origin" not in preflight.headers
    response = cors_api.get(path, token=None, headers={"Origin": APP})
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "origin" in _vary(response)


def test_origin_not_listed_gets_nothing(cors_api):
    for origin in (OTHER, "http://127.0.0.1:4000", "null", APP + "/"):
        assert "Access-Control-Allow-Origin" not in _preflight(cors_api, "/generate", origin).headers
        assert "Access-Control-Allow-Origin" not in cors_api.get("/jobs", headers={"Origin": origin}).headers


def test_default_is_today(api):
    response = _preflight(api, "/generate")
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Origin" not in api.get("/jobs", headers={"Origin": APP}).headers
    assert "origin" not in _vary(api.get("/jobs"))


@pytest.mark.parametrize("value", ["*", "app.example.com", "https://app.example.com/path"])
def test_bad_origins_refused_at_start(redis_url, value):
    with pytest.raises(ConfigError, match="CORS_ORIGINS"):
        create_app(base_config(redis_url, CORS_ORIGINS=value))


# A front end on its own origin: it submits the chosen photo as a data URL with a JSON body (so the
# browser sends a preflight), follows the event stream through fetch's streaming body reader, and shows
# progress and the result.
PAGE = """<!doctype html><meta charset=utf-8><title>front end</title>
<input id=file type=file><progress id=bar max=100 value=0></progress><span id=stage></span>
<img id=out alt=result><pre id=error></pre><pre id=status></pre>
<script>
const api = new URLSearchParams(location.search).get('api');
const token = new URLSearchParams(location.search).get('token');
window.seen = []; window.headers = {};
// A front end that edits the stencil draws it on a canvas and reads its pixels: that needs a CORS image.
function readPixels(url) {
  return new Promise(ok => {
    const img = new Image(); img.crossOrigin = 'anonymous';
    img.onload = () => {
      const canvas = document.createElement('canvas'); canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
      const g = canvas.getContext('2d'); g.drawImage(img, 0, 0);
      try { ok(g.getImageData(0, 0, canvas.width, canvas.height).data.length); } catch (err) { ok(String(err)); }
    };
    img.onerror = () => ok('the image did not load');
    img.src = url;
  });
}
async function follow(jobId) {
  const res = await fetch(`${api}/status/${jobId}/events`, {headers: {Authorization: `Bearer ${token}`}});
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buf += value;
    let cut;
    while ((cut = buf.indexOf('\\n\\n')) >= 0) {
      const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
      const data = block.split('\\n').filter(l => l.startsWith('data:')).map(l => l.slice(5)).join('\\n');
      if (!data) continue;
      const job = JSON.parse(data);
      window.seen.push(job.progress);
      document.getElementById('bar').value = job.progress;
      document.getElementById('stage').textContent = job.stage;
      if (job.status === 'completed') {
        document.getElementById('out').src = job.result.image;
        window.pixels = await readPixels(job.result.image);
        window.fetched = await fetch(job.result.image).then(r => r.blob()).then(b => b.type + ' ' + b.size,
                                                                              err => String(err));
      }
      if (['completed', 'failed', 'canceled'].includes(job.status)) {
        document.getElementById('status').textContent = job.status; return;
      }
    }
  }
}
document.getElementById('file').addEventListener('change', async (e) => {
  try {
    const image = await new Promise(ok => { const r = new FileReader(); r.onload = () => ok(r.result);
                                            r.readAsDataURL(e.target.files[0]); });
    const res = await fetch(`${api}/generate`, {method: 'POST', body: JSON.stringify({image, engine: 'local'}),
      headers: {Authorization: `Bearer ${token}`, 'Content-Type': 'application/json',
                'X-Request-ID': 'cors-page-1', 'Idempotency-Key': crypto.randomUUID()}});
    window.headers = {requestId: res.headers.get('X-Request-ID'), location: res.headers.get('Location')};
    const body = await res.json();
    if (!res.ok) throw new Error(body.code);
    await follow(body.jobId);
  } catch (err) {
    document.getElementById('error').textContent = String(err);
  }
});
window.probe = async (path) => {
  try { const r = await fetch(api + path, {headers: {Authorization: `Bearer ${token}`}}); return r.status; }
  catch (err) { return String(err); }
};
</script>"""


@pytest.fixture
def page_servers():
    """Two static servers of the same page on two ports: two origins."""
    with page_server(PAGE, "127.0.0.1") as allowed, page_server(PAGE, "127.0.0.1") as refused:
        yield [allowed, refused]


@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="chromium is not installed")
def test_page_on_another_origin_in_chromium(make_api, workers, page_servers, tmp_path):
    from tests.api.test_web import launch_chromium

    allowed, refused = page_servers
    user = "u" + uuid.uuid4().hex[:10]
    api = make_api(CORS_ORIGINS=allowed, API_KEYS=f"tok-{user}:{user}")
    photo_path = tmp_path / "astronaut.jpg"
    photo_path.write_bytes(photo((256, 256)))
    query = f"?api={api.url}&token=tok-{user}"
    with launch_chromium() as browser:
        page = browser.new_page()
        page.goto(allowed + "/" + query)
        page.set_input_files("#file", str(photo_path))
        page.wait_for_function("document.getElementById('status').textContent || "
                               "document.getElementById('error').textContent", timeout=30_000)
        assert page.text_content("#error") == "" and page.text_content("#status") == "completed"
        page.wait_for_function("() => { const i = document.getElementById('out');"
                               " return i.complete && i.naturalWidth > 0; }", timeout=10_000)
        # The signed result link is readable from the page's script too: fetched, and drawn on a canvas.
        assert page.evaluate("window.fetched").startswith("image/png "), page.evaluate("window.fetched")
        pixels = page.evaluate("window.pixels")  # RGBA bytes read back; the stencil is at least the photo's size
        assert isinstance(pixels, int) and pixels >= 256 * 256 * 4, pixels
        seen = page.evaluate("window.seen")
        assert seen[-1] == 100 and any(0 < p < 100 for p in seen) and seen == sorted(seen), seen
        assert page.evaluate("document.getElementById('bar').value") == 100
        exposed = page.evaluate("window.headers")
        assert exposed["requestId"] == "cors-page-1" and exposed["location"].startswith("/status/"), exposed
        # The same page cannot read what is not a job path.
        for path in ("/admin/queue-stats", "/metrics"):
            assert "Failed to fetch" in page.evaluate("p => window.probe(p)", path)
        assert page.evaluate("p => window.probe(p)", "/jobs") == 200

        other = browser.new_page()
        console: list[str] = []
        other.on("console", lambda msg: console.append(msg.text))
        other.goto(refused + "/" + query)
        other.set_input_files("#file", str(photo_path))
        other.wait_for_function("document.getElementById('error').textContent", timeout=10_000)
        assert "Failed to fetch" in other.text_content("#error")
        assert any("CORS policy" in line for line in console), console
    # The refused page's preflight failed, so its POST was never sent: one job, the allowed page's.
    assert len(api.get("/jobs", token=f"tok-{user}").json()["jobs"]) == 1
