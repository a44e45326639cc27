"""`inkq`: the command-line client of the HTTP API (installed as a console script).

    inkq generate PHOTO [--operation stencil|enhance|color-match|ia-gen] [--style S] [--line-weight W]
                        [--colors N] [--prompt TEXT] [--engine E] [--webhook-url URL] [--format png|svg]
                        [--wait] [-o OUT.png|OUT.svg]
                        [--retention-s N]
    inkq status ID | inkq jobs [--limit N] [--status WORD] | inkq cancel ID | inkq erase ID | inkq credits

It reads INKQ_URL and INKQ_TOKEN; `--url` and `--token` override them. `--wait` follows the job's
event stream (`/status/<id>/events`), falling back to polling `/status/<id>` if the stream breaks;
on a terminal it draws a progress bar with the stage (rich), otherwise it prints one plain line per
change. `--json` prints the API's JSON instead. Exit codes: 0 done, 1 the job failed or was
canceled, 2 usage or input error, 3 server or network error. It never shows a traceback.

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


def _line(status: dict) -> str:
    return f"{status['jobId']} {status['status']} {status.get('progress', 0)}% {status.get('stage', '')}".rstrip()


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
        key = (status["status"], status.get("progress"), status.get("stage"))
        if key == self.last:
            return
        self.last = key
        if self.mode == "bar":
            self.progress.update(self.task, completed=status.get("progress", 0), description=status.get("stage", ""),
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
                         ("format", fmt), ("retentionS", args.retention_s)):
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


def cmd_erase(client: Client, args) -> int:
    client.call("DELETE", f"/jobs/{args.job_id}/data")
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
    gen.add_argument("--retention-s", type=int, help="delete the job and its images this many seconds after it ends")
    gen.add_argument("--wait", action="store_true", help="follow the job until it ends")
    gen.add_argument("-o", "--output", help="save the result here, PNG or .svg (implies --wait)")
    gen.set_defaults(run=cmd_generate)
    for name, helptext, run in (("status", "a job's status", cmd_status), ("cancel", "cancel a job", cmd_cancel),
                                ("erase", "erase a job now: its record, input and outputs (canceled first)",
                                 cmd_erase)):
        one = sub.add_parser(name, help=helptext)
        one.add_argument("job_id")
        one.set_defaults(run=run)
    jobs = sub.add_parser("jobs", help="your jobs, newest first")
    jobs.add_argument("--limit", type=int, default=20)
    jobs.add_argument("--status", choices=["waiting", "active", "completed", "failed", "canceled"])
    jobs.set_defaults(run=cmd_jobs)
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
