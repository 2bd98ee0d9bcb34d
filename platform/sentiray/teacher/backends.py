"""Teacher backends: what answers the teacher's prompts.

All backends share one interface, ``backend.answer(requests) -> answers`` (same order,
same keys), so the rationale pipeline does not care who answers:

- :class:`HFBackend`: a local Hugging Face model, batched generation with left padding
  through :class:`~sentiray.models.generation.Generator` (the same code as evaluation and
  serving). Runs inside a Ray Data actor that loads the model once.
- :class:`OpenAIBackend`: any OpenAI-compatible chat-completions endpoint (vLLM, OpenAI,
  Ray Serve LLM, sentiray's own endpoint). Images go as data URLs. A bounded thread pool
  keeps at most ``concurrency`` requests in flight; 429, 5xx, timeouts and refused
  connections are retried with exponential backoff and full jitter, and every retry is
  counted by cause. The API key comes from an environment variable.
- :class:`VLLMBackend`: vLLM's offline engine on the GPUs of the actor, when vllm is
  installed; otherwise :func:`require_vllm` says so plainly before anything starts.

A request that cannot be answered gets an ``error`` of the form ``"category: detail"``
(``unreadable image: ...``, ``over-long text: ...``, ``teacher error: ...``); it never raises,
so one bad row does not stop the others. ``teacher error`` means the teacher failed (and a
later run may succeed); the other categories are about the row itself.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import os
import random
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sentiray.config import ConfigError, TeacherConfig

UNREADABLE_IMAGE = "unreadable image"
OVERLONG_TEXT = "over-long text"
TEACHER_ERROR = "teacher error"
# How servers say a prompt does not fit the model (vLLM: "maximum context length is ...",
# OpenAI: "context_length_exceeded"). Such a 4xx is the row's fault: retrying cannot help.
_OVERLONG = re.compile(r"context.length|too long|maximum context|reduce the length|too many tokens", re.IGNORECASE)


@dataclass
class Request:
    """One prompt for the teacher. ``key`` is unique within a call (e.g. ``"<row id>/chain"``)."""

    key: str
    prompt: str
    image: bytes | None = None
    max_new_tokens: int | None = None  # None: the backend's default


@dataclass
class Answer:
    key: str
    text: str | None = None
    tokens: int = 0  # new tokens generated
    error: str | None = None  # "category: detail" when there is no answer
    retries: int = 0
    retry_causes: dict[str, int] = field(default_factory=dict)  # "429", "5xx", "timeout", "connection"


class BackendUnavailable(ConfigError):
    """The configured backend cannot run here (e.g. vllm is not installed)."""


def _chunks(seq: Sequence[Any], n: int) -> list[Sequence[Any]]:
    return [seq[i : i + n] for i in range(0, len(seq), n)]


# ----------------------------------------------------------------------------- hf


class HFBackend:
    """A local HF model (folder or s3:// prefix), batched greedy or sampled generation."""

    def __init__(
        self,
        model_path: str,
        kind: str = "vlm",
        dtype: str = "float32",
        trust_remote_code: bool = False,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        batch_size: int = 8,
        seed: int | None = 0,
    ):
        import torch

        from sentiray.models.generation import Generator
        from sentiray.models.loading import load_model

        model, processor = load_model(
            model_path, kind=kind, dtype=dtype, trust_remote_code=trust_remote_code, for_generation=True
        )
        if torch.cuda.is_available():  # an actor given num_gpus sees its GPU(s) here
            model = model.to("cuda")
        self.generator = Generator(model, processor, max_new_tokens=max_new_tokens, temperature=temperature)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.batch_size = batch_size
        self.seed = seed

    def answer(self, requests: Sequence[Request]) -> list[Answer]:
        from sentiray.data import images

        out: list[Answer | None] = [None] * len(requests)
        # Prompts asking for the same length generate together, batch_size at a time.
        groups: dict[int, list[tuple[int, Request, Any]]] = defaultdict(list)
        for i, req in enumerate(requests):
            try:
                image = images.decode(req.image) if req.image else None
            except images.ImageError as exc:
                out[i] = Answer(req.key, error=f"{UNREADABLE_IMAGE}: {exc}")
                continue
            groups[req.max_new_tokens or self.max_new_tokens].append((i, req, image))
        for n_tokens, items in groups.items():
            for chunk in _chunks(items, self.batch_size):
                for i, answer in self._generate(chunk, n_tokens):
                    out[i] = answer
        return out  # type: ignore[return-value]

    def _generate(self, chunk, n_tokens: int) -> list[tuple[int, Answer]]:
        try:
            gen = self.generator.generate(
                [r.prompt for _, r, _ in chunk],
                [img for _, _, img in chunk],
                max_new_tokens=n_tokens,
                temperature=self.temperature,
                seed=self.seed,
            )
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory on one long batch
            if len(chunk) > 1:  # one at a time, so that one bad prompt does not sink its batch
                return [pair for item in chunk for pair in self._generate([item], n_tokens)]
            i, req, _ = chunk[0]
            return [(i, Answer(req.key, error=f"{TEACHER_ERROR}: {type(exc).__name__}: {exc}"))]
        return [(i, Answer(req.key, text=g.text, tokens=g.new_tokens)) for (i, req, _), g in zip(chunk, gen)]


# ----------------------------------------------------------------------------- openai-compatible


_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}


