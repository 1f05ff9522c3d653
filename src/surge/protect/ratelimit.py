"""Per-caller rate limits by route class: 429 with Retry-After and RateLimit fields.

Every route belongs to a class (`read`: GET; `write`: everything else; none: health,
readiness, metrics, the API document and /ws, which has its own limits) and every class
has a token-bucket policy per caller (clients.py: the user, else the address). A refusal
is a 429 problem with
- `Retry-After`: whole seconds until the caller has a token again, plus up to half of
  that again at random (at least 1 s), so refused clients do not come back in step;
- `RateLimit-Policy: "read";q=40;w=2` and `RateLimit: "read";r=0;t=3`, the fields of the
  IETF draft (draft-ietf-httpapi-ratelimit-headers): quota, window, remaining, seconds.
Answers that pass carry no extra fields: the order query's cached answers are written as
they were encoded.

The buckets of a class are this process's (`LocalBuckets`) or Redis's (`RedisBuckets`,
shared by every process; a verdict is then a future, answered once per loop turn). By
default writes are decided in Redis and reads in each process: waiting for Redis made a
cached read cost 2.5 times as much (docs/protection.md).
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Mapping

from surge.ground.admission import Verdict
from surge.ground.buckets import Buckets, Policy
from surge.ground.web import Request, Response, problem_response
from surge.protect.clients import Clients


class RateLimiter:
    def __init__(
        self, policies: Mapping[str, Policy], stores: Mapping[str, Buckets], clients: Clients
    ) -> None:
        """`stores`: where each class's buckets live (class -> buckets)."""
        self.policies = dict(policies)
        self._stores = dict(stores)
        self._clients = clients
        self.limited = {name: 0 for name in self.policies}  # refusals, for /metrics
        self._refusals: dict[tuple[str, int, int], Response] = {}

    def check(
        self, request: Request, route_class: str
    ) -> Response | asyncio.Future[Verdict] | None:
        """None: go on. A Response: the 429. A future: Redis decides; `answer` turns
        its verdict into None or the 429."""
        policy = self.policies.get(route_class)
        if policy is None:
            return None
        verdict = self._stores[route_class].check(policy, self._clients.key(request))
        if isinstance(verdict, tuple):  # decided here (a Verdict); not a future
            return None if verdict[0] else self.answer(route_class, verdict)
        return verdict

    def answer(self, route_class: str, verdict: Verdict) -> Response | None:
        if verdict.allowed:
            return None
        self.limited[route_class] += 1
        wait = max(1, math.ceil(verdict.wait))
        retry = wait + random.randint(0, max(1, wait // 2))
        key = (route_class, wait, retry)
        refusal = self._refusals.get(key)
        if refusal is None:  # a handful of distinct answers per class: built once each
            policy = self.policies[route_class]
            refusal = problem_response(
                429,
                "rate-limited",
                f"at most {policy.rate:g} {route_class} requests a second (burst "
                f"{policy.burst}); retry in {retry} s",
                (
                    ("retry-after", str(retry)),
                    ("ratelimit-policy", f'"{policy.name}";q={policy.burst};w={policy.window}'),
                    ("ratelimit", f'"{policy.name}";r=0;t={wait}'),
                ),
            )
            if len(self._refusals) < 1000:
                self._refusals[key] = refusal
        return refusal
