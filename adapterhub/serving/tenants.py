"""Tenants on one server (``adapterhub serve --auth keys``): who is calling, what they may use, how fast.

* :class:`Caller` — the authenticated caller of one request (its key, or the server's own all-access
  ``--api-key``), set by the auth dependency in :data:`current_caller` and in the ASGI scope, so the
  services check scopes and the middleware adds the rate-limit headers to the response.
* :class:`KeyRing` — the keys of the registry's database, held in memory and re-read every
  ``refresh_s`` (0.5 s) off the event loop, so a revocation or scope change made on any machine is seen
  by every replica within a second, and checking a key costs a dict lookup. An unknown secret triggers
  at most one extra re-read per ``refresh_s`` (a key created a moment ago works at once; random
  secrets cannot make the server hammer the database).
* Rate limits — requests and tokens per key over a sliding 60 s window. Each replica keeps an exact log
  of what it admitted and, with the refresh, publishes its counts to the registry and reads the other
  replicas' (``key_windows``): a replica admits a request when its own count plus the others' last
  published counts stay within the limit. One replica is exact under any concurrency (admission is a
  synchronous step on the event loop); N replicas may together exceed a limit by what the others
  admitted since their last publication (at most ``refresh_s`` of traffic each).
* Tokens: a generation request reserves prompt tokens + its completion budget (``max_tokens`` × choices)
  at admission and is charged what it actually used when it ends, so concurrent requests cannot burst past
  ``--tpm``; a request whose reservation alone exceeds the limit is a 400 naming it.
* Usage — requests and tokens per key, model version and UTC day, flushed to the registry with the
  refresh (``adapterhub keys usage``); per-key Prometheus series are labelled by key name, never the secret.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import logging
import math
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from adapterhub.errors import AdapterHubError, AuthenticationError, ModelNotFoundError, UserInputError
from adapterhub.refs import parse_ref
from adapterhub.registry.keys import KeyEvent, KeyRecord, UsageRow, hash_secret
from adapterhub.registry.keytables import WINDOW_S

log = logging.getLogger(__name__)


class RateLimitError(AdapterHubError):
    """A key's requests or tokens per minute are used up; ``headers`` say when to retry."""

    exit_code = 2
    http_status = 429
    error_type = "requests"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, headers: dict[str, str], kind: str = "requests") -> None:
        super().__init__(message)
        self.headers = headers
        self.error_type = kind


@dataclass
class Caller:
    """Who sent this request: a key of the registry, or (``key`` None) the server's all-access key."""

    key: KeyRecord | None = None
    admin: bool = False
    headers: dict[str, str] = field(default_factory=dict)  # added to the response (x-ratelimit-*)

    @property
    def name(self) -> str:
        return self.key.name if self.key is not None else "-"


current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("current_caller", default=None)


def model_name(model: str, base_names: set[str] | frozenset[str], base_name: str) -> str | None:
    """The adapter (or base) name a ``model`` string is about; None when it is not a well-formed ref."""
    if model in base_names:
        return base_name
    try:
        return parse_ref(model).name
    except ValueError:
        return None


def check_scope(model: str, base_names: set[str] | frozenset[str], base_name: str) -> None:
    """404, worded as for a model that does not exist, when this request's key may not use ``model``."""
    caller = current_caller.get()
    if caller is None or caller.key is None:
        return
    name = model_name(model, base_names, base_name)
    if name is not None and not caller.key.allows(name):  # the base is named as the caller named it
        shown = model if model in base_names else name
        raise ModelNotFoundError(f"The model '{model}' does not exist: no adapter named '{shown}' in the registry")


def visible(name: str) -> bool:
    """Whether this request's caller may see the model ``name`` (for listings)."""
    caller = current_caller.get()
    return caller is None or caller.key is None or caller.key.allows(name)


@dataclass
class Charge:
    """What one admitted request counts against its key: one request and its tokens (reserved, then actual)."""

    key: str
    at: float
    tokens: int
    settled: bool = False
    counted: bool = False  # in its key's window (until it is a minute old)


class Window:
    """A key's admitted requests of the last minute, oldest first, with their token total kept current
    (admission costs O(1) whatever the limits)."""

    def __init__(self) -> None:
        self.charges: deque[Charge] = deque()
        self.tokens = 0

    def __len__(self) -> int:
        return len(self.charges)

    def prune(self, now: float) -> None:
        while self.charges and self.charges[0].at <= now - WINDOW_S:
            old = self.charges.popleft()
            old.counted = False
            self.tokens -= old.tokens

    def add(self, charge: Charge) -> None:
        self.charges.append(charge)
        charge.counted = True
        self.tokens += charge.tokens

    def retoken(self, charge: Charge, tokens: int) -> None:
        """Replace a charge's tokens (its reservation by what it used)."""
        if charge.counted:
            self.tokens += tokens - charge.tokens
        charge.tokens = tokens

    def remove(self, charge: Charge) -> None:
        if charge.counted:  # a refund: rare, and the charge is recent (near the end)
            self.charges.remove(charge)
            charge.counted = False
            self.tokens -= charge.tokens

    def reset_in(self, now: float) -> float:
        """Seconds until the oldest counted request leaves the window."""
        return max(self.charges[0].at + WINDOW_S - now, 0.001) if self.charges else 0.0


