"""The demo's serving step: the trained student behind the endpoint, a few requests, the answers.

Goes through the same path as ``sentiray run`` with a ``stage: serve`` job: the
application is deployed on the local Ray cluster, called over HTTP, then removed.
"""

from __future__ import annotations

import base64
from typing import Any

DEMO_APP = "demo-student"
DEMO_PREFIX = "/demo"
# room for a whole chain (the demo student's run to 110-117 tokens): a cut one has no
# "Prediction" field, and its label would be guessed from the words it got to
CHAIN_TOKENS = 128


def _demo_requests(n: int) -> list[dict[str, Any]]:
    """Synthetic posts (text + drawn image), one of them aspect-level."""
    from sentiray.data import synthetic

    rows = synthetic.generate("msc", max(20, 4 * n), seed=7).splits["test"][: n - 1]
    rows += synthetic.generate("masc", 20, seed=7).splits["test"][:1]
    out = []
    for row in rows:
        req = {
            "text": row["text"],
            "image": base64.b64encode(row["image"]).decode(),
            "chain": True,
            "max_tokens": CHAIN_TOKENS,
        }
        if row.get("aspect"):
            req["aspect"] = row["aspect"]
        out.append({"request": req, "gold": row["label"]})
    return out


def _serve_running() -> bool:
    from ray.serve.context import _get_global_client

    return _get_global_client(raise_if_no_controller_running=False) is not None


def start_serve() -> bool:
    """Start Serve (controller and proxy) on the Ray cluster, at a free port, before the model to
    deploy exists (:func:`serve_and_query` then uses it); returns whether it started Serve (False:
    it ran already)."""
    from sentiray import runtime
    from sentiray.serving import app

    runtime.ensure_ray()
    if _serve_running():
        return False
    app.start_serve("127.0.0.1", runtime.free_port("127.0.0.1"))
    return True


def serve_and_query(
    model: str,
    n_requests: int = 3,
    port: int | None = None,
    chat: bool = True,
    api_key: str | None = None,
    stop_serve: bool | None = None,
) -> list[dict[str, Any]]:
    """Serve ``model`` (an HF folder, s3:// prefix or models:/ URI), send requests, return the answers.

    Returns one dict per request: ``{"request": ..., "gold": ..., "status": ..., "answer": ...}``;
    with ``chat`` the last one is an OpenAI chat completion. ``port`` defaults to a free one;
    if Serve already runs on this cluster, its own port is used. Whatever this function
    started (Ray, Serve, the application), it stops again; ``stop_serve=True`` stops a Serve
    that ran before too (one :func:`start_serve` started for it).
    """
    import ray
    import requests
    from ray import serve

    from sentiray import config, runtime
    from sentiray.serving import app

    started_ray = not ray.is_initialized()
    runtime.ensure_ray()
    serve_was_running = _serve_running()
    job = config.validate(
        {
            "stage": "serve",
            "serve": {
                "model": model,
                "port": port or runtime.free_port("127.0.0.1"),
                "app_name": DEMO_APP,
                "route_prefix": DEMO_PREFIX,
                "blocking": False,
                "endpoint": {"chain_max_new_tokens": CHAIN_TOKENS},
                "chat_max_new_tokens": 32,
                "min_replicas": 1,
                "max_replicas": 1,
            },
        },
        source="demo:serve",
    )
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    answers: list[dict[str, Any]] = []
    try:
        endpoint = app.run(job)["url"]
        for item in _demo_requests(n_requests):
            r = requests.post(f"{endpoint}/v1/sentiment", json=item["request"], headers=headers, timeout=120)
            answers.append({**item, "status": r.status_code, "answer": r.json()})
        if chat:
            body = {
                "model": job.serve.served_model_name,
                "max_tokens": 32,
                "messages": [{"role": "user", "content": "Is this post positive? 'What a lovely day at the beach!'"}],
            }
            r = requests.post(f"{endpoint}/v1/chat/completions", json=body, headers=headers, timeout=120)
            answers.append({"request": body, "gold": None, "status": r.status_code, "answer": r.json()})
    finally:
        if stop_serve or (stop_serve is None and not serve_was_running):
            serve.shutdown()  # its applications too
        else:
            serve.delete(DEMO_APP)
        if started_ray:
            ray.shutdown()
    from sentiray import console

    for a in answers:
        console.say(format_answer(a))
    return answers


def format_answer(item: dict[str, Any]) -> str:
    answer = item["answer"]
    if item["status"] != 200:
        return f"  HTTP {item['status']}: {answer}"
    if "choices" in answer:
        text = answer["choices"][0]["message"]["content"]
        return f"  chat: {text[:100]!r}  ({answer['usage']['completion_tokens']} tokens)"
    probs = ", ".join(f"{k} {v:.2f}" for k, v in answer["probabilities"].items())
    chain = (answer.get("chain") or "").replace("\n", " ")
    return (
        f"  {item['request']['text'][:50]!r}: {answer['label']} ({probs}), gold {item['gold']}, "
        f"chain says {answer.get('chain_label')}: {chain[:80]!r}  [batch {answer['timings']['batch_size']}, "
        f"{answer['timings']['total_ms']:.0f} ms]"
    )
