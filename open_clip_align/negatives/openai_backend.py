"""``openai`` backend: any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp server, Ollama, hosted).

Standard library only (``urllib.request``): one POST ``{base_url}/chat/completions`` per request asking for
``n`` rewrites one per line (not the API's ``n``, which several servers ignore), sent from a thread pool of
``concurrency`` workers. Each attempt has a socket timeout; 429, 5xx, 408, connection errors, timeouts and
malformed bodies are retried with capped exponential backoff and jitter (``Retry-After`` honoured); a request
that still fails yields no candidates and is counted in ``stats``. The endpoint is checked once at
construction, so a wrong URL fails in seconds rather than after a day of empty rows.

The API key comes from the environment variable named by ``--api-key-env``; it is sent only in the
``Authorization`` header and never logged, written or put into an error message.
"""
import email.utils
import http.client
import json
import logging
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

from .base import BackendError, Request, register_backend
from .prompts import (Examples, build_messages, examples_from_args, load_examples, load_rules,
                      parse_completion, request_seed)

log = logging.getLogger(__name__)

_RETRY_STATUS = {408, 409, 425, 429}
_MAX_RETRY_AFTER = 120.0


class _AttemptFailed(Exception):
    """One failed attempt: ``reason`` is a short key for ``stats``; ``retry_after`` the server's hint."""

    def __init__(self, reason: str, retryable: bool, retry_after: Optional[float] = None, detail: str = ""):
        super().__init__(detail or reason)
        self.reason, self.retryable, self.retry_after = reason, retryable, retry_after


class OpenAIBackend:
    """Chat-completions client with bounded concurrency, timeouts and retries; see the module docstring.

    ``max_new_tokens`` is the budget per requested line: a request for ``n`` rewrites asks for
    ``max_new_tokens * n`` tokens.
    """

    name = "openai"

    def __init__(self, base_url: str, model: Optional[str] = None, api_key: Optional[str] = None,
                 concurrency: int = 8, timeout: float = 60, max_retries: int = 5, temperature: float = 0.0,
                 max_new_tokens: int = 60, examples: Optional[Examples] = None, n_examples: int = 4,
                 seed: int = 0, backoff_base: float = 0.5, backoff_cap: float = 30.0):
        if not base_url:
            raise BackendError("the openai backend needs an endpoint: pass --base-url or set OPENAI_BASE_URL "
                               "(e.g. http://127.0.0.1:8000/v1)")
        if not base_url.lower().startswith(("http://", "https://")):
            raise BackendError(f"--base-url {base_url}: expected an http:// or https:// URL of an OpenAI-compatible "
                               "endpoint (e.g. http://127.0.0.1:8000/v1)")
        if concurrency < 1 or timeout <= 0 or max_retries < 0 or max_new_tokens < 1:
            raise ValueError(f"openai backend: need concurrency >= 1, timeout > 0, max_retries >= 0, "
                             f"max_new_tokens >= 1 (got {concurrency}, {timeout}, {max_retries}, {max_new_tokens})")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key or None
        self.concurrency, self.timeout, self.max_retries = int(concurrency), float(timeout), int(max_retries)
        self.temperature, self.max_new_tokens = float(temperature), int(max_new_tokens)
        self.examples = examples if examples is not None else load_examples()
        self.rules = load_rules()
        self.n_examples, self.seed = int(n_examples), int(seed)
        self.backoff_base, self.backoff_cap = float(backoff_base), float(backoff_cap)
        self.stats: Dict = {"requests": 0, "retries": 0, "failed": 0, "errors": {}, "failures": {}}
        self._lock = threading.Lock()
        self._jitter = random.Random(self.seed)
        self._check_endpoint()
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="openai-neg")

    def __repr__(self):
        return f"OpenAIBackend(base_url={self.base_url!r}, model={self.model!r}, concurrency={self.concurrency})"

    def generate(self, requests: Sequence[Request]) -> List[List[str]]:
        """Candidates per request, in request order; a request that fails after all retries gives ``[]``."""
        return list(self._pool.map(self._one, requests))

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _one(self, request: Request) -> List[str]:
        seed = request_seed(self.seed, request)
        messages = build_messages(request.caption, request.neg_type, self.examples, self.n_examples,
                                  request.n, random.Random(seed), self.rules)
        payload = {"model": self.model, "messages": messages, "temperature": self.temperature,
                   "max_tokens": self.max_new_tokens * request.n, "seed": seed}
        result = self._complete(payload, request)
        if result is None:
            return []
        text, truncated = result
        return parse_completion(text, request.n, truncated=truncated)

    def _complete(self, payload: dict, request: Request) -> Optional[Tuple[str, bool]]:
        """The completion text and whether it hit the token limit, or None once every attempt failed."""
        self._count("requests")
        failure = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._count("retries")
                time.sleep(self._delay(attempt, failure.retry_after))
            try:
                return _read_choice(self._post("/chat/completions", payload, self.timeout))
            except _AttemptFailed as e:
                failure = e
                with self._lock:
                    self.stats["errors"][e.reason] = self.stats["errors"].get(e.reason, 0) + 1
                log.debug("request %s/%s attempt %d failed: %s", request.caption_id, request.neg_type,
                          attempt + 1, e)
                if not e.retryable:
                    break
        with self._lock:
            self.stats["failed"] += 1
            self.stats["failures"][failure.reason] = self.stats["failures"].get(failure.reason, 0) + 1
        log.warning("no candidates for caption %s (%s): %s after %d attempt(s)", request.caption_id,
                    request.neg_type, failure, attempt + 1)
        return None

    def _delay(self, attempt: int, retry_after: Optional[float]) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), _MAX_RETRY_AFTER)
        with self._lock:
            jitter = 0.5 + 0.5 * self._jitter.random()
        return min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1)) * jitter

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _headers(self) -> Dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _post(self, path: str, payload: dict, timeout: float) -> dict:
        body = json.dumps(payload).encode("utf-8")
        req = urllib.request.Request(self.base_url + path, data=body, headers=self._headers(), method="POST")
        return _send(req, timeout)

    def _check_endpoint(self) -> None:
        """GET /models (and take the model name from it when none was given), else a 1-token completion."""
        timeout = min(self.timeout, 10.0)
        url = self.base_url
        try:
            listing = _send(urllib.request.Request(url + "/models", headers=self._headers()), timeout)
        except _AttemptFailed as e:
            if e.reason in ("connection", "timeout"):
                raise BackendError(f"cannot reach OpenAI-compatible endpoint at {url}: {e}") from None
            if e.reason in ("http_401", "http_403"):
                raise BackendError(f"OpenAI-compatible endpoint at {url} rejected the request ({e}); "
                                   "check the key in the variable named by --api-key-env") from None
            listing = None
        if not isinstance(listing, dict):
            listing = None
        if self.model is None:
            data = (listing or {}).get("data")
            ids = [m.get("id") for m in data if isinstance(m, dict)] if isinstance(data, list) else []
            if not ids or not isinstance(ids[0], str):
                raise BackendError(f"no --model given and {url}/models lists no model to default to")
            self.model = ids[0]
            log.info("openai backend: using model %s served at %s", self.model, url)
        if listing is not None:
            return
        probe = {"model": self.model, "messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 1,
                 "temperature": 0.0}
        try:
            _read_choice(self._post("/chat/completions", probe, timeout))
        except _AttemptFailed as e:
            raise BackendError(f"cannot reach OpenAI-compatible endpoint at {url}: "
                               f"GET /models and a test POST /chat/completions both failed ({e})") from None


