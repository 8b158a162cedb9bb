"""Runs the configured policies per SMTP stage.

Rules:

* policies run in the configured order; the first terminal verdict (anything
  but CONTINUE) ends the stage;
* at RCPT the default is deny: when no policy ACCEPTs a recipient it is refused
  with ``554 5.7.1 Relay access denied`` (Haraka ``rcpt_respond``);
* a hook that raises or runs past ``policy_timeout`` seconds yields a
  temporary failure (``451 4.3.0`` / ``451 4.7.1``): fail-closed, never
  fail-open on a crash;
* header edits of CONTINUE verdicts at DATA are collected in order.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

from gateway import reply as replies
from gateway.policy import Policy, PolicyContext
from gateway.verdict import ACCEPT, Action, HeaderEdit, Verdict

log = logging.getLogger("gateway.pipeline")


@dataclass(frozen=True, slots=True)
class StageResult:
    """The outcome of one stage: the deciding verdict and which policy gave it."""

    verdict: Verdict
    policy: str | None
    headers: tuple[HeaderEdit, ...] = ()


class Pipeline:
    """An ordered list of policies with a per-hook timeout (seconds)."""

    def __init__(self, policies: Sequence[Policy], policy_timeout: float = 60.0) -> None:
        self.policies = tuple(policies)
        self.policy_timeout = policy_timeout

    async def _run(self, stage: str,
                   call: Callable[[Policy], Awaitable[Verdict]]) -> StageResult:
        headers: list[HeaderEdit] = []
        for policy in self.policies:
            try:
                verdict = await asyncio.wait_for(call(policy), self.policy_timeout)
            except asyncio.TimeoutError:
                log.error("policy %s timed out at %s after %gs", policy.name, stage, self.policy_timeout)
                return StageResult(
                    Verdict(Action.TEMPFAIL, replies.TEMP_POLICY_FAILURE, reason="policy_timeout"),
                    policy.name)
            except Exception:
                log.exception("policy %s failed at %s", policy.name, stage)
                return StageResult(
                    Verdict(Action.TEMPFAIL, replies.INTERNAL_ERROR, reason="policy_error"), policy.name)
            if verdict.action is Action.CONTINUE:
                if verdict.headers.prepend or verdict.headers.remove:
                    headers.append(verdict.headers)
                continue
            return StageResult(verdict, policy.name, tuple(headers))
        return StageResult(Verdict(Action.CONTINUE), None, tuple(headers))

    async def connect(self, ctx: PolicyContext) -> StageResult:
        """Run ``on_connect`` hooks."""
        return await self._run("connect", lambda p: p.on_connect(ctx))

    async def helo(self, ctx: PolicyContext, helo: str) -> StageResult:
        """Run ``on_helo`` hooks."""
        return await self._run("helo", lambda p: p.on_helo(ctx, helo))

    async def mail(self, ctx: PolicyContext, sender: str) -> StageResult:
        """Run ``on_mail`` hooks."""
        return await self._run("mail", lambda p: p.on_mail(ctx, sender))

    async def rcpt(self, ctx: PolicyContext, recipient: str) -> StageResult:
        """Run ``on_rcpt`` hooks; without an ACCEPT the result is REJECT 554 5.7.1 (default deny)."""
        result = await self._run("rcpt", lambda p: p.on_rcpt(ctx, recipient))
        if result.verdict.action is Action.CONTINUE:
            return StageResult(Verdict(Action.REJECT, replies.RELAY_DENIED, reason="relay_denied"),
                               None, result.headers)
        return result

    async def data(self, ctx: PolicyContext, message: bytes) -> StageResult:
        """Run ``on_data`` hooks; header edits of non-terminal verdicts are returned in order."""
        result = await self._run("data", lambda p: p.on_data(ctx, message))
        if result.verdict.action is Action.CONTINUE:
            return StageResult(ACCEPT, None, result.headers)
        return result

    async def aclose(self) -> None:
        """Close every policy."""
        for policy in self.policies:
            await policy.aclose()
