"""Webhooks per Standard Webhooks v1, from the real workers to a local receiver, verified with the
`standardwebhooks` library itself; deliveries are retried (WEBHOOK_RETRY_S=1,... in the tests)."""
from __future__ import annotations

import pytest
from standardwebhooks.webhooks import Webhook

from tests import fakegemini as fg
from tests.conftest import SECRET_KEY, WEBHOOK_SECRET, WORKERS_PUBLIC_URL, drawing, webhook_receiver
from tests.servers import wait_until


def verified(headers: dict, body: bytes) -> dict:
    """The event, after the Standard Webhooks library has checked its signature and timestamp."""
    return Webhook(WEBHOOK_SECRET).verify(body, headers)


def test_completed_and_failed_jobs_call_their_webhook(make_api, workers, receiver, fake_gemini):
    url, calls = receiver
    api = make_api(WEBHOOK_ALLOW_PRIVATE="true", GEMINI_API_KEY="test-key")
    job_id = api.submit(drawing(), engine="local", format="svg", webhookUrl=url).json()["jobId"]
    headers, body = calls.get(timeout=30)
    event = verified(headers, body)
    assert headers["webhook-id"] == f"{job_id}.completed"
    assert event["jobId"] == job_id and event["status"] == "completed" and event["progress"] == 100
    assert event["error"] is None
    # The worker service has SECRET_KEY and PUBLIC_URL: the same signed links as GET /status gives.
    for field, kind in (("image", "image/png"), ("svg", "image/svg+xml")):
        link = event["result"][field]
        assert link.startswith(WORKERS_PUBLIC_URL + "/files/"), link
        served = api.http.get(api.url + link.removeprefix(WORKERS_PUBLIC_URL))  # no Authorization
        assert served.status_code == 200 and served.headers["Content-Type"].startswith(kind), field
    assert served.content == api.http.get(api.get(f"/status/{job_id}").json()["result"]["svg"]).content
    with pytest.raises(Exception):
        Webhook(WEBHOOK_SECRET).verify(body.replace(b"completed", b"failed!!!"), headers)
    delivered = wait_until(lambda: (api.get(f"/status/{job_id}").json().get("webhook") or {}).get("state")
                           == "delivered", timeout=10)
    assert delivered
    status = api.get(f"/status/{job_id}").json()
    assert status["webhook"]["attempts"] == 1 and status["webhook"]["lastResponse"] == 204

    fake_gemini.push(fg.blocked("SAFETY"))
    failed = api.submit(drawing(), webhookUrl=url).json()["jobId"]
    headers, body = calls.get(timeout=30)
    event = verified(headers, body)
    assert event["jobId"] == failed and event["status"] == "failed" and "safety" in event["error"]
    assert headers["webhook-id"] == f"{failed}.failed"
    assert calls.empty()


def test_without_secret_key_and_public_url_a_webhook_names_the_owners_result_path(api, workers, redis):
    """The payload as a worker service without SECRET_KEY or PUBLIC_URL builds it (from its settings)."""
    from rq.job import Job
    from rq.serializers import JSONSerializer

    from tasks import webhooks
    from tasks.core.settings import WorkerSettings

    job_id = api.submit(drawing(), engine="local").json()["jobId"]
    assert api.wait(job_id)["status"] == "completed"
    job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    both = {"SECRET_KEY": SECRET_KEY, "PUBLIC_URL": WORKERS_PUBLIC_URL}
    for missing in both:
        settings = WorkerSettings.from_env({**both, missing: ""})
        assert webhooks.payload(job, "completed", settings)["result"]["image"] == f"/result/{job_id}", missing
    signed = webhooks.payload(job, "completed", WorkerSettings.from_env(both))["result"]["image"]
    assert signed.startswith(WORKERS_PUBLIC_URL + "/files/")
    assert api.http.get(api.url + signed.removeprefix(WORKERS_PUBLIC_URL)).status_code == 200


def test_a_failing_receiver_is_retried_with_the_same_event_id(make_api, workers):
    """503, then a dropped answer (500), then 204: three attempts, one webhook-id, each signed anew."""
    with webhook_receiver(answers=[503, 500]) as (url, calls):
        api = make_api(WEBHOOK_ALLOW_PRIVATE="true")
        job_id = api.submit(drawing(), engine="local", webhookUrl=url).json()["jobId"]
        waiting = api.get(f"/status/{job_id}").json()
        assert waiting["webhook"]["state"] in ("waiting", "pending", "retrying", "delivered")
        attempts = [calls.get(timeout=30) for _ in range(3)]
        assert {h["webhook-id"] for h, _ in attempts} == {f"{job_id}.completed"}
        for headers, body in attempts:
            assert verified(headers, body)["jobId"] == job_id
        state = wait_until(lambda: (api.get(f"/status/{job_id}").json()["webhook"] or {}).get("state") == "delivered",
                           timeout=15)
        assert state
        hook = api.get(f"/status/{job_id}").json()["webhook"]
        assert hook["attempts"] == 3 and hook["lastResponse"] == 204
        assert calls.empty()


