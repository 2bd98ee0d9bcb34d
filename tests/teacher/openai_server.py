"""A small OpenAI-compatible chat-completions server over a tiny HF model, with faults on demand.

Run as a script (a subprocess, so that tests can kill and restart it)::

    python tests/teacher/openai_server.py --model PATH --port 8123 \
        --p429 0.1 --p500 0.1 --pslow 0.05 --slow-s 3 --delay-s 0.05 --faults-log faults.txt

``POST /v1/chat/completions`` answers with the OpenAI schema (``choices[0].message.content``,
``usage.completion_tokens``); images come as data URLs. The model answers through
:class:`sentiray.models.generation.Generator`, one request at a time (a lock), after
``--delay-s`` of simulated network/queueing latency that requests spend concurrently.
Faults, drawn per request with a seeded RNG: HTTP 429, HTTP 500, or a slow answer
(``--slow-s`` before answering). Deterministic ones: ``--fail-if TEXT`` answers HTTP 500 to
every prompt containing TEXT (e.g. only the label-conditioned pass 2), and ``--answer TEXT``
replies TEXT instead of the model's generation (a teacher whose label is known). Each fault is appended to ``--faults-log`` once sent, so
that counts survive a kill. The port opens only once the model is loaded.

:class:`ServerProcess` starts, kills and restarts it from tests and benchmarks.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self

REPO = Path(__file__).resolve().parents[2]


FAULT_KNOBS = ("p429", "p500", "pslow", "slow_s", "delay_s", "retry_after", "fail_if", "answer")


class State:
    def __init__(self, args):
        from sentiray.models.generation import Generator
        from sentiray.models.loading import load_model

        model, processor = load_model(args.model, kind=args.kind, for_generation=True)
        self.generator = Generator(model, processor)
        self.args = args
        self.lock = threading.Lock()  # one generation at a time
        self.rng = random.Random(args.seed)
        self.rng_lock = threading.Lock()
        self.log_lock = threading.Lock()
        self.served = 0
        self.in_flight = 0  # chat requests being handled now, and the most seen at once
        self.max_in_flight = 0
        self.count_lock = threading.Lock()

    def draw_fault(self) -> str | None:
        a = self.args
        with self.rng_lock:
            r = self.rng.random()
        if r < a.p429:
            return "429"
        if r < a.p429 + a.p500:
            return "500"
        if r < a.p429 + a.p500 + a.pslow:
            return "slow"
        return None

    def log_fault(self, fault: str) -> None:
        if self.args.faults_log:
            with self.log_lock, open(self.args.faults_log, "a") as f:
                f.write(fault + "\n")


def parse_messages(body: dict):
    """(prompt text, PIL image or None) of the last user message."""
    from sentiray.data import images

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    content = [m for m in messages if m.get("role") == "user"][-1].get("content")
    if isinstance(content, str):
        return content, None
    texts, image = [], None
    for part in content or []:
        if part.get("type") == "text":
            texts.append(part.get("text", ""))
        elif part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            if not url.startswith("data:"):
                raise ValueError("this server takes images as data URLs only")
            image = images.decode(base64.b64decode(url.split(",", 1)[1]))
    return "\n".join(texts), image


def make_handler(state: State):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers
        disable_nagle_algorithm = True  # else headers and body in two packets wait on delayed ACKs (~40 ms)

        def log_message(self, *args):  # quiet
            pass

        def _send(self, code: int, obj: dict, headers: dict | None = None) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()

        def do_GET(self):
            if self.path in ("/health", "/v1/health"):
                self._send(200, {"status": "ok", "served": state.served, "max_in_flight": state.max_in_flight})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": state.args.name, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path == "/control":  # change fault settings at run time (tests)
                for key, value in json.loads(raw or b"{}").items():
                    if key == "max_in_flight":
                        state.max_in_flight = value  # reset the high-water mark
                    else:
                        setattr(state.args, key, value)
                return self._send(200, {k: getattr(state.args, k) for k in FAULT_KNOBS})
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            try:
                body = json.loads(raw)
                prompt, image = parse_messages(body)
            except Exception as exc:  # noqa: BLE001 - whatever we cannot read is a bad request
                return self._send(400, {"error": {"message": f"bad request: {exc}", "type": "invalid_request_error"}})
            with state.count_lock:
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            try:
                self._answer(body, prompt, image)
            finally:
                with state.count_lock:
                    state.in_flight -= 1

        def _answer(self, body: dict, prompt: str, image) -> None:
            fault = state.draw_fault()
            if state.args.fail_if and state.args.fail_if in prompt:
                fault = "500"
            try:
                if fault == "429":
                    headers = {"Retry-After": str(state.args.retry_after)} if state.args.retry_after is not None else {}
                    self._send(429, {"error": {"message": "rate limited (injected)", "type": "rate_limit"}}, headers)
                    return state.log_fault("429")
                if fault == "500":
                    self._send(500, {"error": {"message": "internal error (injected)"}})
                    return state.log_fault("500")
                if fault == "slow":
                    state.log_fault("slow")  # the client has likely hung up before the answer
                    time.sleep(state.args.slow_s)
                if state.args.delay_s:
                    time.sleep(state.args.delay_s)
                max_tokens = min(int(body.get("max_tokens") or 64), state.args.max_tokens_cap)
                temperature = float(body.get("temperature") or 0.0)
                with state.lock:
                    if state.args.answer is not None:
                        from sentiray.models.generation import Generated

                        out = Generated(text=state.args.answer, new_tokens=len(state.args.answer.split()))
                    else:
                        out = state.generator.generate(
                            [prompt], [image], max_new_tokens=max_tokens, temperature=temperature, seed=body.get("seed")
                        )[0]
                    state.served += 1
                prompt_tokens = len(state.generator.encoder.encode_prompt(prompt, image).input_ids)
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-{state.served}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model") or state.args.name,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": out.text},
                                "finish_reason": "length" if out.new_tokens >= max_tokens else "stop",
                            }
                        ],
                        "usage": {
                            "prompt_tokens": prompt_tokens,
                            "completion_tokens": out.new_tokens,
                            "total_tokens": prompt_tokens + out.new_tokens,
                        },
                    },
                )
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout) and closed the connection

    return Handler


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--kind", default="vlm")
    p.add_argument("--name", default="tiny-teacher")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--p429", type=float, default=0.0)
    p.add_argument("--p500", type=float, default=0.0)
    p.add_argument("--pslow", type=float, default=0.0)
    p.add_argument("--slow-s", type=float, default=3.0)
    p.add_argument("--delay-s", type=float, default=0.0)
    p.add_argument("--retry-after", type=float, default=None)
    p.add_argument("--fail-if", default=None, help="HTTP 500 for every prompt containing this text")
    p.add_argument("--answer", default=None, help="reply this text instead of generating")
    p.add_argument("--max-tokens-cap", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--faults-log", default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads for generation")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    state = State(args)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(state))
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"serving {args.model} on http://{args.host}:{args.port}/v1", flush=True)
    server.serve_forever()


class ServerProcess:
    """The server as a subprocess: start, wait until it answers, kill, restart (same port)."""

    def __init__(self, model: str, port: int, faults_log: str | None = None, **options):
        self.model, self.port, self.faults_log, self.options = model, port, faults_log, options
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120) -> ServerProcess:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--model", self.model, "--port", str(self.port)]
        if self.faults_log:
            cmd += ["--faults-log", self.faults_log]
        for key, value in self.options.items():
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        env = {**os.environ, "PYTHONPATH": str(REPO / "platform") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        # stderr to a file, not a pipe: a pipe nobody reads would block the server once full.
        self.log = Path(tempfile.mkdtemp(prefix="openai-server-")) / "stderr.log"
        with open(self.log, "w") as log:  # the child keeps its own copy of the file
            self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.kill()
        raise TimeoutError(f"server on port {self.port} did not come up in {timeout}s")

    def kill(self) -> None:
        """SIGKILL: the server dies mid-request, as a crashed endpoint does."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def control(self, **knobs) -> dict:
        """Change fault settings of the running server (``p429``, ``p500``, ``pslow``, ``slow_s``, ...)."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/control",
            data=json.dumps(knobs).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def health(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=10) as resp:
            return json.loads(resp.read())

    def faults(self) -> Counter:
        if not self.faults_log or not os.path.exists(self.faults_log):
            return Counter()
        return Counter(line.strip() for line in open(self.faults_log) if line.strip())

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


if __name__ == "__main__":
    main()
