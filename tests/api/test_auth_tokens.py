"""api.auth against real tokens: HS256, RS256/ES256 from a real local JWKS server, API keys, admin."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from api.auth import AuthError, Authenticator, AuthUnavailable, Principal, parse_api_keys, same_secret
from api.settings import AuthSettings
from tests.servers import wait_until

SECRET = "s3cret-for-hs256-tests-0123456789abcdef"
ADMIN = "admin-token-0123456789"
ISSUER = "https://clerk.inkq.test"
AUDIENCE = "inkq-api"


# ---- keys, tokens and the JWKS server -------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_keys():
    """Three RSA keys: the current one, the rotated-in one, and an attacker's."""
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides):
    now = int(time.time())
    body = {"sub": "user_2abc", "iat": now, "nbf": now, "exp": now + 300}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def hs_token(body=None, secret=SECRET, **headers):
    return jwt.encode(claims() if body is None else body, secret, algorithm="HS256", headers=headers or None)


def rs_token(key, kid, body=None, alg="RS256"):
    return jwt.encode(claims() if body is None else body, key, algorithm=alg, headers={"kid": kid})


def hand_token(header, body, sign=None):
    """A JWT assembled by hand, for what PyJWT refuses to produce."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(body).encode())}"
    signature = sign(signing_input.encode()) if sign else b""
    return f"{signing_input}.{b64url(signature)}"


def jwk(key, kid, alg="RS256"):
    if isinstance(key, rsa.RSAPrivateKey):
        data = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        data = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**data, "kid": kid, "use": "sig", "alg": alg}


def public_pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class JWKSServer:
    """A Clerk-like JWKS endpoint on 127.0.0.1 that counts its hits."""

    path = "/.well-known/jwks.json"

    def __init__(self):
        self.jwks = {"keys": []}
        self.status = 200
        self.hits = 0
        self.gate = threading.Event()  # cleared: requests hang until it is set again
        self.gate.set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits += 1
                server.gate.wait(30)
                status = server.status if self.path == server.path else 404
                body = json.dumps(server.jwks if status == 200 else {"error": "nope"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{self.path}"

    def serve(self, *jwks):
        self.jwks = {"keys": list(jwks)}

    def close(self):
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks(rsa_keys):
    server = JWKSServer()
    server.serve(jwk(rsa_keys[0], "k1"))
    yield server
    server.close()


def make(**kwargs):
    return Authenticator(**kwargs)


def refused(auth, header, message=None, **kwargs):
    with pytest.raises(AuthError) as info:
        auth.authenticate(header, **kwargs)
    if message is not None:
        assert info.value.message == message
    return info.value


# ---- HS256 ---------------------------------------------------------------------------------


def test_hs256_valid():
    auth = make(jwt_secret=SECRET)
    assert auth.authenticate(f"Bearer {hs_token()}") == Principal("jwt:user_2abc", False, "jwt")


def test_hs256_wrong_secret_is_refused():
    auth = make(jwt_secret=SECRET)
    refused(auth, f"Bearer {hs_token(secret='another-secret-that-is-long-enough-1234')}", "invalid token")


def test_hs256_other_hmac_algorithms_are_refused():
    auth = make(jwt_secret=SECRET * 2)
    token = jwt.encode(claims(), SECRET * 2, algorithm="HS512")
    refused(auth, f"Bearer {token}", "invalid token")


@pytest.mark.parametrize(
    "body, message",
    [
        (claims(exp=int(time.time()) - 120), "token expired"),
        (claims(nbf=int(time.time()) + 300), "token not yet valid"),
        (claims(iat=int(time.time()) + 300), "token not yet valid"),
        (claims(exp=None), "token has no exp claim"),
        (claims(sub=None), "token has no sub claim"),
        (claims(sub=""), "invalid token subject"),
        (claims(sub="   "), "invalid token subject"),
        (claims(sub="x" * 256), "invalid token subject"),
        (claims(exp="tomorrow"), "invalid token"),
    ],
    ids=["expired", "nbf-future", "iat-future", "no-exp", "no-sub", "empty-sub", "blank-sub", "long-sub", "bad-exp"],
)
def test_hs256_claims_are_enforced(body, message):
    refused(make(jwt_secret=SECRET), f"Bearer {hs_token(body)}", message)


@pytest.mark.parametrize("sub", ["<img src=x onerror=alert(1)>", "a b", "@admin", "user:2abc", 'q"uote', "é"])
def test_sub_outside_the_user_id_alphabet_is_refused(sub):
    refused(make(jwt_secret=SECRET), f"Bearer {hs_token(claims(sub=sub))}", "invalid token subject")


def test_jwt_users_and_api_key_users_never_share_an_id():
    auth = make(api_keys={"key-1": "alice"}, jwt_secret=SECRET)
    assert auth.authenticate("Bearer key-1").user_id == "alice"
    assert auth.authenticate(f"Bearer {hs_token(claims(sub='alice'))}").user_id == "jwt:alice"


def test_secrets_compare_by_digest(monkeypatch):
    assert same_secret("Bearer abc", "Bearer abc")
    assert not same_secret("Bearer ab", "Bearer abc") and not same_secret("", "Bearer abc")
    # what is compared in constant time is two SHA-256 digests, so not even the secret's length shows
    compared, real = [], hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append((len(a), len(b))) or real(a, b))
    assert not same_secret("Bearer ab", "Bearer abc") and same_secret("Bearer abc", "Bearer abc")
    assert compared == [(32, 32), (32, 32)], compared


def test_non_string_sub_is_refused():
    refused(make(jwt_secret=SECRET), f"Bearer {hs_token(claims(sub=12345))}", "invalid token")


def test_clock_skew_within_leeway_is_accepted():
    now = int(time.time())
    auth = make(jwt_secret=SECRET)
    assert auth.authenticate(f"Bearer {hs_token(claims(exp=now - 10, nbf=now + 10, iat=now + 10))}").user_id == "jwt:user_2abc"
    refused(make(jwt_secret=SECRET, leeway_s=0), f"Bearer {hs_token(claims(exp=now - 10))}", "token expired")


def test_issuer_and_audience_when_configured():
    auth = make(jwt_secret=SECRET, issuer=ISSUER, audience=AUDIENCE)
    assert auth.authenticate(f"Bearer {hs_token(claims(iss=ISSUER, aud=AUDIENCE))}").user_id == "jwt:user_2abc"
    assert auth.authenticate(f"Bearer {hs_token(claims(iss=ISSUER, aud=['other', AUDIENCE]))}").method == "jwt"
    refused(auth, f"Bearer {hs_token(claims(iss='https://evil.test', aud=AUDIENCE))}", "invalid token issuer")
    refused(auth, f"Bearer {hs_token(claims(iss=ISSUER, aud='other-api'))}", "invalid token audience")
    refused(auth, f"Bearer {hs_token(claims(aud=AUDIENCE))}", "token has no iss claim")
    refused(auth, f"Bearer {hs_token(claims(iss=ISSUER))}", "token has no aud claim")


def test_audience_unset_accepts_tokens_carrying_aud():
    auth = make(jwt_secret=SECRET)
    assert auth.authenticate(f"Bearer {hs_token(claims(aud='whatever', iss='anyone'))}").user_id == "jwt:user_2abc"


def test_privileged_sub_does_not_make_an_admin():
    auth = make(jwt_secret=SECRET, admin_token=ADMIN)
    for sub in ("admin", "root", ADMIN):
        principal = auth.authenticate(f"Bearer {hs_token(claims(sub=sub, role='admin', is_admin=True))}")
        assert principal == Principal("jwt:" + sub, False, "jwt")


# ---- alg none and algorithm confusion --------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused(jwks, alg):
    token = hand_token({"alg": alg, "typ": "JWT"}, claims())
    for auth in (make(jwt_secret=SECRET), make(jwks_url=jwks.url), make(jwt_secret=SECRET, jwks_url=jwks.url)):
        refused(auth, f"Bearer {token}", "invalid token")
    token_with_kid = hand_token({"alg": alg, "kid": "k1"}, claims())
    refused(make(jwks_url=jwks.url), f"Bearer {token_with_kid}", "invalid token")


def test_algorithm_confusion_hs256_signed_with_public_key_is_refused(jwks, rsa_keys):
    pem = public_pem(rsa_keys[0])
    jwk_json = json.dumps(jwk(rsa_keys[0], "k1")).encode()
    for secret in (pem, pem.strip(), jwk_json):
        token = hand_token(
            {"alg": "HS256", "typ": "JWT", "kid": "k1"},
            claims(),
            sign=lambda data, s=secret: hmac.new(s, data, hashlib.sha256).digest(),
        )
        refused(make(jwks_url=jwks.url), f"Bearer {token}", "invalid token")
        refused(make(jwks_url=jwks.url, jwt_secret=SECRET), f"Bearer {token}", "invalid token")
    # the real RS256 token still works with both configured
    both = make(jwks_url=jwks.url, jwt_secret=SECRET)
    assert both.authenticate(f"Bearer {rs_token(rsa_keys[0], 'k1')}").method == "jwt"


def test_rs256_token_is_refused_when_only_a_secret_is_configured(rsa_keys):
    refused(make(jwt_secret=SECRET), f"Bearer {rs_token(rsa_keys[0], 'k1')}", "invalid token")


def test_symmetric_key_published_in_jwks_is_not_trusted(jwks):
    oct_secret = b"published-symmetric-key-0123456789abcdef"
    jwks.serve({"kty": "oct", "kid": "sym", "use": "sig", "alg": "HS256", "k": b64url(oct_secret)})
    token = jwt.encode(claims(), oct_secret, algorithm="HS256", headers={"kid": "sym"})
    refused(make(jwks_url=jwks.url), f"Bearer {token}", "invalid token")


def test_jwks_key_only_verifies_with_its_own_algorithm(jwks, rsa_keys, ec_key):
    auth = make(jwks_url=jwks.url)
    # k1 is published with alg RS256: an RS512 or PS256 signature by the same key is refused
    refused(auth, f"Bearer {rs_token(rsa_keys[0], 'k1', alg='RS512')}", "invalid token")
    refused(auth, f"Bearer {rs_token(rsa_keys[0], 'k1', alg='PS256')}", "invalid token")
    # an ES256 key is accepted for ES256 only
    jwks.serve(jwk(rsa_keys[0], "k1"), jwk(ec_key, "e1", alg="ES256"))
    auth = make(jwks_url=jwks.url)
    assert auth.authenticate(f"Bearer {rs_token(ec_key, 'e1', alg='ES256')}") == Principal("jwt:user_2abc", False, "jwt")
    refused(auth, f"Bearer {rs_token(ec_key, 'k1', alg='ES256')}", "invalid token")


# ---- RS256 from the JWKS ---------------------------------------------------------------------


def test_rs256_valid_via_jwks(jwks, rsa_keys):
    auth = make(jwks_url=jwks.url)
    assert auth.authenticate(f"Bearer {rs_token(rsa_keys[0], 'k1')}") == Principal("jwt:user_2abc", False, "jwt")
    assert jwks.hits == 1


def test_jwks_is_cached(jwks, rsa_keys):
    auth = make(jwks_url=jwks.url)
    for sub in ("user_a", "user_b", "user_c"):
        assert auth.authenticate(f"Bearer {rs_token(rsa_keys[0], 'k1', claims(sub=sub))}").user_id == "jwt:" + sub
    assert jwks.hits == 1


def test_jwks_issuer_and_audience(jwks, rsa_keys):
    auth = make(jwks_url=jwks.url, issuer=ISSUER, audience=AUDIENCE)
    good = rs_token(rsa_keys[0], "k1", claims(iss=ISSUER, aud=AUDIENCE))
    assert auth.authenticate(f"Bearer {good}").user_id == "jwt:user_2abc"
    refused(auth, f"Bearer {rs_token(rsa_keys[0], 'k1', claims(iss=ISSUER, aud='x'))}", "invalid token audience")
    refused(auth, f"Bearer {rs_token(rsa_keys[0], 'k1', claims(iss='https://x', aud=AUDIENCE))}", "invalid token issuer")


def test_key_rotation_triggers_one_refetch(jwks, rsa_keys):
    auth = make(jwks_url=jwks.url)
    assert auth.authenticate(f"Bearer {rs_token(rsa_keys[0], 'k1')}").user_id == "jwt:user_2abc"
    assert jwks.hits == 1
    jwks.serve(jwk(rsa_keys[0], "k1"), jwk(rsa_keys[1], "k2"))
    assert auth.authenticate(f"Bearer {rs_token(rsa_keys[1], 'k2')}").user_id == "jwt:user_2abc"
    assert jwks.hits == 2
    for key, kid in ((rsa_keys[1], "k2"), (rsa_keys[0], "k1"), (rsa_keys[1], "k2")):
        auth.authenticate(f"Bearer {rs_token(key, kid)}")
    assert jwks.hits == 2


def test_unknown_kid_flood_is_bounded(jwks, rsa_keys):
    auth = make(jwks_url=jwks.url)
    auth.authenticate(f"Bearer {rs_token(rsa_keys[0], 'k1')}")
    for _ in range(200):
        refused(auth, f"Bearer {rs_token(rsa_keys[2], secrets.token_hex(8))}", "invalid token")
    assert jwks.hits <= 2
    # the known key keeps working throughout
    assert auth.authenticate(f"Bearer {rs_token(rsa_keys[0], 'k1')}").method == "jwt"
    assert jwks.hits <= 2


def test_refresh_throttle_reopens_after_the_interval(jwks, rsa_keys):
    auth = make(jwks_url=jwks.url, jwks_refresh_interval_s=0.3)
    auth.authenticate(f"Bearer {rs_token(rsa_keys[0], 'k1')}")
    refused(auth, f"Bearer {rs_token(rsa_keys[2], 'random')}", "invalid token")  # spends the refetch
    assert jwks.hits == 2
    jwks.serve(jwk(rsa_keys[0], "k1"), jwk(rsa_keys[1], "k2"))
    refused(auth, f"Bearer {rs_token(rsa_keys[1], 'k2')}", "invalid token")  # throttled
    assert jwks.hits == 2
    time.sleep(0.35)
    assert auth.authenticate(f"Bearer {rs_token(rsa_keys[1], 'k2')}").user_id == "jwt:user_2abc"
    assert jwks.hits == 3


def _in_thread(call):
    """Run `call` in a thread; (thread, outcome list that gets its result or exception)."""
    outcome = []

    def run():
        try:
            outcome.append(call())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_slow_jwks_refetch_does_not_stall_logins_with_cached_keys(jwks, rsa_keys):
    auth = make(jwks_url=jwks.url, jwks_timeout_s=5)
    cached = f"Bearer {rs_token(rsa_keys[0], 'k1')}"
    assert auth.authenticate(cached).method == "jwt"
    jwks.gate.clear()
    refetching, _ = _in_thread(lambda: auth.authenticate(f"Bearer {rs_token(rsa_keys[1], 'k2')}"))
    wait = time.monotonic() + 5
    while jwks.hits < 2 and time.monotonic() < wait:
        time.sleep(0.01)
    assert jwks.hits == 2  # the unknown kid's refetch hangs in the JWKS server
    login, outcome = _in_thread(lambda: auth.authenticate(cached))
    login.join(3)
    assert outcome and outcome[0].user_id == "jwt:user_2abc", "a cached key waited for the hanging refetch"
    assert refetching.is_alive()
    jwks.gate.set()
    refetching.join(5)


def test_stale_jwks_is_served_while_one_refresh_runs_behind(jwks, rsa_keys):
    auth = make(jwks_url=jwks.url, jwks_cache_s=0.05)
    token = f"Bearer {rs_token(rsa_keys[0], 'k1')}"
    auth.authenticate(token)
    time.sleep(0.1)
    jwks.gate.clear()
    logins = [_in_thread(lambda: auth.authenticate(token)) for _ in range(8)]
    for thread, outcome in logins:
        thread.join(3)
        assert outcome and outcome[0].method == "jwt"
    # eight logins past the lifespan, none of them waiting for the refresh, which runs behind them: its
    # request may reach the server after the last login has returned (a loaded box), but only one does
    wait_until(lambda: jwks.hits >= 2, timeout=5, interval=0.02, what="the refresh to reach the JWKS server")
    time.sleep(0.2)
    assert jwks.hits == 2
    jwks.gate.set()


def test_concurrent_refetches_collapse_into_one_bounded_by_the_timeout(jwks, rsa_keys):
    auth = make(jwks_url=jwks.url, jwks_timeout_s=0.5)
    jwks.gate.clear()
    logins = [_in_thread(lambda: auth.authenticate(f"Bearer {rs_token(rsa_keys[0], 'k1')}")) for _ in range(6)]
    for thread, outcome in logins:
        thread.join(5)
        assert outcome and isinstance(outcome[0], AuthUnavailable)
    assert jwks.hits == 1
    jwks.gate.set()


def test_forged_rs256_signature_is_refused(jwks, rsa_keys):
    auth = make(jwks_url=jwks.url)
    refused(auth, f"Bearer {rs_token(rsa_keys[2], 'k1')}", "invalid token")
    good = rs_token(rsa_keys[0], "k1")
    head, body, sig = good.split(".")
    tampered_body = b64url(json.dumps(claims(sub="someone_else")).encode())
    refused(auth, f"Bearer {head}.{tampered_body}.{sig}", "invalid token")
    refused(auth, f"Bearer {head}.{body}.{sig[:-4]}AAAA", "invalid token")


def test_rs256_expired_and_missing_kid(jwks, rsa_keys):
    auth = make(jwks_url=jwks.url)
    refused(auth, f"Bearer {rs_token(rsa_keys[0], 'k1', claims(exp=int(time.time()) - 3600))}", "token expired")
    no_kid = jwt.encode(claims(), rsa_keys[0], algorithm="RS256")
    refused(auth, f"Bearer {no_kid}", "invalid token")


def test_jwks_server_down_is_unavailable(rsa_keys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    auth = make(jwks_url=f"http://127.0.0.1:{port}/jwks.json", jwks_timeout_s=1)
    error = refused(auth, f"Bearer {rs_token(rsa_keys[0], 'k1')}", "authentication service unavailable")
    assert isinstance(error, AuthUnavailable) and error.retry_after_s >= 1


def test_jwks_server_error_backs_off_then_recovers(jwks, rsa_keys):
    jwks.status = 500
    auth = make(jwks_url=jwks.url, jwks_refresh_interval_s=0.3)
    token = f"Bearer {rs_token(rsa_keys[0], 'k1')}"
    assert isinstance(refused(auth, token), AuthUnavailable)
    assert isinstance(refused(auth, token), AuthUnavailable)
    assert jwks.hits == 1  # the second attempt did not hammer the failing server
    jwks.status = 200
    time.sleep(0.35)
    assert auth.authenticate(token).user_id == "jwt:user_2abc"
    assert jwks.hits == 2


def test_jwks_with_junk_body_is_unavailable(jwks, rsa_keys):
    jwks.jwks = {"keys": "not a list"}
    auth = make(jwks_url=jwks.url)
    assert isinstance(refused(auth, f"Bearer {rs_token(rsa_keys[0], 'k1')}"), AuthUnavailable)


def test_api_keys_and_hs256_are_unaffected_by_jwks_outage(rsa_keys):
    auth = make(api_keys={"key-1": "alice"}, jwt_secret=SECRET, jwks_url="http://127.0.0.1:9/jwks.json")
    assert auth.authenticate("Bearer key-1").user_id == "alice"
    assert auth.authenticate(f"Bearer {hs_token()}").user_id == "jwt:user_2abc"


# ---- API keys, admin token, Basic ------------------------------------------------------------


def test_api_keys():
    auth = make(api_keys=parse_api_keys("key-1:alice, key-2:bob.smith"), jwt_secret=SECRET)
    assert auth.authenticate("Bearer key-1") == Principal("alice", False, "api_key")
    assert auth.authenticate("Bearer key-2") == Principal("bob.smith", False, "api_key")
    refused(auth, "Bearer key-3", "invalid credentials")
    refused(auth, "Bearer key-1x", "invalid credentials")
    refused(auth, "Bearer KEY-1", "invalid credentials")


def test_admin_token():
    auth = make(api_keys={"key-1": "alice"}, admin_token=ADMIN)
    principal = auth.authenticate(f"Bearer {ADMIN}")
    assert principal == Principal("admin", True, "admin") and principal.is_admin
    refused(auth, f"Bearer {ADMIN}x", "invalid credentials")
    assert not auth.authenticate("Bearer key-1").is_admin


def test_basic_with_admin_token_only_when_allowed():
    auth = make(api_keys={"key-1": "alice"}, admin_token=ADMIN)
    basic = "Basic " + base64.b64encode(f"anyone:{ADMIN}".encode()).decode()
    assert auth.authenticate(basic, allow_basic=True) == Principal("admin", True, "admin")
    assert auth.authenticate("Basic " + base64.b64encode(f":{ADMIN}".encode()).decode(), allow_basic=True).is_admin
    refused(auth, basic, "unsupported authorization scheme")
    refused(auth, "Basic " + base64.b64encode(b"admin:wrong").decode(), "invalid credentials", allow_basic=True)
    refused(auth, "Basic " + base64.b64encode(b"alice:key-1").decode(), "invalid credentials", allow_basic=True)
    refused(auth, "Basic " + base64.b64encode(ADMIN.encode()).decode(), "malformed authorization header", allow_basic=True)
    refused(auth, "Basic not*base64", "malformed authorization header", allow_basic=True)
    refused(auth, "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(), "malformed authorization header", allow_basic=True)
    refused(make(api_keys={"key-1": "alice"}), basic, "invalid credentials", allow_basic=True)


@pytest.mark.parametrize(
    "header, message",
    [
        (None, "missing credentials"),
        ("", "missing credentials"),
        ("   ", "missing credentials"),
        ("Bearer", "missing credentials"),
        ("Bearer    ", "missing credentials"),
        ("key-1", "malformed authorization header"),
        ("Token key-1", "unsupported authorization scheme"),
        ("Digest key-1", "unsupported authorization scheme"),
        ("Bearer key-1 extra", "malformed authorization header"),
        ("Bearer tökén", "malformed authorization header"),
        ("Bearer key-1\x00", "malformed authorization header"),
        ("Bearer " + "a" * 9000, "authorization header too long"),
        ("Bearer a.b.c", "invalid token"),
        ("Bearer ...", "invalid credentials"),
        ("Bearer eyJhbGciOiJIUzI1NiJ9.e30.", "invalid token"),
        ("Bearer !!!.!!!.!!!", "invalid credentials"),
    ],
)
def test_junk_headers(header, message):
    auth = make(api_keys={"key-1": "alice"}, admin_token=ADMIN, jwt_secret=SECRET)
    refused(auth, header, message)


@pytest.mark.parametrize("header", ["bearer key-1", "BEARER key-1", "  Bearer    key-1  ", "Bearer\tkey-1"])
def test_header_parsing_is_lenient_about_case_and_spaces(header):
    assert make(api_keys={"key-1": "alice"}).authenticate(header).user_id == "alice"


def test_error_messages_never_echo_credentials():
    auth = make(api_keys={"key-1": "alice"}, admin_token=ADMIN, jwt_secret=SECRET)
    for token in ("guess-" + ADMIN, hs_token(secret="x" * 40), "key-1" + "z" * 50):
        error = refused(auth, f"Bearer {token}")
        assert token not in str(error) and ADMIN not in str(error) and "key-1" not in error.message


def test_jwt_shaped_tokens_without_jwt_config_are_plain_bad_credentials():
    refused(make(api_keys={"key-1": "alice"}), f"Bearer {hs_token()}", "invalid credentials")


# ---- parse_api_keys, configuration -----------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("", {}),
        ("   ", {}),
        (None, {}),
        ("tok:alice", {"tok": "alice"}),
        (" tok1 : alice , tok2:bob ", {"tok1": "alice", "tok2": "bob"}),
        ("tok1:alice,,tok2:bob,", {"tok1": "alice", "tok2": "bob"}),
        ("tok:alice,tok:alice", {"tok": "alice"}),
        ("tok:google-oauth2|1234,tok2:a.b+c@example.com", {"tok": "google-oauth2|1234", "tok2": "a.b+c@example.com"}),
        ("tok:alice:pro, tok2:bob", {"tok": ("alice", "pro"), "tok2": "bob"}),
        ("tok:jwt:alice", {"tok": ("jwt", "alice")}),  # user `jwt` on plan `alice`: never a JWT user (`jwt:<sub>`)
    ],
)
def test_parse_api_keys(value, expected):
    assert parse_api_keys(value) == {token: owner if isinstance(owner, tuple) else (owner, None)
                                     for token, owner in expected.items()}


@pytest.mark.parametrize(
    "value",
    ["tok", "tok:", ":alice", " : ", "tok:alice,bad", "to k:alice", "tök:alice", "tok:alice,tok:bob",
     "tok:user:with:colons", "tok:alice:", "tok:alice:pro plan", "tok:alice:pro,tok:alice:free", "tok:John Doe", "tok:@admin", "tok:<img src=x onerror=alert(1)>",
     "tok:al'ice", "tok:" + "a" * 256],
)
def test_parse_api_keys_rejects_malformed_entries(value):
    with pytest.raises(ValueError) as info:
        parse_api_keys(value)
    assert "tok" not in str(info.value).replace("token", "")


def from_env(env: dict) -> Authenticator:
    return Authenticator.from_settings(AuthSettings.from_env(env))


def test_from_settings():
    env = {
        "API_KEYS": "key-1:alice",
        "ADMIN_TOKEN": f" {ADMIN} ",
        "JWT_SECRET": SECRET,
        "JWT_ISSUER": ISSUER,
        "JWT_AUDIENCE": "",
    }
    auth = from_env(env)
    assert auth.configured
    assert auth.authenticate("Bearer key-1").user_id == "alice"
    assert auth.authenticate(f"Bearer {ADMIN}").is_admin
    assert auth.authenticate(f"Bearer {hs_token(claims(iss=ISSUER, aud='any'))}").user_id == "jwt:user_2abc"
    assert not from_env({}).configured
    assert not from_env({"API_KEYS": " ", "ADMIN_TOKEN": "", "JWT_SECRET": ""}).configured
    refused(from_env({}), "Bearer anything", "invalid credentials")
    assert ADMIN not in repr(AuthSettings.from_env(env)) and SECRET not in repr(AuthSettings.from_env(env))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"jwks_url": "ftp://example.com/jwks.json"},
        {"jwks_url": "http://clerk.example.com/.well-known/jwks.json"},
        {"jwks_url": "file:///etc/passwd"},
        {"admin_token": "has space"},
        {"admin_token": "same", "api_keys": {"same": "alice"}},
        {"api_keys": {"tok": ""}},
    ],
)
def test_bad_configuration_fails_loudly(kwargs):
    with pytest.raises(ValueError):
        Authenticator(**kwargs)


def test_https_and_loopback_jwks_urls_are_accepted():
    for url in ("https://clerk.example.com/.well-known/jwks.json", "http://localhost:8080/j", "http://[::1]/j"):
        assert Authenticator(jwks_url=url).configured