def test_a_client_error_is_final_and_shown(make_api, workers):
    with webhook_receiver(answers=[410]) as (url, calls):
        api = make_api(WEBHOOK_ALLOW_PRIVATE="true")
        job_id = api.submit(drawing(), engine="local", webhookUrl=url).json()["jobId"]
        calls.get(timeout=30)
        wait_until(lambda: api.get(f"/status/{job_id}").json()["webhook"]["state"] == "failed", timeout=15)
        hook = api.get(f"/status/{job_id}").json()["webhook"]
        assert hook["attempts"] == 1 and hook["lastResponse"] == 410
        assert api.get(f"/status/{job_id}").json()["status"] == "completed"  # a webhook never fails its job


def test_canceled_waiting_job_calls_its_webhook(make_api, workers, receiver, fake_gemini):
    url, calls = receiver
    api = make_api(WEBHOOK_ALLOW_PRIVATE="true", GEMINI_API_KEY="test-key")
    fake_gemini.push(fg.slow(5))
    busy = api.post("/generate", json={"operation": "ia-gen", "prompt": "x"}).json()["jobId"]
    waiting = api.post("/generate", json={"operation": "ia-gen", "prompt": "y", "webhookUrl": url}).json()["jobId"]
    assert api.delete(f"/jobs/{waiting}").status_code == 200
    headers, body = calls.get(timeout=15)
    event = verified(headers, body)
    assert event["jobId"] == waiting and event["status"] == "canceled"
    api.delete(f"/jobs/{busy}")
    api.wait(busy)


def test_no_webhook_no_field(api, workers):
    job_id = api.submit(drawing(), engine="local").json()["jobId"]
    assert "webhook" not in api.wait(job_id)


@pytest.mark.parametrize("hook", ["http://127.0.0.1:9/x", "http://10.0.0.1/x", "http://[::1]/x",
                                  "ftp://example.org/x", "http://user:pw@127.0.0.1/x", "not a url",
                                  "http://169.254.169.254/latest/meta-data"])
def test_private_or_odd_webhook_urls_are_refused(api, hook):
    response = api.submit(drawing(), webhookUrl=hook)
    assert response.status_code == 400 and response.json()["code"] == "invalid_request"


@pytest.mark.parametrize("hook", ["http://[::1", "http://[notip]/", "http://example.com:port/", "http://[64:ff9b::7f00:1]/",
                                  "http://[2002:7f00:1::]/", "http://[::127.0.0.1]/", "http://[::ffff:7f00:1]/",
                                  "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", "http://[64:ff9b:1::808:808]/",
                                  "http://127.1/x", "http://2130706433/x", "http://localhost:8080/x",
                                  "http://redis:8080/x", "http://example.com:25/x", "http://example.com:6379/x"])
def test_malformed_embedded_or_local_webhook_urls_are_400(api, hook):
    response = api.submit(drawing(), webhookUrl=hook)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_request" and "Traceback" not in response.text


@pytest.mark.parametrize("address, allowed", [
    ("8.8.8.8", True), ("2001:4860:4860::8888", True), ("64:ff9b::808:808", True), ("2002:808:808::", True),
    ("::ffff:8.8.8.8", True), ("127.0.0.1", False), ("64:ff9b::a00:1", False), ("2002:a9fe:a9fe::", False),
    ("::7f00:1", False), ("::ffff:10.0.0.1", False), ("::1", False), ("::", False), ("fec0::1", False),
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", False), ("64:ff9b:1::808:808", False), ("224.0.0.251", False),
    ("100.64.0.1", False), ("fd00::1", False), ("fe80::1", False)])
def test_addresses_are_judged_by_the_ipv4_address_they_carry(address, allowed):
    import ipaddress

    from tasks.webhooks import address_allowed

    assert address_allowed(ipaddress.ip_address(address)) is allowed


def test_a_submission_does_not_resolve_the_webhook_host(api, monkeypatch):
    """The name is looked up only when a delivery is attempted: a name that can never resolve
    (RFC 6761 `.invalid`) is accepted, so no resolver, slow or not, holds the request; nor is the
    name looked up at all while the request is answered (the API runs in this process)."""
    import socket

    looked_up, system = [], socket.getaddrinfo

    def spy(host, *args, **kwargs):
        looked_up.append(host.decode() if isinstance(host, bytes) else host)
        return system(host, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", spy)
    response = api.submit(drawing(), engine="local", webhookUrl="https://hooks.example.invalid/x")
    assert response.status_code == 202, response.text
    assert "hooks.example.invalid" not in looked_up, looked_up
    api.delete(f"/jobs/{response.json()['jobId']}")


@pytest.mark.parametrize("answers, refused", [
    (["93.184.216.34"], False), (["127.0.0.1"], True), (["169.254.169.254"], True),
    (["93.184.216.34", "10.0.0.1"], True), (["64:ff9b::7f00:1"], True), (["2606:2800:220:1::1"], False)])
def test_an_attempt_refuses_a_name_that_resolves_to_a_private_address(monkeypatch, answers, refused):
    """The submission no longer resolves the name, so the attempt's one lookup is the only check of where a
    name points: any answer that is not a global unicast address refuses the delivery."""
    import socket

    from tasks import webhooks

    def fake(host, port, *args, **kwargs):
        assert host == "hook.example.com"
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in answers]
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    where = webhooks.check_url("https://hook.example.com/x", allow_private=False)  # no lookup: accepted
    if refused:
        with pytest.raises(webhooks.WebhookRefused):
            webhooks.resolve(where, allow_private=False)
    else:
        assert webhooks.resolve(where, allow_private=False) == answers
    assert webhooks.resolve(where, allow_private=True) == answers  # WEBHOOK_ALLOW_PRIVATE lets them through


