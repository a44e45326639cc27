"""The fair order of a queue (`tasks/core/fairness.py`): users take turns, each user's jobs keep their order,
positions only fall while workers take, and queuePosition/etaS reach every place a user looks.

Most tests run on a Redis of their own that no worker serves, and take jobs with the worker's own take
(`fairness.take`, the script `InkqQueue.lmove` runs), so the order is observed one take at a time; the
last ones run real worker processes against the fake Gemini."""
from __future__ import annotations

import json
import threading
import time

import pytest
import redis as redis_lib
import requests

from tasks.core import fairness, keys
from tasks.core.queues import QUEUES
from tasks.runtime import recovery
from tests import fakegemini as fg
from tests.conftest import Api, base_config, drawing, photo
from tests.servers import ApiServer, RedisServer, wait_until

QUEUE = QUEUES["stencil"].name
CLAIMS = keys.claims_key("test-worker")
USERS = ("h", "a", "b", "c", "d", "p")
IMAGE = drawing((64, 64))


@pytest.fixture(scope="module")
def quiet_redis():
    """A Redis no worker serves: jobs wait until a test takes them."""
    server = RedisServer()
    yield server
    server.stop()


class Quiet:
    """The API on the quiet Redis, and the worker's take."""

    def __init__(self, api: Api, redis, store):
        self.api, self.redis, self.store = api, redis, store
        self.owner: dict[str, str] = {}

    def submit(self, user: str, n: int = 1) -> list[str]:
        ids = []
        for _ in range(n):
            response = self.api.submit(IMAGE, token=f"tok-{user}", engine="local")
            assert response.status_code == 202, response.text
            body = response.json()
            assert body["queuePosition"] >= 1 and "etaS" in body
            ids.append(body["jobId"])
            self.owner[body["jobId"]] = user
        return ids

    def take(self) -> str | None:
        got = fairness.take(self.redis, QUEUE, CLAIMS)
        return got.decode() if got is not None else None

    def status(self, job_id: str) -> dict:
        return self.api.get(f"/status/{job_id}", token=f"tok-{self.owner[job_id]}").json()

    def positions(self, ids) -> dict[str, int | None]:
        return {job_id: self.status(job_id)["queuePosition"] for job_id in ids}

    def order(self) -> list[str]:
        """Who owns each job in the order of the fair zset (as takes would go), without taking."""
        return [m.decode().split(":")[2] for m in self.redis.zrange(keys.fair_key(QUEUE), 0, -1)]


@pytest.fixture
def quiet(quiet_redis):
    from api import create_app

    client = redis_lib.Redis.from_url(quiet_redis.url)
    client.flushall()
    app = create_app(base_config(quiet_redis.url, API_KEYS=",".join(f"tok-{u}:{u}" for u in USERS),
                                 MAX_INFLIGHT_PER_USER=100, STATUS_CACHE_S=0))  # each read sees the last take
    server = ApiServer(app)
    yield Quiet(Api(server.url), client, app.extensions["inkq"].store)
    server.stop()


def test_users_take_turns_and_each_keeps_its_order(quiet):
    heavy = quiet.submit("h", 5)
    light = {user: quiet.submit(user)[0] for user in "abc"}
    assert quiet.positions(light.values()) == {light["a"]: 2, light["b"]: 3, light["c"]: 4}
    assert quiet.positions(heavy) == dict(zip(heavy, (1, 5, 6, 7, 8)))
    taken = [quiet.take() for _ in range(8)]
    assert quiet.take() is None
    assert taken == [heavy[0], light["a"], light["b"], light["c"], *heavy[1:]]
    assert quiet.redis.lrange(CLAIMS, 0, -1) == [t.encode() for t in taken]  # each landed in the claims list
    assert quiet.redis.llen(keys.queue_key(QUEUE)) == 0
    # nothing of the taken jobs is left in the order
    assert not quiet.redis.exists(keys.fair_key(QUEUE), keys.fair_waiting_key(QUEUE), keys.fair_users_key(QUEUE))


