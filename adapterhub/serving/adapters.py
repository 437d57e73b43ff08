"""The adapter manager: resolves ``model`` names to loaded adapters on an engine.

* resolution goes through the registry on every request, so moving an alias takes effect for the
  next request, while a request in flight keeps the version it started with (a lease);
* each (name, version, content hash) is its own engine key: a new version never reuses old state;
* lazy hot-load on first use, one load per key even under concurrent first requests (a lock per key),
  LRU eviction at ``max_loaded`` that skips pinned and in-use adapters;
* validation before loading (:func:`adapterhub.loading.versions.open_version` for checksums and the
  base, :func:`engine_problems` for rank and modules), reporting every problem at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterhub.errors import AdapterNotFoundError, ModelNotFoundError, OverloadedError, StoreUnavailableError
from adapterhub.loading.versions import open_version
from adapterhub.refs import parse_ref
from adapterhub.registry import Registry, VersionRecord
from adapterhub.registry.peft_config import PeftConfigError, read_peft_config
from adapterhub.registry.validation import validate_adapter_dir
from adapterhub.serving.engines.base import Engine
from adapterhub.serving.metrics import Metrics
from adapterhub.serving.tenants import check_scope

log = logging.getLogger(__name__)


@dataclass
class Lease:
    """What one request uses: the engine key (None = base), the chat template to render with, and the
    version it resolved to (``split_alias`` set when a weighted alias chose it)."""

    model: str
    key: str | None
    chat_template: str | None
    ref: str | None = None
    name: str = ""
    version: str = "base"
    split_alias: str | None = None
    tool_parser: str | None = None  # the tool-call format the adapter was trained on (None: server default)

    @property
    def answered_by(self) -> str:
        """The ``model`` of the response: the version that answered for a split alias, else as asked."""
        return self.ref if self.split_alias and self.ref else self.model


class AdapterManager:
    def __init__(self, engine: Engine, registry: Registry | None, *, base_name: str,
                 base_aliases: tuple[str, ...] = (), metrics: Metrics | None = None,
                 max_slot_waiters: int = 256, registry_timeout_s: float = 5.0,
                 registry_staleness_s: float = 300.0) -> None:
        self.engine = engine
        self.metrics = metrics
        self.registry = registry
        self.base_name = base_name
        self.base_names = {base_name, "base", *base_aliases}
        self.max_loaded = engine.capabilities.max_loaded
        self._lru: OrderedDict[str, VersionRecord] = OrderedDict()
        self._templates: dict[str, str | None] = {}
        self._parsers: dict[str, str | None] = {}  # the tool-call format each adapter was trained on
        self._pinned: set[str] = set()
        self._in_use: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.load_times: list[float] = []
        # Requests whose adapter needs a slot while every slot is busy wait here, first come first served;
        # beyond max_slot_waiters a request gets 503 with Retry-After.
        self.max_slot_waiters = max_slot_waiters
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._waiting: dict[tuple[str, str], int] = {}  # (name, version) → requests not yet holding it
        # Busy adapters chosen to make room: they take no new requests until their running ones finish and
        # they are evicted (set when evicted), so a popular adapter cannot hold a slot forever.
        self._draining: dict[str, asyncio.Event] = {}
        self._loading: set[str] = set()  # adapters being copied into a slot
        self._evicting: set[str] = set()  # adapters being removed from their slot (it is not free until done)
        self._checked: OrderedDict[str, tuple[Path, str | None, str | None]] = OrderedDict()  # verified versions
        # Registry lookups run on threads of their own, with a time limit, never on the event loop: a
        # stalled database must not stop the base model, loaded versions or /health. Immutable refs
        # (name@N, name@sha256:…) are answered from memory once known; aliases from their last known value
        # for at most registry_staleness_s while the registry is away.
        self._registry_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="registry")
        self.registry_timeout_s = registry_timeout_s
        self.registry_staleness_s = registry_staleness_s
        self._immutable: dict[str, VersionRecord] = {}
        self._last_known: OrderedDict[tuple[str, str | None], tuple[float, VersionRecord | None, str | None]] = (
            OrderedDict())
        self.registry_failed_at: float | None = None  # the last failed lookup, cleared by a successful one

    @staticmethod
    def key_of(record: VersionRecord) -> str:
        return f"{record.name}@{record.version}#{record.content_hash[:16]}"

    # ---------------------------------------------------------------- requests
    def resolve(self, model: str, caller: str | None = None) -> VersionRecord | None:
        """None for the base model; raises ModelNotFoundError for anything unknown. A split alias picks
        its version by weight, the same one for the same ``caller``."""
        return self._resolve(model, caller)[0]

    def _resolve(self, model: str, caller: str | None) -> tuple[VersionRecord | None, str | None]:
        """(version or None for the base, the split alias that picked it)."""
        check_scope(model, self.base_names, self.base_name)  # a tenant's key: 404 outside its names
        if model in self.base_names:
            return None, None
        if self.registry is None:
            raise ModelNotFoundError(f"The model '{model}' does not exist (this server has no registry)")
        try:
            return self.registry.resolve_routed(parse_ref(model), caller=caller)
        except (AdapterNotFoundError, ValueError) as e:
            raise ModelNotFoundError(f"The model '{model}' does not exist: {e}") from e

    @property
    def registry_state(self) -> str:
        """ok, or degraded while lookups fail (serving from memory where it can)."""
        return "ok" if self.registry_failed_at is None else "degraded"

    async def registry_call(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` (registry I/O) on the registry threads with the time limit; a 503 past it."""
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()  # the request's caller goes along (scopes are checked there too)
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._registry_pool, ctx.run, fn, *args),
                                          self.registry_timeout_s)
        except TimeoutError:
            self.registry_failed_at = time.monotonic()
            raise StoreUnavailableError(f"the registry did not answer within {self.registry_timeout_s:g} s") from None

    async def resolve_async(self, model: str, caller: str | None = None) -> tuple[VersionRecord | None, str | None]:
        """:meth:`_resolve` off the event loop with a time limit, falling back to what is known."""
        check_scope(model, self.base_names, self.base_name)
        if model in self.base_names:
            return None, None
        if model in self._immutable:
            return self._immutable[model], None
        key = (model, caller)
        try:
            found = await self.registry_call(self._resolve, model, caller)
        except StoreUnavailableError as e:
            self.registry_failed_at = time.monotonic()
            known = self._last_known.get(key)
            if known is not None and time.monotonic() - known[0] <= self.registry_staleness_s:
                log.warning("registry unavailable (%s): serving %s as last known", e, model)
                return known[1], known[2]
            raise
        self.registry_failed_at = None
        record, split = found
        if record is not None and _immutable(model):
            self._immutable[model] = record
        self._last_known[key] = (time.monotonic(), record, split)
        self._last_known.move_to_end(key)
        while len(self._last_known) > 10_000:
            self._last_known.popitem(last=False)
        return record, split

    async def acquire(self, model: str, caller: str | None = None) -> Lease:
        record, split_alias = await self.resolve_async(model, caller)
        if record is None:
            return Lease(model, None, None, name=self.base_name)
        key = self.key_of(record)
        version = (record.name, str(record.version))
        self._waiting[version] = self._waiting.get(version, 0) + 1  # until it holds its version
        t0 = time.perf_counter()
        try:
            while True:
                if key in self._draining:  # making room for a waiting adapter: load again after it is evicted
                    await self._draining[key].wait()
                    continue
                key = await self._ensure_loaded(record)
                if key not in self._draining:
                    break
        finally:
            self._waiting[version] -= 1
            if not self._waiting[version]:
                del self._waiting[version]
        if self.metrics is not None:  # 0 when it was loaded: the time a version's requests lose to slots and loads
            self.metrics.adapter_wait(*version, time.perf_counter() - t0)
        self._in_use[key] = self._in_use.get(key, 0) + 1
        return Lease(model, key, self._templates.get(key), record.ref, record.name, str(record.version),
                     split_alias, self._parsers.get(key))

    def release(self, lease: Lease) -> None:
        if lease.key is not None:
            self._in_use[lease.key] -= 1
            if self._in_use[lease.key] <= 0:
                del self._in_use[lease.key]
                self._wake_slot_waiter()

    def _wake_slot_waiter(self) -> None:
        """A slot may be free: the longest-waiting request looks first. With nobody waiting, adapters that
        were draining for a waiter that got its slot another way take requests again."""
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._undrain_extra()

    def _undrain_extra(self) -> None:
        """At most one draining adapter per waiting request: the oldest extra ones take requests again."""
        while len(self._draining) > self.slot_waiting:
            key = next(iter(self._draining))
            self._draining.pop(key).set()  # its waiting requests go on (it is still loaded)

    def waiting(self) -> dict[tuple[str, str], float]:
        """Requests per version still waiting for it to be loaded (a free slot, its turn, its load)."""
        return {v: float(n) for v, n in self._waiting.items()}

    def in_flight(self) -> dict[tuple[str, str], float]:
        """Requests holding each loaded version (queued in the engine or decoding)."""
        out: dict[tuple[str, str], float] = {}
        for key, n in self._in_use.items():
            record = self._lru.get(key)
            if record is not None:
                out[(record.name, str(record.version))] = float(n)
        return out

    @property
    def slot_waiting(self) -> int:
        return sum(1 for w in self._slot_waiters if not w.done())

    # ---------------------------------------------------------------- admin
    async def load(self, model: str, *, pin: bool = False) -> VersionRecord:
        record = self.resolve(model)
        if record is None:
            raise ModelNotFoundError(f"'{model}' is the base model, not an adapter")
        key = await self._ensure_loaded(record)
        if pin and key not in self._pinned:
            self._pinned.add(key)
            if self.metrics:
                self.metrics.pinned(record.name, str(record.version))
        return record

    async def unload(self, model: str) -> list[str]:
        """Unload every loaded version matching ``model`` (a name unloads all its versions)."""
        ref = parse_ref(model)
        if ref.selector == "latest" and "@" not in model:
            keys = [k for k, r in self._lru.items() if r.name == ref.name]
        else:
            record = self.resolve(model)
            keys = [self.key_of(record)] if record and self.key_of(record) in self._lru else []
        if not keys:
            raise ModelNotFoundError(f"'{model}' is not loaded")
        for key in keys:
            if self._in_use.get(key):
                raise OverloadedError(f"{key.split('#')[0]} is serving requests; retry when they finish")
            if key in self._lru:
                await self._evict(key)
            self._pinned.discard(key)
        return [k.split("#")[0] for k in keys]

    def loaded(self) -> list[dict[str, Any]]:
        return [
            {"id": r.ref, "name": r.name, "version": r.version, "content_hash": r.content_hash,
             "pinned": k in self._pinned, "in_use": self._in_use.get(k, 0)}
            for k, r in self._lru.items()
        ]

    # ---------------------------------------------------------------- internals
    async def _ensure_loaded(self, record: VersionRecord) -> str:
        key = self.key_of(record)
        if key in self._lru:
            self._lru.move_to_end(key)
            return key
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key in self._lru:  # loaded by a concurrent first request
                self._lru.move_to_end(key)
                return key
            assert self.registry is not None
            # Fetched, verified and read into host memory as soon as the request arrives, while the batch
            # decodes and before waiting for a slot; a version still in the engine's host cache skips all
            # three. After the wait only the copy into the slot is left.
            t_fetch = time.perf_counter()
            checked = self._checked.get(key)
            hit = checked is not None and self.engine.adapter_prepared(key)
            if checked is None or not hit:
                checked = await asyncio.to_thread(self._check, record)
                hit = await asyncio.to_thread(self.engine.prepare_adapter, key, checked[0])
                self._checked[key] = checked
                while len(self._checked) > 10_000:
                    self._checked.popitem(last=False)
            fetch_s = time.perf_counter() - t_fetch
            path, template, parser = checked
            t_slot = time.perf_counter()
            await self._make_room()
            if self.metrics:
                self.metrics.fetched(record.name, str(record.version), hit, fetch_s, time.perf_counter() - t_slot)
            self._loading.add(key)  # the slot is taken from here on (another waiter must not count it free)
            t0 = time.perf_counter()
            try:
                await asyncio.to_thread(self.engine.load_adapter, key, path)
            finally:
                self._loading.discard(key)
                self._wake_slot_waiter()  # on failure the slot is free again; on success, a no-op for the full
            self.load_times.append(time.perf_counter() - t0)
            if self.metrics:
                self.metrics.loaded(record.name, str(record.version), self.load_times[-1], pinned=False)
            self._lru[key] = record
            self._templates[key] = template
            self._parsers[key] = parser
            log.info("loaded %s in %.0f ms", record.ref, self.load_times[-1] * 1000)
        return key

    async def _make_room(self) -> None:
        """Free a slot: evict the least recently used idle adapter; when every slot is busy, wait in line.

        Fairness rule: requests needing a slot are served first come, first served, and for each of them
        the least recently used busy adapter stops taking new requests (its own new requests queue behind
        the ones already waiting), so it is idle and evicted once its running requests finish; no adapter,
        however popular, keeps a slot while others wait.
        """
        first_try = True
        while len(self._lru) + len(self._loading) + len(self._evicting) >= self.max_loaded:
            victim = next((k for k in self._lru if k in self._draining and not self._in_use.get(k)), None) or next(
                (k for k in self._lru if k not in self._pinned and not self._in_use.get(k)), None)
            if victim is not None:
                await self._evict(victim)
                continue
            if not self._loading and not self._evicting and all(k in self._pinned for k in self._lru):
                # waiting would never end
                raise OverloadedError(f"all {self.max_loaded} adapter slots are pinned: raise --max-loaded or unload "
                                      "one (DELETE /v1/adapters/{name})")
            if first_try and self.slot_waiting >= self.max_slot_waiters:
                raise OverloadedError(f"{self.slot_waiting} requests are already waiting for one of the "
                                      f"{self.max_loaded} adapter slots: retry later or raise --max-loaded")
            busy = [k for k in self._lru if k not in self._pinned and k not in self._draining]
            if busy and len(self._draining) <= self.slot_waiting:
                self._draining[busy[0]] = asyncio.Event()
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            # woken but beaten to the slot (a new request took the idle adapter first): keep its place in line
            (self._slot_waiters.append if first_try else self._slot_waiters.appendleft)(waiter)
            try:
                await waiter
            except BaseException:  # the request went away: the next in line gets its chance
                if waiter in self._slot_waiters:
                    self._slot_waiters.remove(waiter)
                if waiter.done() and not waiter.cancelled():
                    self._wake_slot_waiter()
                self._undrain_extra()
                raise
            finally:
                if waiter in self._slot_waiters:
                    self._slot_waiters.remove(waiter)
            first_try = False
        self._undrain_extra()  # this request has its slot: one waiter fewer

    async def _evict(self, key: str) -> None:
        evicted = self._lru.pop(key)
        # The engine frees the slot at its next step boundary: until then the slot is neither loaded nor free
        # (a concurrent request counting it free would find the engine full). Shielded: a request that goes
        # away mid-eviction does not end the count before the engine is done.
        self._evicting.add(key)
        unloading = asyncio.ensure_future(asyncio.to_thread(self.engine.unload_adapter, key))
        unloading.add_done_callback(lambda _: self._evicting.discard(key))
        try:
            await asyncio.shield(unloading)
        except asyncio.CancelledError:  # the slot this request freed goes to the next in line
            unloading.add_done_callback(lambda _: self._wake_slot_waiter())
            raise
        finally:
            if self.metrics:
                self.metrics.evicted(evicted.name, str(evicted.version))
            drained = self._draining.pop(key, None)
            if drained is not None:
                drained.set()
        log.info("evicted %s", key)

    def _check(self, record: VersionRecord) -> tuple[Path, str | None, str | None]:
        """Verify checksums and compatibility; returns (path, chat template, tool parser)."""
        assert self.registry is not None
        opened = open_version(self.registry, record, kind="adapter", on_base=self.engine.base_identity)
        opened.require_compatible(self.engine.base_identity.get("id") or self.base_name,
                                  engine_problems(opened.path, self.engine))
        return opened.path, opened.template, (opened.manifest.training or {}).get("tool_parser")


