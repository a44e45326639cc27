"""`inkq`: the command-line client of the HTTP API (installed as a console script).

    inkq generate PHOTO [--operation stencil|enhance|color-match|ia-gen] [--style S] [--line-weight W]
                        [--colors N] [--prompt TEXT] [--engine E] [--webhook-url URL] [--format png|svg]
                        [--max-wait-s S] [--retention-s S] [--wait] [-o OUT.png|OUT.svg]
    inkq status ID | inkq jobs [--limit N] [--status WORD] | inkq cancel ID | inkq credits
    inkq erase ID | inkq erase --user USER_ID (admin)

It reads INKQ_URL and INKQ_TOKEN; `--url` and `--token` override them. `--wait` follows the job's
event stream (`/status/<id>/events`), falling back to polling `/status/<id>` if the stream breaks;
on a terminal it draws a progress bar with the stage (rich), otherwise it prints one plain line per
change; while a job waits it shows its place in line and the estimated time to its result, and
while it runs the estimate (`queuePosition`, `etaS`). `--json` prints the API's JSON instead.
Exit codes: 0 done, 1 the job failed or was canceled, 2 usage or input error, 3 server or network
error. It never shows a traceback.

Only `requests` and `rich` are used: the client imports nothing of the server.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from dataclasses import dataclass
from urllib.parse import quote

import requests

from .formats import sniff

DONE, FAILED, USAGE, SERVER = 0, 1, 2, 3
TERMINAL = ("completed", "failed", "canceled")
ACCEPTED = ("jpeg", "png", "webp")
POLL_S = 1.0


class Exit(Exception):
    """Stop with this exit code and message (on stderr)."""

    def __init__(self, code: int, message: str = ""):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Client:
    """The API at `url`, as the user of `token`."""

    url: str
    token: str | None
    timeout: float = 30.0

    def __post_init__(self):
        self.http = requests.Session()
        if self.token:
            self.http.headers["Authorization"] = f"Bearer {self.token}"
        self.http.headers["User-Agent"] = "inkq-cli"

    def call(self, method: str, path: str, **kwargs) -> dict:
        """One request; the JSON answer, or Exit with the API's error."""
        try:
            response = self.http.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise Exit(SERVER, f"cannot reach {self.url}: {exc.__class__.__name__}") from None
        return _answer(response)

    def stream(self, job_id: str):
        """The status objects of the job's event stream, as they come."""
        try:
            with self.http.get(f"{self.url}/status/{job_id}/events", stream=True, timeout=(10, 60)) as response:
                if response.status_code != 200:
                    _answer(response)
                for line in response.iter_lines(decode_unicode=True):
                    if line and line.startswith("data:"):
                        yield json.loads(line[5:].strip())
        except (requests.RequestException, ValueError):
            return

    def download(self, url: str, path: str) -> None:
        """Save a result (a signed URL or an API path) to `path`.

        The Bearer token goes only to the API: a presigned URL of the S3 store carries its own
        signature, and S3 refuses a request with a second authorization (400 InvalidArgument)."""
        target = url if url.startswith("http") else self.url + url
        own = target.startswith(self.url.rstrip("/") + "/")
        try:
            if own:
                response = self.http.get(target, timeout=self.timeout)
            else:
                response = requests.get(target, timeout=self.timeout, headers={"User-Agent": "inkq-cli"})
        except requests.RequestException as exc:
            raise Exit(SERVER, f"cannot download the result: {exc.__class__.__name__}") from None
        if response.status_code != 200:
            _answer(response)
        try:
            with open(path, "wb") as f:
                f.write(response.content)
        except OSError as exc:
            raise Exit(USAGE, f"cannot write {path}: {exc.strerror}") from None


def _answer(response: requests.Response) -> dict:
    if response.status_code == 204:  # done, nothing to say (an erasure)
        return {}
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code < 400 and isinstance(body, dict):
        return body
    if isinstance(body, dict) and "error" in body:
        message = f"{body['error']} ({body.get('code', response.status_code)})"
    else:
        message = f"the server answered {response.status_code}"
    code = SERVER if response.status_code >= 500 or response.status_code in (401, 403, 429) else USAGE
    raise Exit(code, message)