def image_data_url(data: bytes) -> str:
    """A data URL for image bytes; formats servers may not take are re-encoded as PNG.

    Raises :class:`~sentiray.data.images.ImageError` when the bytes are not an image.
    """
    from PIL import Image

    from sentiray.data import images

    image = images.decode(data)  # validates
    fmt = Image.open(io.BytesIO(data)).format
    if fmt not in _MIME:
        data, fmt = images.to_png(image), "PNG"
    return f"data:{_MIME[fmt]};base64,{base64.b64encode(data).decode('ascii')}"


def chat_messages(prompt: str, image: bytes | None) -> list[dict[str, Any]]:
    """OpenAI chat messages for one prompt: the image (a data URL) first, as in MulCoT-RD."""
    if image is None:
        return [{"role": "user", "content": prompt}]
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_data_url(image)}},
                {"type": "text", "text": prompt},
            ],
        }
    ]


def backoff_delay(
    attempt: int, base: float, cap: float, retry_after: float | None = None, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): full jitter, uniform in
    [0, min(cap, base * 2**attempt)], so that many clients do not retry in lockstep; a
    server's Retry-After (capped) is a floor."""
    rng = rng or random
    delay = rng.uniform(0, min(cap, base * (2**attempt)))
    if retry_after is not None:
        delay = max(delay, min(cap, retry_after))
    return delay


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:  # an HTTP date: rare from inference servers; fall back to our backoff
        return None


class OpenAIBackend:
    """An OpenAI-compatible ``/chat/completions`` endpoint, ``concurrency`` requests in flight."""

    def __init__(
        self,
        endpoint: str,
        model: str | None,
        api_key: str | None = None,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        concurrency: int = 8,
        timeout_s: float = 120,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        backoff_max_s: float = 20,
        seed: int | None = 0,
    ):
        self.url = endpoint.rstrip("/") + "/chat/completions"
        self.model = model
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.seed = seed
        self.concurrency = concurrency
        # The pool is the bound on requests in flight, shared by every call on this backend.
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="teacher-http")
        self._local = threading.local()

    def _session(self):
        import requests

        session = getattr(self._local, "session", None)
        if session is None:  # requests.Session is not thread-safe: one per thread, kept alive
            session = self._local.session = requests.Session()
        return session

    def body(self, req: Request) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": chat_messages(req.prompt, req.image),
            "max_tokens": req.max_new_tokens or self.max_new_tokens,
            "temperature": self.temperature,
        }
        if self.temperature > 0 and self.seed is not None:
            body["seed"] = self.seed
        return body

    def answer(self, requests: Sequence[Request]) -> list[Answer]:
        return list(self.pool.map(self._one, requests))

    def _one(self, req: Request) -> Answer:
        import requests as http

        from sentiray.data.images import ImageError

        try:
            body = self.body(req)
        except ImageError as exc:
            return Answer(req.key, error=f"{UNREADABLE_IMAGE}: {exc}")
        causes: Counter[str] = Counter()
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                resp = self._session().post(self.url, json=body, headers=self.headers, timeout=(10, self.timeout_s))
            except http.Timeout:
                cause, last = "timeout", f"no answer within {self.timeout_s:g}s"
            except http.ConnectionError as exc:
                cause, last = "connection", f"cannot connect to {self.url} ({type(exc).__name__})"
            else:
                if resp.status_code == 200:
                    return self._parse(req, resp, causes)
                detail = resp.text[:300].strip()
                if resp.status_code == 429 or resp.status_code >= 500:
                    cause = "429" if resp.status_code == 429 else "5xx"
                    last = f"HTTP {resp.status_code}: {detail}"
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
                else:  # 4xx: the request itself is wrong (bad model name, key, body); retrying cannot help
                    # A prompt too long for the model is this row's content; a bad key or model
                    # name is the set-up's, so it stays a teacher error and a fixed rerun retries it.
                    overlong = resp.status_code in (400, 413, 422) and _OVERLONG.search(detail)
                    category = OVERLONG_TEXT if overlong else TEACHER_ERROR
                    return Answer(
                        req.key,
                        error=f"{category}: HTTP {resp.status_code} from {self.url}: {detail}",
                        retries=sum(causes.values()),
                        retry_causes=dict(causes),
                    )
            if attempt == self.max_retries:
                break
            causes[cause] += 1
            time.sleep(backoff_delay(attempt, self.backoff_s, self.backoff_max_s, retry_after))
        return Answer(
            req.key,
            error=f"{TEACHER_ERROR}: gave up after {self.max_retries} retries (last: {last})",
            retries=sum(causes.values()),
            retry_causes=dict(causes),
        )

    def _parse(self, req: Request, resp, causes: Counter[str]) -> Answer:
        try:
            data = resp.json()
            text = data["choices"][0]["message"]["content"]
            tokens = int((data.get("usage") or {}).get("completion_tokens") or 0)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return Answer(
                req.key,
                error=f"{TEACHER_ERROR}: malformed chat-completions answer ({type(exc).__name__}: {exc}): "
                f"{resp.text[:200]}",
                retries=sum(causes.values()),
                retry_causes=dict(causes),
            )
        return Answer(
            req.key, text=(text or "").strip(), tokens=tokens, retries=sum(causes.values()), retry_causes=dict(causes)
        )