def _immutable(model: str) -> bool:
    """``name@N`` and ``name@sha256:…`` always mean the same content."""
    try:
        return parse_ref(model).selector in ("version", "hash")
    except ValueError:
        return False


def engine_problems(path: Path, engine: Engine) -> list[str]:
    """Every reason the adapter at ``path`` cannot run on ``engine`` besides its base (rank, modules)."""
    problems: list[str] = []
    caps = engine.capabilities
    try:
        targets = read_peft_config(path).target_parameters
    except PeftConfigError:
        targets = None
    if targets:  # checked first: the registry's shape checks do not know expert tensors
        return [f"targets parameters {targets} (LoRA on MoE expert tensors), which this engine cannot apply per "
                "request: merge it (adapterhub merge REF) and serve the merged model with --merged"]
    info = validate_adapter_dir(path)
    if info.peft.use_dora:
        problems.append("is a DoRA adapter (use_dora), which this engine cannot apply per request: merge it "
                        "(adapterhub merge REF) and serve the merged model with --merged")
    tower = sorted({m for m in info.modules if "vision_tower" in m or "vision_model" in m})
    if tower:
        problems.append(f"has LoRA on the vision tower ({len(tower)} modules), which this engine cannot apply per "
                        "request: merge it (adapterhub merge REF) and serve the merged model with --merged")
    saved = info.peft.modules_to_save
    if saved and not (engine.adapter_projectors and saved == ["multi_modal_projector"]):
        problems.append(f"modules_to_save {saved} are not supported by this engine (only the hf engine applies a "
                        "vision model's multi_modal_projector per request): merge it (adapterhub merge REF) and "
                        "serve the merged model with --merged")
    if info.rank > caps.max_lora_rank:
        problems.append(f"rank {info.rank} exceeds this server's max LoRA rank {caps.max_lora_rank} "
                        f"(start it with --max-lora-rank {info.rank})")
    missing = sorted({m.split(".")[-1] for m in info.modules} - set(caps.target_modules))
    if missing:
        problems.append(f"targets modules this engine cannot adapt: {', '.join(missing)}")
    mismatched: dict[str, str] = {}
    for module, ab in info.modules.items():
        suffix = module.split(".")[-1]
        full = module.removeprefix("base_model.model.")
        key = full if full in caps.module_shapes else suffix
        if key not in caps.module_shapes:
            continue
        want_in, want_out = caps.module_shapes[key]
        got_in, got_out = ab["A"][1], ab["B"][0]
        if (got_in, got_out) != (want_in, want_out):
            mismatched[suffix] = f"{suffix} is {got_in}->{got_out} in the adapter, {want_in}->{want_out} in the base"
    problems.extend(mismatched[k] for k in sorted(mismatched))
    return problems