def _send(req: urllib.request.Request, timeout: float) -> dict:
    """One HTTP exchange returning the decoded JSON body; every failure becomes an ``_AttemptFailed``."""
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        retry_after = _parse_retry_after(e.headers.get("Retry-After") if e.headers else None)
        e.close()
        retryable = e.code in _RETRY_STATUS or e.code >= 500
        raise _AttemptFailed(f"http_{e.code}", retryable, retry_after, f"HTTP {e.code} {e.reason}") from None
    except (socket.timeout, TimeoutError) as e:
        raise _AttemptFailed("timeout", True, detail=f"timed out after {timeout:g} s ({e})") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (socket.timeout, TimeoutError)):
            raise _AttemptFailed("timeout", True, detail=f"timed out after {timeout:g} s") from None
        raise _AttemptFailed("connection", True, detail=str(e.reason)) from None
    except (ConnectionError, http.client.HTTPException, OSError) as e:
        raise _AttemptFailed("connection", True, detail=f"{type(e).__name__}: {e}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _AttemptFailed("malformed", True, detail=f"body is not JSON: {raw[:80]!r}") from None


def _read_choice(body) -> Tuple[str, bool]:
    """``(content, truncated)`` of the first choice; a body without one is a malformed (retryable) reply."""
    try:
        choice = body["choices"][0]
        content = choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise _AttemptFailed("malformed", True, detail="no choices[0].message.content in the reply") from None
    if not isinstance(content, str):
        raise _AttemptFailed("malformed", True, detail="choices[0].message.content is not a string")
    return content, choice.get("finish_reason") == "length"


def _parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


@register_backend("openai")
def _factory(args) -> OpenAIBackend:
    """Build from the CLI namespace; the key is read from the variable named by ``--api-key-env``."""
    key_env = getattr(args, "api_key_env", None) or "OPENAI_API_KEY"
    return OpenAIBackend(
        base_url=getattr(args, "base_url", None) or os.environ.get("OPENAI_BASE_URL"),
        model=getattr(args, "model", None),
        api_key=os.environ.get(key_env),
        concurrency=getattr(args, "concurrency", 8),
        timeout=getattr(args, "timeout", 60),
        max_retries=getattr(args, "max_retries", 5),
        temperature=getattr(args, "temperature", 0.0),
        max_new_tokens=getattr(args, "max_new_tokens", 60),
        examples=examples_from_args(args),
        n_examples=getattr(args, "n_examples", 4),
        seed=getattr(args, "seed", 0),
    )