# ----------------------------------------------------------------------------- vllm


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def require_vllm() -> None:
    if not vllm_installed():
        raise BackendUnavailable(
            "teacher.backend 'vllm' needs the vllm package, which is not installed here: `pip install vllm` on a GPU "
            "cluster (CUDA). Without it use teacher.backend=hf (any HF model in a Ray Data actor pool) or "
            "teacher.backend=openai pointed at a vLLM server (`vllm serve MODEL`)."
        )


class VLLMBackend:
    """vLLM's offline engine in this process (the actor's GPUs): continuous batching over
    each call's prompts, images as data URLs in the chat messages."""

    def __init__(
        self,
        model_path: str,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        seed: int | None = 0,
        engine_kwargs: dict[str, Any] | None = None,
    ):
        require_vllm()
        from vllm import LLM

        from sentiray.models.loading import resolve_model_path

        kwargs = {"limit_mm_per_prompt": {"image": 1}, **(engine_kwargs or {})}
        self.llm = LLM(
            model=resolve_model_path(model_path),
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            seed=seed or 0,
            **kwargs,
        )
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.seed = seed

    def answer(self, requests: Sequence[Request]) -> list[Answer]:
        from vllm import SamplingParams

        from sentiray.data.images import ImageError

        out: list[Answer | None] = [None] * len(requests)
        todo, conversations, params = [], [], []
        for i, req in enumerate(requests):
            try:
                conversations.append(chat_messages(req.prompt, req.image))
            except ImageError as exc:
                out[i] = Answer(req.key, error=f"{UNREADABLE_IMAGE}: {exc}")
                continue
            todo.append(i)
            params.append(
                SamplingParams(
                    max_tokens=req.max_new_tokens or self.max_new_tokens, temperature=self.temperature, seed=self.seed
                )
            )
        if todo:
            try:
                results = self.llm.chat(conversations, sampling_params=params, use_tqdm=False)
            except Exception as exc:  # noqa: BLE001 - any engine failure becomes these requests' error
                for i in todo:
                    out[i] = Answer(requests[i].key, error=f"{TEACHER_ERROR}: {type(exc).__name__}: {exc}")
                return out  # type: ignore[return-value]
            for i, result in zip(todo, results):
                completion = result.outputs[0]
                out[i] = Answer(requests[i].key, text=completion.text.strip(), tokens=len(completion.token_ids))
        return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------- factory


def teacher_name(cfg: TeacherConfig) -> str:
    """What is recorded with every rationale: ``teacher.name``, else the model or endpoint model."""
    if cfg.name:
        return cfg.name
    if cfg.backend == "openai":
        return cfg.endpoint_model or cfg.endpoint or "openai"
    return cfg.model.path if cfg.model else cfg.backend


def make_backend(cfg: TeacherConfig, model_path: str | None = None):
    """The backend ``cfg`` describes. ``model_path``: the model's resolved location (default
    ``cfg.model.path``). The openai API key is read here, from ``cfg.api_key_env``."""
    if cfg.backend == "hf":
        return HFBackend(
            model_path or cfg.model.path,
            kind=cfg.model.kind,
            dtype=cfg.model.dtype,
            trust_remote_code=cfg.model.trust_remote_code,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
        )
    if cfg.backend == "openai":
        return OpenAIBackend(
            cfg.endpoint,
            cfg.endpoint_model,
            api_key=os.environ.get(cfg.api_key_env),
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            concurrency=cfg.concurrency,
            timeout_s=cfg.timeout_s,
            max_retries=cfg.max_retries,
            backoff_s=cfg.backoff_s,
            backoff_max_s=cfg.backoff_max_s,
            seed=cfg.seed,
        )
    if cfg.backend == "vllm":
        return VLLMBackend(
            model_path or cfg.model.path,
            dtype=cfg.model.dtype,
            trust_remote_code=cfg.model.trust_remote_code,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            seed=cfg.seed,
            engine_kwargs=cfg.engine_kwargs,
        )
    raise ConfigError(f"teacher.backend: unknown backend {cfg.backend!r}")
