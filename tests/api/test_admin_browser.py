"""The admin surfaces attacked from a real browser (system Chromium via Playwright): a page on
another origin posting to rq-dashboard with the admin's cached Basic credentials, and hostile text
(a job's description and metadata, an ia-gen prompt, a provider's reply) on the dashboard's pages."""
from __future__ import annotations

import os

import jwt
import pytest
from rq import Queue
from rq.serializers import JSONSerializer

from tests import fakegemini as fg
from tests.api.test_web import CHROMIUM, browser  # noqa: F401  (the Chromium fixture)
from tests.conftest import ADMIN_TOKEN
from tests.servers import page_server, wait_until

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed")

# Each payload bumps window.__pwned if the browser ever runs it.
HOSTILE = ['<img src=x onerror="window.__pwned=(window.__pwned||0)+1">',
           '<svg onload="window.__pwned=(window.__pwned||0)+1"></svg>',
           '<iframe srcdoc="<script>parent.__pwned=1</script>"></iframe>']
PAYLOAD = "Sorry: " + " ".join(HOSTILE)


def admin_page(browser, api):  # noqa: F811
    """A page whose context answers the dashboard's Basic challenge with the admin token; console errors kept."""
    context = browser.new_context(http_credentials={"username": "ops", "password": ADMIN_TOKEN})
    page = context.new_page()
    page.problems = []
    page.on("console", lambda msg: page.problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: page.problems.append(f"uncaught: {exc}"))
    return page


def park(redis, queue: str, **job) -> str:
    """A job left waiting in a queue no worker serves; its id."""
    return Queue(queue, connection=redis, serializer=JSONSerializer).enqueue("tasks.jobs.nothing", **job).id


def test_cross_site_form_post_with_cached_basic_credentials_is_refused(make_api, browser, redis):  # noqa: F811
    api = make_api()
    victim = park(redis, "csrf-victim")
    page = admin_page(browser, api)
    page.goto(api.url + "/admin/rq/")
    page.wait_for_selector("text=csrf-victim", timeout=10_000)  # the dashboard's own scripts ran under its CSP
    attack = f"""<form method="post" action="{api.url}/admin/rq/queue/csrf-victim/queued/empty"></form>
                 <script>document.forms[0].submit()</script>"""
    with page_server(attack) as evil:
        with page.expect_navigation(url=f"{api.url}/admin/rq/queue/csrf-victim/queued/empty"):
            page.goto(evil + "/")
        assert '"forbidden"' in page.content()
    queue = Queue("csrf-victim", connection=redis, serializer=JSONSerializer)
    assert queue.job_ids == [victim], "a cross-site POST emptied the queue"

    park(redis, "csrf-own")
    page.goto(api.url + "/admin/rq/")
    status = page.evaluate("fetch('/admin/rq/queue/csrf-own/queued/empty', {method: 'POST'}).then(r => r.status)")
    assert status == 200  # the dashboard's own same-origin POST still works
    assert Queue("csrf-own", connection=redis, serializer=JSONSerializer).count == 0
    assert not [p for p in page.problems if "Content Security Policy" in p], page.problems


def test_hostile_text_does_not_run_on_dashboard_pages(make_api, browser, redis, workers, fake_gemini):  # noqa: F811
    api = make_api(GEMINI_API_KEY="test-key", JWT_SECRET="j" * 40)
    hostile_sub = jwt.encode({"sub": HOSTILE[0], "exp": 2**31}, "j" * 40, algorithm="HS256")
    refused = api.post("/generate", token=hostile_sub, json={"operation": "ia-gen", "prompt": "a koi"})
    assert refused.status_code == 401 and refused.json()["code"] == "unauthenticated"

    parked = park(redis, "xss-parked", description=PAYLOAD, meta={"user": "alice", "error": PAYLOAD})
    fake_gemini.push(fg.text_only(PAYLOAD))
    failed = api.post("/generate", json={"operation": "ia-gen", "prompt": PAYLOAD}).json()["jobId"]
    assert "It said" in api.wait(failed)["error"]  # the provider's reply, quoted into meta.error

    page = admin_page(browser, api)
    for job_id in (parked, failed):
        page.goto(f"{api.url}/admin/rq/0/view/job/{job_id}")
        page.wait_for_selector("#job-data p", timeout=10_000)
        page.wait_for_timeout(300)  # an image's error event fires after it has been inserted
        assert page.evaluate("window.__pwned") is None, job_id
        assert "onerror" in page.text_content("#job-data")  # the hostile text is on the page, as text
    for listing in ("xss-parked/queued", "ia-gen/failed"):
        page.goto(f"{api.url}/admin/rq/0/view/jobs/{listing}/8/asc/1")
        page.wait_for_selector("td", timeout=10_000)
        assert page.evaluate("window.__pwned") is None, listing
    # Should some text slip through unescaped, the page's CSP still refuses inline handlers.
    page.evaluate("""document.body.insertAdjacentHTML('beforeend', '<img src=x onerror="window.__pwned=1">')""")
    page.wait_for_timeout(300)
    assert page.evaluate("window.__pwned") is None, "an inline handler ran despite the CSP"


def test_workers_page_lists_a_running_job_with_hostile_text(make_api, browser, redis, workers, fake_gemini):  # noqa: F811
    """The job a worker runs is listed, its call string and description shown as text.

    Through the API a prompt sits past the 75 characters of each argument rq's call string keeps,
    so this job is queued directly, as an operator's script could, with the prompt first."""
    api = make_api()
    page = admin_page(browser, api)
    page.goto(f"{api.url}/admin/rq/0/view/workers")
    page.wait_for_selector("#workers td", timeout=10_000)
    fake_gemini.push(fg.slow(2.5))
    spec = {"params": {"prompt": '<img src=x onerror="window.__pwned=1">', "engine": "gemini"},
            "operation": "ia-gen", "jobId": "", "userId": "alice", "inputKey": None, "mimeType": None}
    job = Queue("ia-gen", connection=redis, serializer=JSONSerializer).enqueue(
        "tasks.jobs.ia_gen", spec, description=PAYLOAD, meta={"user": "alice"})
    wait_until(lambda: fake_gemini.requests, timeout=30, what="the job to call the provider")
    page.reload()
    link = page.wait_for_selector(f'#workers a[href$="/job/{job.id}"]', timeout=2_000)
    assert "onerror" in link.text_content()  # the hostile prompt is on the page, as text
    assert page.eval_on_selector_all("#workers img, #workers svg, #workers iframe", "els => els.length") == 0
    page.wait_for_timeout(300)
    assert page.evaluate("window.__pwned") is None
    assert not [p for p in page.problems if "Content Security Policy" in p or "uncaught" in p], page.problems
    wait_until(lambda: job.get_status(refresh=True) in ("finished", "failed"), timeout=30, what="the job to end")