def test_positions_only_fall_while_workers_take(quiet):
    ids = quiet.submit("h", 4) + quiet.submit("a", 2) + quiet.submit("b") + quiet.submit("h", 2)
    before = quiet.positions(ids)
    assert sorted(before.values()) == list(range(1, len(ids) + 1))
    while True:
        taken = quiet.take()
        if taken is None:
            break
        assert before[taken] == 1  # the job at position 1 is the one taken
        now = quiet.positions(ids)
        for job_id, position in now.items():
            if job_id != taken and before[job_id] is not None and before[job_id] != 1:
                assert position == before[job_id] - 1, (before, now)
        assert now[taken] is None
        before = now


def test_a_job_moves_back_only_for_a_user_whose_turn_comes_first(quiet):
    heavy = quiet.submit("h", 5)
    light = quiet.submit("a") + quiet.submit("b")
    before = quiet.positions(heavy + light)
    more_heavy = quiet.submit("h", 3)  # the user with the most queued adds: nobody moves back
    assert quiet.positions(heavy + light) == before
    assert [quiet.status(i)["queuePosition"] for i in more_heavy] == [8, 9, 10]
    again = quiet.submit("a")  # a light user adds a second job: behind every user's first...
    after = quiet.positions(heavy + light)
    assert all(after[i] == before[i] for i in light + heavy[:2])  # ... so no first job, nor its own, moves back
    assert all(after[i] == before[i] + 1 for i in heavy[2:])  # the heavy user's third and later wait one turn more
    assert quiet.status(again[0])["queuePosition"] == before[heavy[2]]
    assert quiet.order() == ["h", "a", "b", "h", "a", "h", "h", "h", "h", "h", "h"]


def test_a_canceled_waiting_job_leaves_the_order(quiet):
    ids = quiet.submit("h", 3) + quiet.submit("a", 2)
    before = quiet.positions(ids)  # h1 a1 h2 a2 h3
    gone = ids[3]  # a's first job, position 2
    assert before[gone] == 2
    assert quiet.api.delete(f"/jobs/{gone}", token="tok-a").status_code == 200
    after = quiet.positions(ids)
    assert after[gone] is None and quiet.status(gone)["status"] == "canceled"
    for job_id in ids:
        if job_id != gone:
            assert after[job_id] == before[job_id] - (before[job_id] > 2)
    assert quiet.redis.hget(keys.fair_waiting_key(QUEUE), "a") == b"1"
    taken = [quiet.take() for _ in range(4)]
    assert gone not in taken and quiet.take() is None
    # a user whose waiting jobs were all canceled starts again at the virtual time, as a newcomer
    late = quiet.submit("a", 3)
    assert quiet.api.delete(f"/jobs/{late[0]}", token="tok-a").status_code == 200
    assert quiet.api.delete(f"/jobs/{late[1]}", token="tok-a").status_code == 200
    assert quiet.api.delete(f"/jobs/{late[2]}", token="tok-a").status_code == 200
    assert not quiet.redis.exists(keys.fair_key(QUEUE), keys.fair_waiting_key(QUEUE), keys.fair_users_key(QUEUE))
    quiet.submit("h", 2)
    fresh = quiet.submit("a")
    assert quiet.status(fresh[0])["queuePosition"] == 2