def _image_field(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise Exit(USAGE, f"cannot read {path}: {exc.strerror}") from None
    if sniff(data) not in ACCEPTED:
        raise Exit(USAGE, f"{path} is not a JPEG, PNG or WebP image")
    return base64.b64encode(data).decode()


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ... 11th, 12th, 13th, 21st ..."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def about(seconds: float) -> str:
    """An estimate as a person says it: 'about 8 s', 'about 40 s' (5 s steps), 'about 3 min'."""
    if seconds < 10:
        return f"about {max(1, round(seconds))} s"
    if seconds < 90:
        return f"about {5 * round(seconds / 5)} s"
    if seconds < 5400:
        return f"about {round(seconds / 60)} min"
    return f"about {round(seconds / 3600)} h"


def wait_text(status: dict) -> str:
    """Where a job stands: 'next in line, about 8 s' while waiting, 'about 12 s left' while active,
    '' when the server says nothing (`queuePosition` and `etaS` null or absent)."""
    position, eta = status.get("queuePosition"), status.get("etaS")
    eta = eta if isinstance(eta, (int, float)) and not isinstance(eta, bool) and eta >= 0 else None
    if status.get("status") == "waiting":
        parts = []
        if isinstance(position, int) and not isinstance(position, bool) and position >= 1:
            parts.append("next in line" if position == 1 else f"{ordinal(position)} in line")
        if eta is not None:
            parts.append(about(eta))
        return ", ".join(parts)
    if status.get("status") == "active" and eta is not None:
        return f"{about(eta)} left"
    return ""


def _line(status: dict) -> str:
    where = wait_text(status)
    if status["status"] == "waiting" and where:
        stage = status.get("stage") or "queued"
        return f"{status['jobId']} waiting, {'' if stage == 'queued' else stage + ', '}{where}"
    line = f"{status['jobId']} {status['status']} {status.get('progress', 0)}% {status.get('stage', '')}".rstrip()
    return f"{line}, {where}" if where else line


class Follower:
    """Shows a job's progress: a rich bar on a terminal, plain lines otherwise, nothing with --json."""

    def __init__(self, mode: str):
        self.mode = mode
        self.last = None
        self.progress = self.task = None

    def __enter__(self):
        if self.mode == "bar":
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("[bold]{task.fields[word]}"), BarColumn(), TaskProgressColumn(),
                                     TextColumn("{task.description}"), TimeElapsedColumn(), transient=False,
                                     console=_console())
            self.progress.start()
            self.task = self.progress.add_task("queued", total=100, word="waiting")
        return self

    def show(self, status: dict) -> None:
        where = wait_text(status)
        key = (status["status"], status.get("progress"), status.get("stage"), where)
        if key == self.last:
            return
        self.last = key
        if self.mode == "bar":
            stage = status.get("stage", "")
            self.progress.update(self.task, completed=status.get("progress", 0),
                                 description=f"{stage}, {where}" if stage and where else stage or where,
                                 word=status["status"])
        elif self.mode == "lines":
            print(_line(status), flush=True)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()


def _console():
    from rich.console import Console

    return Console(stderr=True)


def follow(client: Client, job_id: str, follower: Follower) -> dict:
    """Follow the job until it ends: its event stream, then polling if the stream breaks."""
    status = None
    for status in client.stream(job_id):
        follower.show(status)
        if status["status"] in TERMINAL:
            return status
    while True:
        status = client.call("GET", f"/status/{job_id}")
        follower.show(status)
        if status["status"] in TERMINAL:
            return status
        time.sleep(POLL_S)


def cmd_generate(client: Client, args) -> int:
    body = {"operation": args.operation}
    if args.photo:
        body["image"] = _image_field(args.photo)
    elif args.operation != "ia-gen":
        raise Exit(USAGE, f"{args.operation} needs a PHOTO")
    svg_out = bool(args.output and args.output.lower().endswith(".svg"))
    fmt = "svg" if svg_out else args.format
    for field, value in (("style", args.style), ("lineWeight", args.line_weight), ("colors", args.colors),
                         ("prompt", args.prompt), ("engine", args.engine), ("webhookUrl", args.webhook_url),
                         ("format", fmt), ("maxWaitS", args.max_wait_s), ("retentionS", args.retention_s)):
        if value is not None:
            body[field] = value
    accepted = client.call("POST", "/generate", json=body)
    job_id = accepted["jobId"]
    if not (args.wait or args.output):
        _print(args, accepted, job_id)
        return DONE
    mode = "json" if args.json else ("bar" if sys.stderr.isatty() else "lines")
    if mode != "json" and mode != "bar":
        print(f"{job_id} queued on {accepted['queue']}", flush=True)
    with Follower(mode) as follower:
        final = follow(client, job_id, follower)
    if final["status"] == "completed" and args.output:
        client.download(final["result"]["svg" if svg_out else "image"], args.output)
    if args.json:
        print(json.dumps(final))
    elif final["status"] == "completed":
        print(f"{job_id} completed" + (f": saved {args.output}" if args.output else f": {final['result']['image']}"))
    else:
        print(f"{job_id} {final['status']}: {final.get('error') or ''}".rstrip(), file=sys.stderr)
    return DONE if final["status"] == "completed" else FAILED


def _print(args, body: dict, text: str) -> None:
    print(json.dumps(body) if args.json else text)


def cmd_status(client: Client, args) -> int:
    status = client.call("GET", f"/status/{args.job_id}")
    _print(args, status, _line(status) + (f" error: {status['error']}" if status.get("error") else ""))
    return FAILED if status["status"] in ("failed", "canceled") else DONE