def test_a_delivery_to_a_name_that_resolves_to_a_private_address_is_refused(tmp_path):
    """End to end, as deployed (WEBHOOK_ALLOW_PRIVATE unset on the workers): a public-looking name that
    resolves to loopback, where a receiver listens, is accepted at submission and refused at the attempt;
    nothing reaches the receiver and the job's webhook state says why."""
    from tests.servers import NameServer, Stack

    names = NameServer(["127.0.0.1"])
    stack = Stack(tmp_path, "http://127.0.0.1:9")
    try:
        with webhook_receiver() as (url, calls):
            port = url.rsplit(":", 1)[1].split("/")[0]
            stack.workers(stencil=1, WEBHOOK_ALLOW_PRIVATE="false", **names.env)
            job_id = stack.api.submit(drawing(), engine="local",
                                      webhookUrl=f"http://hook.rebind.test:{port}/hook").json()["jobId"]

            def ended():
                webhook = stack.api.get(f"/status/{job_id}").json().get("webhook") or {}
                return webhook if webhook.get("state") in ("delivered", "failed") else None
            state = wait_until(ended, timeout=60, what="the delivery's outcome")
            assert state["state"] == "failed" and "private" in state.get("lastError", ""), state
            assert calls.empty(), "a delivery reached a loopback receiver"
            assert names.queries == ["hook.rebind.test"]
    finally:
        stack.close()
        names.close()


def test_a_rebinding_resolver_cannot_move_a_delivery(tmp_path):
    """Each attempt resolves the name once and connects to the address it checked.

    The name server answers 127.0.0.1 and then 127.0.0.2, in turn; a receiver listens on the same port
    of each. A second lookup by the HTTP client (what rebinding exploits: check one address, connect to
    another) would send the delivery to 127.0.0.2."""
    from tests.servers import NameServer, Stack

    names = NameServer(["127.0.0.1", "127.0.0.2"])
    stack = Stack(tmp_path, "http://127.0.0.1:9")
    try:
        with webhook_receiver() as (checked_url, checked), \
                webhook_receiver(host="127.0.0.2", port=int(checked_url.rsplit(":", 1)[1].split("/")[0])) as (_, other):
            port = checked_url.rsplit(":", 1)[1].split("/")[0]
            stack.workers(stencil=1, **names.env)
            hook = f"http://hook.rebind.test:{port}/hook"
            job_id = stack.api.submit(drawing(), engine="local", webhookUrl=hook).json()["jobId"]
            wait_until(lambda: (stack.api.get(f"/status/{job_id}").json().get("webhook") or {}).get("state")
                       in ("delivered", "failed"), timeout=60)
            assert stack.api.get(f"/status/{job_id}").json()["webhook"]["state"] == "delivered"
            assert other.empty(), "the delivery went to an address that was never checked"
            headers, body = checked.get(timeout=1)
            assert headers["host"] == f"hook.rebind.test:{port}" and verified(headers, body)["jobId"] == job_id
            assert names.queries == ["hook.rebind.test"]
    finally:
        stack.close()
        names.close()


def test_a_pinned_https_connection_keeps_the_name_for_sni_and_the_certificate(tmp_path):
    """PinnedAdapter connects to the checked IP, yet TLS names the host: SNI and the certificate check
    are the name's, so a certificate for another name is refused."""
    import datetime
    import ssl

    import requests
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from tasks.webhooks import PinnedAdapter

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hook.example")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("hook.example")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    seen = {}
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    context.sni_callback = lambda _sock, server_name, _ctx: seen.update(sni=server_name)
    with webhook_receiver(tls=context) as (url, calls):
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        for host, ok in (("hook.example", True), ("other.example", False)):
            with requests.Session() as session:
                session.trust_env = False
                session.mount("https://", PinnedAdapter("127.0.0.1"))
                try:
                    answer = session.post(f"https://{host}:{port}/hook", data=b"{}", verify=str(cert_file),
                                          headers={"Host": f"{host}:{port}"}, timeout=5).status_code
                except requests.exceptions.SSLError:
                    answer = None
            assert (answer == 204) is ok, (host, answer)
        headers, _ = calls.get(timeout=1)
        assert seen["sni"] == "other.example" and headers["host"] == f"hook.example:{port}" and calls.empty()
