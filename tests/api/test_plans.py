"""Plans (`api/plans.py`): PLANS parsed once (a bad value stops the API with status 2), a user's plan from
their API key or their verified JWT only, each plan's in-flight and rate limits, and its weight in the fair
order, measured with a real worker service."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime

import jwt
import pytest

from api.auth import Authenticator, parse_api_keys
from api.plans import Plan, Plans, parse_plans
from api.settings import ConfigError, Settings
from tests import fakegemini as fg
from tests.servers import ROOT, Stack, free_port, wait_until

JWT_SECRET = "plans-test-hs256-secret-0123456789abcdef"
PLANS = "free:inflight=2,rate=5/minute;pro:weight=4,inflight=4,rate=100/minute"


def token(sub: str, **claims) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600, **claims}, JWT_SECRET, algorithm="HS256")


# ---- parsing ------------------------------------------------------------------------------------


def test_plans_are_parsed_with_the_global_limits_as_defaults():
    plans = parse_plans(" pro : weight=4, inflight=20, rate=300/minute ; free: ; team:inflight=7", 10, "120/minute")
    assert plans == {"pro": Plan("pro", 4, 20, "300/minute"), "free": Plan("free", 1, 10, "120/minute"),
                     "team": Plan("team", 1, 7, "120/minute")}


@pytest.mark.parametrize("value, says", [
    ("pro:weight=0", "weight must be a whole number from 1 to 100"),
    ("pro:weight=101", "weight must be"),
    ("pro:weight=2.5", "weight must be"),
    ("pro:weight=-1", "weight must be"),
    ("pro:inflight=0", "inflight must be"),
    ("pro:inflight=lots", "inflight must be"),
    ("pro:rate=lots", "rate must be one limit"),
    ("pro:rate=", "rate must be one limit"),
    ("pro:rate=5/fortnight", "rate must be one limit"),
    ("pro:speed=2", "unknown setting"),
    ("pro:weight", "unknown setting"),
    ("pro:weight=4,weight=5", "given twice"),
    ("pro:weight=4;pro:weight=2", "defined twice"),
    (":weight=4", "a plan name must be"),
    ("pro plan:weight=4", "a plan name must be"),
    ("<b>:weight=4", "a plan name must be"),
])
def test_bad_plans_are_refused_naming_the_setting(value, says):
    with pytest.raises(ConfigError) as info:
        Settings.load({"PLANS": value, "DEFAULT_PLAN": "pro", "SECRET_KEY": "k" * 32})
    assert str(info.value).startswith("PLANS") and says in str(info.value), str(info.value)


def test_the_default_plan_must_be_one_of_the_plans():
    with pytest.raises(ConfigError, match="DEFAULT_PLAN 'free' is not one of PLANS"):
        Settings.load({"PLANS": "pro:weight=4", "SECRET_KEY": "k" * 32})
    with pytest.raises(ConfigError, match="DEFAULT_PLAN must be"):
        Settings.load({"DEFAULT_PLAN": "a b", "SECRET_KEY": "k" * 32})


def test_without_plans_everyone_is_on_one_plan_with_the_global_limits():
    settings = Settings.load({"MAX_INFLIGHT_PER_USER": "7", "RATE_LIMIT": "9/minute", "SECRET_KEY": "k" * 32})
    plans = settings.plans
    assert plans.plans == {"free": Plan("free", 1, 7, "9/minute")} and plans.names is None
    assert plans.name_of("pro") == plans.name_of(None) == "free" and plans.of("pro") == plans.of(None)
    assert settings.rate_limit == "9/minute" and settings.max_inflight_per_user == 7


def test_an_api_key_names_its_plan_and_an_unknown_plan_is_a_configuration_error():
    plans = Plans.load(PLANS, "free", 10, "120/minute")
    assert parse_api_keys("k1:alice:pro,k2:bob", plans.names) == {"k1": ("alice", "pro"), "k2": ("bob", None)}
    with pytest.raises(ValueError, match="API_KEYS entry 2: plan 'gold' is not one of PLANS"):
        parse_api_keys("k1:alice:pro,k2:bob:gold", plans.names)
    assert parse_api_keys("k2:bob:gold") == {"k2": ("bob", "gold")}  # without PLANS any name: all one plan
    auth = Authenticator(api_keys=parse_api_keys("k1:alice:pro,k2:bob", plans.names), plan_of=plans.name_of)
    assert auth.authenticate("Bearer k1").plan == "pro" and auth.authenticate("Bearer k2").plan == "free"


def test_a_jwt_names_its_plan_in_the_plan_claim_only_once_verified(caplog):
    plans = Plans.load(PLANS, "free", 10, "120/minute")
    auth = Authenticator(jwt_secret=JWT_SECRET, plan_of=plans.name_of)
    assert auth.authenticate(f"Bearer {token('a', plan='pro')}").plan == "pro"
    assert auth.authenticate(f"Bearer {token('a')}").plan == "free"
    for odd in ("gold", "", "x" * 65, 4, ["pro"], {"name": "pro"}, None):  # unknown, or not a plan name
        assert auth.authenticate(f"Bearer {token('a', plan=odd)}").plan == "free", odd
    assert "names plan gold, which PLANS does not define" in caplog.text
    assert caplog.text.count("names plan gold") == 1  # once per name
    forged = jwt.encode({"sub": "a", "exp": int(time.time()) + 600, "plan": "pro"}, "x" * 40, algorithm="HS256")
    with pytest.raises(Exception):
        auth.authenticate(f"Bearer {forged}")
    named = Authenticator(jwt_secret=JWT_SECRET, plan_claim="https://inkq.example/plan", plan_of=plans.name_of)
    assert named.authenticate(f"Bearer {token('a', **{'https://inkq.example/plan': 'pro', 'plan': 'x'})}").plan == "pro"
    assert named.authenticate(f"Bearer {token('a', plan='pro')}").plan == "free"


REFUSED = {  # name: (environment, what the message says)
    "a weight of 0": ({"PLANS": "free:weight=0"}, b"PLANS: plan 'free': weight must be a whole number from 1 to 100"),
    "a bad rate": ({"PLANS": "free:rate=often"}, b"PLANS: plan 'free': rate must be one limit like 300/minute"),
    "no default plan": ({"PLANS": "pro:weight=4"}, b"DEFAULT_PLAN 'free' is not one of PLANS (pro)"),
    "a key's unknown plan": ({"PLANS": "free:weight=1", "API_KEYS": "tok:someone:gold"},
                             b"API_KEYS entry 1: plan 'gold' is not one of PLANS (free)"),
}


def test_the_api_exits_2_naming_a_bad_plans_setting(redis_url):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "REDIS_URL": redis_url, "API_KEYS": "tok:someone", "SECRET_KEY": "k" * 32, "PUBLIC_URL": "",
           "INKQ_DEV": "", "LOG_FORMAT": "text"}
    started = {name: subprocess.Popen([os.path.join(ROOT, "scripts", "start_api.sh")], cwd=ROOT,
                                      env={**env, "PORT": str(free_port()), **extra}, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT)
               for name, (extra, _) in REFUSED.items()}
    for name, proc in started.items():
        try:
            output, _ = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 2, (name, proc.returncode, output[-2000:])
        assert REFUSED[name][1] in output, (name, output[-2000:])


# ---- limits per plan, through HTTP (no worker: every job stays waiting) ------------------------------


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("plans"), "http://127.0.0.1:9", PLANS=PLANS, JWT_SECRET=JWT_SECRET,
                  API_KEYS="tok-free:free-user:free,tok-pro:pro-user:pro,tok-plain:plain-user,tok-pro2:pro-two:pro")
    yield stack
    stack.close()


def codes(api, bearer: str, n: int, **body) -> list:
    answers = []
    for _ in range(n):
        response = api.post("/generate", token=bearer, json={"operation": "ia-gen", "prompt": "rose", **body})
        answers.append(response.status_code if response.status_code != 429 else response.json()["code"])
    return answers


def test_each_plan_has_its_own_jobs_in_flight(planned):
    api = planned.api
    assert codes(api, "tok-free", 3) == [202, 202, "too_many_jobs"]
    refused = api.post("/generate", token="tok-free", json={"operation": "ia-gen", "prompt": "rose"})
    assert "You already have 2 jobs waiting or running" in refused.json()["error"]
    assert codes(api, "tok-pro", 5) == [202, 202, 202, 202, "too_many_jobs"]
    assert codes(api, "tok-plain", 3) == [202, 202, "too_many_jobs"]  # names no plan: DEFAULT_PLAN (free)
    assert codes(api, token("jwt-pro", plan="pro"), 5) == [202] * 4 + ["too_many_jobs"]
    assert codes(api, token("jwt-gold", plan="gold"), 3) == [202, 202, "too_many_jobs"]  # unknown: free's


def test_a_user_cannot_name_their_own_plan(planned):
    """Only the verified credential names a plan: a body field is refused, a header is ignored."""
    response = planned.api.post("/generate", token="tok-plain", json={"operation": "ia-gen", "prompt": "x",
                                                                     "plan": "pro"})
    assert response.status_code == 400 and "plan" in response.json()["error"]
    bearer = token("jwt-no-plan")
    answers = [planned.api.post("/generate", token=bearer, headers={"X-Plan": "pro", "X-Inkq-Plan": "pro"},
                                json={"operation": "ia-gen", "prompt": "x"}) for _ in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 429]  # free's two in flight


def test_each_plan_has_its_own_submission_rate(planned):
    """free: 5/minute, counted before the in-flight check; pro: 100/minute."""
    fresh = token("jwt-rate-free", plan="free")
    assert codes(planned.api, fresh, 6) == [202, 202] + ["too_many_jobs"] * 3 + ["rate_limited"]
    assert codes(planned.api, "tok-pro2", 7) == [202] * 4 + ["too_many_jobs"] * 3  # not rate limited


# ---- the fair order's weights, measured -------------------------------------------------------------


def test_pro_users_start_about_four_times_as_often_and_free_users_still_start(tmp_path):
    """5 pro users (weight 4) and 5 free users (weight 1) queue 6 jobs each before any worker runs, the free
    users first; of the first 25 starts 65-90% are pro, and every free user starts a job among the first 30."""
    pro = [f"pro{i}" for i in range(5)]
    free = [f"free{i}" for i in range(5)]
    keys = ",".join(f"tok-{u}:{u}:pro" for u in pro) + "," + ",".join(f"tok-{u}:{u}:free" for u in free)
    with fg.FakeGemini() as gemini:
        stack = Stack(tmp_path, gemini.url, API_KEYS=keys, PLANS="free:weight=1,inflight=10;pro:weight=4,inflight=10")
        try:
            owner = {}
            for user in free + pro:
                for _ in range(6):
                    response = stack.api.post("/generate", token=f"tok-{user}",
                                              json={"operation": "ia-gen", "prompt": "rose"})
                    assert response.status_code == 202, response.text
                    owner[response.json()["jobId"]] = user
            stack.workers(stencil=1, ia_gen=1)  # one slot: the start order is the order jobs are taken
            started = {}

            def thirty_started():  # the jobs not started yet start after these
                for job_id, user in owner.items():
                    if job_id not in started:
                        body = stack.api.get(f"/status/{job_id}", token=f"tok-{user}").json()
                        if body["startedAt"]:
                            started[job_id] = datetime.fromisoformat(body["startedAt"].replace("Z", "+00:00"))
                return len(started) >= 30
            wait_until(thirty_started, timeout=120, interval=0.5, what="30 jobs to start")
        finally:
            stack.close()
    order = [owner[job_id] for job_id in sorted(started, key=started.get)]
    share = sum(user in pro for user in order[:25]) / 25
    assert 0.65 <= share <= 0.90, order
    assert set(free) <= set(order[:30]), order