def cmd_jobs(client: Client, args) -> int:
    query = {"limit": args.limit} | ({"status": args.status} if args.status else {})
    body = client.call("GET", "/jobs", params=query)
    if args.json:
        print(json.dumps(body))
    else:
        for status in body["jobs"]:
            print(f"{_line(status)}  {status.get('createdAt') or ''}")
    return DONE


def cmd_cancel(client: Client, args) -> int:
    body = client.call("DELETE", f"/jobs/{args.job_id}")
    _print(args, body, f"{body['jobId']} {body['status']}")
    return DONE


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def cmd_erase(client: Client, args) -> int:
    if bool(args.job_id) == bool(args.user):
        raise Exit(USAGE, "inkq erase: give a job id, or --user USER_ID (admin)")
    if args.user:
        body = client.call("DELETE", f"/admin/users/{quote(args.user, safe='')}/data")
        _print(args, body, f"{args.user}: erased {_count(body['jobs'], 'job')} and {_count(body['objects'], 'object')}")
    else:
        client.call("DELETE", f"/jobs/{quote(args.job_id, safe='')}/data")
        _print(args, {"jobId": args.job_id, "erased": True}, f"{args.job_id} erased")
    return DONE


def cmd_credits(client: Client, args) -> int:
    body = client.call("GET", "/credits")
    _print(args, body, str(body["balance"]) if body.get("enabled", True) else "credits are off on this server")
    return DONE


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise Exit(USAGE, f"{self.prog}: {message}")


def parser() -> argparse.ArgumentParser:
    """The command line."""
    top = _Parser(prog="inkq", description="Command-line client for an inkq API (INKQ_URL, INKQ_TOKEN).")
    top.add_argument("--url", help="API base URL (default: $INKQ_URL, else http://127.0.0.1:8000)")
    top.add_argument("--token", help="Bearer token (default: $INKQ_TOKEN)")
    top.add_argument("--json", action="store_true", help="print the API's JSON")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    gen = sub.add_parser("generate", help="submit a job")
    gen.add_argument("photo", nargs="?", help="JPEG, PNG or WebP (not needed for ia-gen)")
    gen.add_argument("--operation", default="stencil", choices=["stencil", "enhance", "color-match", "ia-gen"])
    gen.add_argument("--style", choices=["standard", "fine", "bold", "topographic"])
    gen.add_argument("--line-weight", type=float)
    gen.add_argument("--colors", type=int)
    gen.add_argument("--prompt")
    gen.add_argument("--engine", choices=["auto", "local", "gemini"])
    gen.add_argument("--webhook-url")
    gen.add_argument("--format", choices=["png", "svg"], help="stencil: also an SVG (implied by -o NAME.svg)")
    gen.add_argument("--max-wait-s", type=int, metavar="S",
                     help="cancel the job (never run, never charged) if it has not started S seconds after submission")
    gen.add_argument("--retention-s", type=int, metavar="S",
                     help="delete the job, its inputs and results S seconds after it ends (60 up to the server's max)")
    gen.add_argument("--wait", action="store_true", help="follow the job until it ends")
    gen.add_argument("-o", "--output", help="save the result here, PNG or .svg (implies --wait)")
    gen.set_defaults(run=cmd_generate)
    for name, helptext, run in (("status", "a job's status", cmd_status), ("cancel", "cancel a job", cmd_cancel)):
        one = sub.add_parser(name, help=helptext)
        one.add_argument("job_id")
        one.set_defaults(run=run)
    jobs = sub.add_parser("jobs", help="your jobs, newest first")
    jobs.add_argument("--limit", type=int, default=20)
    jobs.add_argument("--status", choices=["waiting", "active", "completed", "failed", "canceled"])
    jobs.set_defaults(run=cmd_jobs)
    erase = sub.add_parser("erase", help="erase a job now: its record, input and outputs (canceled first)")
    erase.add_argument("job_id", nargs="?")
    erase.add_argument("--user", metavar="USER_ID", help="admin: erase everything of this user")
    erase.set_defaults(run=cmd_erase)
    sub.add_parser("credits", help="your credit balance").set_defaults(run=cmd_credits)
    for p in sub.choices.values():  # --json, --url and --token also after the command
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
        p.add_argument("--url", default=argparse.SUPPRESS)
        p.add_argument("--token", default=argparse.SUPPRESS)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit code."""
    try:
        args = parser().parse_args(argv)
        client = Client((args.url or os.environ.get("INKQ_URL") or "http://127.0.0.1:8000").rstrip("/"),
                        args.token or os.environ.get("INKQ_TOKEN"))
        return args.run(client, args)
    except Exit as exc:
        if exc.message:
            print(f"inkq: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("inkq: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - never a traceback
        print(f"inkq: unexpected error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return SERVER


if __name__ == "__main__":
    sys.exit(main())