def test_ids_rq_pushes_itself_are_served(quiet):
    ids = quiet.submit("h", 3) + quiet.submit("a")
    first = quiet.take()
    assert first == ids[0]
    # the worker never got its reply: its release puts the id back at the head, outside the order
    released = quiet.redis.register_script(recovery.RELEASE_OWN)(keys=[CLAIMS, keys.queue_key(QUEUE)],
                                                                 args=recovery.RELEASE_OWN_ARGS)
    assert released == 1 and quiet.status(first)["queuePosition"] is None
    assert quiet.status(first)["status"] == "waiting"
    assert quiet.take() == first  # the head outside the order goes first, as rq would take it
    # an id rq pushes at the tail (a retry from its scheduler) is served once the ids before it are taken
    quiet.redis.rpush(keys.queue_key(QUEUE), first)
    later = quiet.submit("b")  # queued after it, and first in the fair order
    taken = [quiet.take() for _ in range(5)]
    assert quiet.take() is None
    assert sorted(taken) == sorted(ids[1:] + [first] + later)
    assert taken.index(first) == max(taken.index(i) for i in ids[1:]) + 1  # taken once it reached the head
    # a job that ran before and is queued again at the head (a retry, a re-run after a dead worker) takes its
    # user's next turn: it does not jump the others
    again = quiet.submit("h", 3) + quiet.submit("a")
    ran = quiet.take()
    assert ran == again[0]
    quiet.redis.hset(f"rq:job:{ran}", "started_at", "2030-01-01T00:00:00.000000Z")
    quiet.redis.lrem(CLAIMS, 1, ran)
    quiet.redis.lpush(keys.queue_key(QUEUE), ran)
    assert quiet.take() == again[3]  # a's job, whose turn came first
    assert quiet.status(ran)["queuePosition"] == 3 and quiet.status(ran)["status"] == "waiting"
    assert [quiet.take() for _ in range(3)] == [again[1], again[2], ran] and quiet.take() is None
    # an id deleted from the list behind the order's back (rq-dashboard) is skipped
    stale = quiet.submit("c", 2)
    quiet.redis.lrem(keys.queue_key(QUEUE), 1, stale[0])
    assert quiet.take() == stale[1] and quiet.take() is None
    assert not quiet.redis.exists(keys.fair_key(QUEUE), keys.fair_waiting_key(QUEUE))


def test_a_heavier_weight_gets_more_turns(quiet):
    image_free = [quiet.store.enqueue(f"{'f' * 30}{i:02d}", "a", "stencil", {"engine": "local"}, IMAGE, "image/png").id
                  for i in range(8)]
    pro = [quiet.store.enqueue(f"{'e' * 30}{i:02d}", "p", "stencil", {"engine": "local"}, IMAGE, "image/png",
                               weight=4).id for i in range(8)]
    taken = [quiet.take() for _ in range(10)]
    assert sum(t in pro for t in taken[:5]) == 4 and sum(t in image_free for t in taken[:5]) == 1
    assert [t for t in taken if t in pro] == pro[:len([t for t in taken if t in pro])]  # in their order


def test_admin_stats_count_users_and_every_waiting_job(quiet):
    quiet.submit("h", 3)
    quiet.submit("a")
    stats = quiet.api.get("/admin/queue-stats", token="admin-secret-token").json()[QUEUE]
    assert stats["waiting"] == 4 and stats["users"] == 2 and stats["runS"] is None
    quiet.take()
    stats = quiet.api.get("/admin/queue-stats", token="admin-secret-token").json()[QUEUE]
    assert stats["users"] == 2  # h still waits with two


def test_the_estimate():
    place = fairness.Place(position=7, run_s=6.0, slots=5, active=5)
    assert place.eta_s(QUEUE, active=False) == 14  # 7 ahead of it, 5 started per 6 s run, then its own run
    assert fairness.Place(2, 6.0, 5, 2).eta_s(QUEUE, active=False) == 6  # a free slot: it starts at once
    assert fairness.Place(1, None, 5, 5).eta_s(QUEUE, active=False) == round(1.2 * fairness.PRIOR_RUN_S[QUEUE])
    assert fairness.Place(1, 6.0, 0, 0).eta_s(QUEUE, active=False) is None  # no live worker
    assert fairness.Place(None, 6.0, 5, 5).eta_s(QUEUE, active=False) is None  # not in the order
    now = time.time()
    started = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(int(now) - 2))
    assert fairness.Place(None, 6.0, 5, 5).eta_s(QUEUE, active=True, started_at=started, now=int(now) + 0.2) == 4
    assert fairness.Place(None, 6.0, 5, 5).eta_s(QUEUE, active=True, started_at="2000-01-01T00:00:00.000Z") == 0