def _reset(seconds: float) -> str:
    """OpenAI's reset format: 1s, 6m0s, 250ms."""
    if seconds < 1:
        return f"{max(int(seconds * 1000), 1)}ms"
    s = math.ceil(seconds)
    return f"{s // 60}m{s % 60}s" if s >= 60 else f"{s}s"


class KeyRing:
    """The registry's keys in memory, the rate limiter and the usage meter of one server."""

    def __init__(self, store: Any, call: Any, metrics: Any, *, refresh_s: float = 0.5) -> None:
        self.store = store
        self._call = call  # runs registry I/O off the event loop with a time limit
        self.metrics = metrics
        self.refresh_s = refresh_s
        self.replica = uuid.uuid4().hex[:12]
        self._by_hash: dict[str, KeyRecord] = {}
        self._loaded_at = -math.inf
        self._refreshing: asyncio.Task[None] | None = None
        self._refresh_started = -math.inf
        self._log: dict[str, Window] = {}
        self._others: dict[str, tuple[int, int]] = {}
        self._usage: dict[tuple[str, str, str], list[int]] = {}
        self._last_used: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        from prometheus_client import Counter

        self.requests = Counter("adapterhub_key_requests", "Requests by API key name and HTTP status.",
                                ["key", "status"], registry=metrics.registry)
        self.tokens = Counter("adapterhub_key_tokens", "Tokens by API key name (prompt, completion).",
                              ["key", "kind"], registry=metrics.registry)

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        try:
            await self._sync()
        except Exception as e:  # noqa: BLE001 - shutting down: say what was not written, do not fail
            log.warning("key usage not written at shutdown: %s", e)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self._sync()
            except Exception as e:  # noqa: BLE001 - the registry may be away: keep the last known keys
                log.warning("keys not refreshed: %s", e)

    async def _sync(self) -> None:
        """Write usage, exchange rate-limit counts with the other replicas, re-read the keys."""
        rows = [UsageRow(k, m, d, *v) for (k, m, d), v in self._usage.items()]
        used, self._usage, self._last_used = self._last_used, {}, {}
        try:
            if rows or used:
                await self._call(self.store.add_key_usage, rows, used)
        except BaseException:
            for u in rows:  # not written: add back, for the next round
                self._count(u.key, u.model, u.day, u.requests, u.prompt_tokens, u.completion_tokens)
            for name, at in used.items():  # keeping a newer use noted meanwhile
                self._last_used[name] = max(at, self._last_used.get(name, at))
            raise
        self._others = await self._call(self.store.share_key_counts, self.replica, self._counts())
        await self.refresh()

    async def refresh(self) -> None:
        keys = await self._call(self.store.list_keys)
        self._by_hash = {k.secret_hash: k for k in keys}
        self._loaded_at = time.monotonic()

    # ---------------------------------------------------------------- authentication
    async def authenticate(self, secret: str) -> KeyRecord:
        """The active key with this secret; 401 for an unknown, revoked or expired one."""
        digest = hash_secret(secret)
        key = self._by_hash.get(digest)
        if key is None:  # perhaps created a moment ago: look again, in a re-read that starts after now
            try:
                await self._reread_after(time.monotonic())
            except AdapterHubError:
                pass  # the registry is away: decide on what is known
            key = self._by_hash.get(digest)
        if key is None or not hmac.compare_digest(key.secret_hash, digest):
            raise AuthenticationError("Incorrect API key provided")
        state = key.state()
        if state != "active":
            raise AuthenticationError(f"API key '{key.name}' was {state}")
        return key

    async def _reread_after(self, t: float) -> None:
        """Wait for a re-read of the keys that started at or after ``t``. Misses share re-reads (one runs at
        a time), so a flood of unknown secrets costs the database one query at a time, not one each."""
        while True:
            task, started = self._refreshing, self._refresh_started
            if task is None or (task.done() and started < t):
                self._refresh_started = time.monotonic()
                task = self._refreshing = asyncio.ensure_future(self.refresh())
                await asyncio.shield(task)
                return
            await asyncio.shield(task)
            if started >= t:
                return

    # ---------------------------------------------------------------- rate limits
    def _window(self, name: str, now: float) -> Window:
        w = self._log.get(name)
        if w is None:
            w = self._log[name] = Window()
        w.prune(now)
        return w

    def _counts(self) -> dict[str, tuple[int, int]]:
        now = time.time()
        out = {}
        for name in list(self._log):
            w = self._window(name, now)
            if w:
                out[name] = (len(w), w.tokens)
            else:
                del self._log[name]
        return out

    def _headers(self, key: KeyRecord, w: Window, now: float) -> dict[str, str]:
        others_r, others_t = self._others.get(key.name, (0, 0))
        reset = _reset(w.reset_in(now)) if len(w) else "0s"
        h: dict[str, str] = {}
        if key.rpm is not None:
            left = key.rpm - len(w) - others_r
            h.update({"x-ratelimit-limit-requests": str(key.rpm),
                      "x-ratelimit-remaining-requests": str(max(left, 0)), "x-ratelimit-reset-requests": reset})
        if key.tpm is not None:
            left = key.tpm - w.tokens - others_t
            h.update({"x-ratelimit-limit-tokens": str(key.tpm),
                      "x-ratelimit-remaining-tokens": str(max(left, 0)), "x-ratelimit-reset-tokens": reset})
        return h

    def _refuse(self, key: KeyRecord, w: Window, now: float, what: str, limit: int, used: int,
                asked: int, kind: str) -> RateLimitError:
        wait = w.reset_in(now) if len(w) else 1.0  # when the oldest counted request leaves
        headers = {**self._headers(key, w, now), "retry-after": str(max(math.ceil(wait), 1))}
        self.requests.labels(key.name, "429").inc()
        return RateLimitError(f"Rate limit reached for key '{key.name}' on {what}: limit {limit}, used {used}, "
                              f"requested {asked}. Please try again in {_reset(wait)}.", headers, kind)

    def precheck(self, caller: Caller | None) -> None:
        """A cheap early refusal (before any work) when the key's requests per minute are used up."""
        key = caller.key if caller is not None else None
        if key is None or key.rpm is None:
            return
        now = time.time()
        w = self._window(key.name, now)
        used = len(w) + self._others.get(key.name, (0, 0))[0]
        if used + 1 > key.rpm:
            raise self._refuse(key, w, now, "requests per min (RPM)", key.rpm, used, 1, "requests")

    def admit(self, caller: Caller | None, tokens: int) -> Charge | None:
        """Count one request reserving ``tokens`` against the caller's key, or raise 429 (400 when the
        request alone needs more tokens than the key's limit). Synchronous: nothing else runs between the
        check and the count, so concurrent requests cannot pass the limit together."""
        key = caller.key if caller is not None else None
        if key is None:
            return None
        now = time.time()
        w = self._window(key.name, now)
        others_r, others_t = self._others.get(key.name, (0, 0))
        if key.tpm is not None and tokens > key.tpm:  # never admissible: no point in retrying
            raise UserInputError(f"this request needs up to {tokens} tokens (prompt + max_tokens × choices); "
                                 f"key '{key.name}' allows {key.tpm} tokens per minute", param="max_tokens")
        if key.rpm is not None and len(w) + others_r + 1 > key.rpm:
            raise self._refuse(key, w, now, "requests per min (RPM)", key.rpm, len(w) + others_r, 1, "requests")
        if key.tpm is not None:
            used = w.tokens + others_t
            if used + tokens > key.tpm:
                raise self._refuse(key, w, now, "tokens per min (TPM)", key.tpm, used, tokens, "tokens")
        charge = Charge(key.name, now, tokens)
        w.add(charge)
        assert caller is not None
        caller.headers.update(self._headers(key, w, now))
        return charge

    def refund(self, charge: Charge | None) -> None:
        """A request refused after admission (a bad parameter found later): it counts for nothing."""
        if charge is None or charge.settled:
            return
        charge.settled = True
        w = self._log.get(charge.key)
        if w is not None:
            w.remove(charge)

    def settle(self, charge: Charge | None, model: str, prompt_tokens: int, completion_tokens: int,
               status: str = "200") -> None:
        """The request ended: charge what it used (instead of its reservation) and meter it."""
        if charge is None or charge.settled:
            return
        charge.settled = True
        w = self._log.get(charge.key)
        if w is not None:
            w.retoken(charge, prompt_tokens + completion_tokens)
        else:
            charge.tokens = prompt_tokens + completion_tokens
        day = time.strftime("%Y-%m-%d", time.gmtime(charge.at))
        self._count(charge.key, model, day, 1, prompt_tokens, completion_tokens)
        self._last_used[charge.key] = time.time()
        self.requests.labels(charge.key, status).inc()
        self.tokens.labels(charge.key, "prompt").inc(prompt_tokens)
        self.tokens.labels(charge.key, "completion").inc(completion_tokens)

    def _count(self, key: str, model: str, day: str, requests: int, prompt: int, completion: int) -> None:
        row = self._usage.setdefault((key, model, day), [0, 0, 0])
        row[0] += requests
        row[1] += prompt
        row[2] += completion

    def touch(self, caller: Caller | None) -> None:
        """A request that is not a generation (models, tokenize): only its last use is noted."""
        if caller is not None and caller.key is not None:
            self._last_used[caller.key.name] = time.time()

    # ---------------------------------------------------------------- history
    async def record_admin_use(self, key: KeyRecord, what: str) -> None:
        try:
            await self._call(self.store.add_key_event, KeyEvent(time.time(), key.name, "admin", "server", what))
        except AdapterHubError as e:
            log.warning("admin use of key '%s' (%s) not recorded: %s", key.name, what, e)