def test_light_users_go_ahead_of_a_heavy_one(make_api, workers, fake_gemini, redis):
    """Scaled down from the issue's 50 stencils at 6 s: 12 Gemini stencils at 0.4 s on 2 slots, then 4 users."""
    fake_gemini.default = fg.slow(0.4, fg.ok())
    run = str(time.monotonic_ns())[-6:]
    heavy_user, lights = f"heavy{run}", [f"light{run}{i}" for i in range(4)]
    api = make_api(API_KEYS=",".join(f"tok-{u}:{u}" for u in [heavy_user, *lights]), MAX_INFLIGHT_PER_USER=50,
                   GEMINI_API_KEY="test-key", GEMINI_BASE_URL=fake_gemini.url)
    small = photo((64, 64))
    heavy = []
    for _ in range(12):
        response = api.submit(small, token=f"tok-{heavy_user}", engine="gemini")
        assert response.status_code == 202, response.text
        heavy.append(response.json()["jobId"])
    time.sleep(1)
    light, events, follower = {}, [], None
    for user in lights:
        body = api.submit(small, token=f"tok-{user}", engine="gemini").json()
        assert body["queuePosition"] <= len(lights) + 1 and body["etaS"] is not None, body
        light[body["jobId"]] = user
        # the last light user follows its job's event stream (the longest wait)
        follower = threading.Thread(target=_follow, args=(api.url, body["jobId"], user, events), daemon=True)
    follower.start()
    seen: dict[str, list] = {job_id: [] for job_id in light}

    def ended():
        for job_id, user in light.items():
            status = api.get(f"/status/{job_id}", token=f"tok-{user}").json()
            seen[job_id].append(status["queuePosition"])
        done = [api.get(f"/status/{j}", token=f"tok-{heavy_user}").json() for j in heavy]
        return done if all(d["status"] == "completed" for d in done) else None
    done = wait_until(ended, timeout=90, interval=0.1, what="the heavy user's jobs")
    finals = {job_id: api.wait(job_id, token=f"tok-{user}") for job_id, user in light.items()}
    assert all(f["status"] == "completed" for f in finals.values()), finals
    for positions in seen.values():  # no submission after theirs: a light job's position only falls
        waiting = [p for p in positions if p is not None]
        assert waiting == sorted(waiting, reverse=True), positions
    starts = sorted(d["startedAt"] for d in done)
    assert max(f["startedAt"] for f in finals.values()) < starts[-4]  # each light job starts before the heavy's last 4
    assert [d["startedAt"] for d in done] == starts  # the heavy user's own jobs start in their order
    follower.join(timeout=30)
    assert events and events[0]["status"] == "waiting" and events[0]["queuePosition"] is not None
    assert events[0]["etaS"] is not None and events[-1]["status"] == "completed"
    waiting = [e["queuePosition"] for e in events if e["status"] == "waiting"]
    assert waiting == sorted(waiting, reverse=True) and len(set(waiting)) == len(waiting)
    for before, after in zip(events, events[1:]):  # a change of the place alone: at most once a second
        if before["status"] == after["status"] == "waiting":
            assert after["_at"] - before["_at"] >= 0.9, events
    assert all(e["queuePosition"] is None for e in events if e["status"] != "waiting")
    assert any(e["status"] == "active" and e["etaS"] is not None for e in events)
    stats = api.get("/admin/queue-stats", token="admin-secret-token").json()[QUEUE]
    assert stats["runS"] is not None and stats["runS"] >= 0.3


def _follow(url: str, job_id: str, user: str, events: list) -> None:
    with requests.get(f"{url}/status/{job_id}/events", headers={"Authorization": f"Bearer tok-{user}"},
                      stream=True, timeout=60) as response:
        for line in response.iter_lines(decode_unicode=True):
            if line and line.startswith("data: "):
                events.append({**json.loads(line[6:]), "_at": time.monotonic()})
                if events[-1]["status"] in ("completed", "failed", "canceled"):
                    return
