"""Runs the configured policies per SMTP stage.

Rules:

* policies run in the configured order; the first terminal verdict (anything
  but CONTINUE) ends the stage;
* at RCPT the access pipeline is default-deny: when no policy ACCEPTs a
  recipient it is refused with ``554 5.7.1 Relay access denied`` (Haraka
  ``rcpt_respond``);
* at DATA, policies marked ``concurrent`` (the virus and spam scanners) run
  together after the sequential ones, and their verdicts merge by precedence
  REJECT > TEMPFAIL > DISCARD > HOLD > ACCEPT > CONTINUE (ties: configured order);
* a hook that raises :class:`~gateway.errors.ScannerError` or runs past the
  policy's ``timeout`` seconds follows its ``on_error``: ``tempfail``
  (``451 4.7.1``, the default) or ``pass`` (the message goes on unscanned with
  an ``X-Scan-Skipped`` header); any other exception is a bug and always
  yields ``451 4.3.0`` (fail-closed, never fail-open on a crash);
* header edits of CONTINUE verdicts are collected in configured order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway import metrics
from gateway import reply as replies
from gateway.errors import ScannerError
from gateway.pipeline.policy import Policy, PolicyContext
from gateway.verdict import ACCEPT, Action, HeaderEdit, Verdict, strongest

log = logging.getLogger("gateway.pipeline")

DEFAULT_TIMEOUT = 60.0  # seconds per hook, for policies without their own ``timeout``


@dataclass(frozen=True, slots=True)
class StageResult:
    """The outcome of one stage: the deciding verdict, which policy gave it, collected header edits."""

    verdict: Verdict
    policy: str | None
    headers: tuple[HeaderEdit, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicyEntry:
    """A policy with how the pipeline runs it.

    timeout: seconds per hook call. on_error: "tempfail" or "pass" for scanner faults.
    concurrent: run at DATA together with the other concurrent policies.
    """

    policy: Policy
    timeout: float = DEFAULT_TIMEOUT
    on_error: str = "tempfail"
    concurrent: bool = False

    @classmethod
    def of(cls, policy: Policy, concurrent: bool = False) -> PolicyEntry:
        """Read ``timeout`` / ``on_error`` from the policy's attributes when it has them."""
        return cls(
            policy,
            float(getattr(policy, "timeout", DEFAULT_TIMEOUT)),
            str(getattr(policy, "on_error", "tempfail")),
            concurrent,
        )


class Pipeline:
    """An ordered list of policies (see the module docstring for the rules)."""

    def __init__(self, policies: Sequence[Policy | PolicyEntry]) -> None:
        self.entries = tuple(p if isinstance(p, PolicyEntry) else PolicyEntry.of(p) for p in policies)

    @property
    def policies(self) -> tuple[Policy, ...]:
        """The policies in order."""
        return tuple(entry.policy for entry in self.entries)

    async def _call(
        self, entry: PolicyEntry, stage: str, call: Callable[[Policy], Awaitable[Verdict]], ctx: PolicyContext
    ) -> Verdict:
        name = entry.policy.name
        started = time.monotonic()
        try:
            verdict = await asyncio.wait_for(call(entry.policy), entry.timeout)
        except (TimeoutError, ScannerError) as error:
            if stage == "data":
                metrics.SCANNER_UP.labels(name).set(0)
                metrics.SCAN_VERDICTS.labels(name, "error").inc()
            what = f"timed out after {entry.timeout:g}s" if isinstance(error, asyncio.TimeoutError) else str(error)
            if entry.on_error == "pass":
                log.warning(
                    "%s: policy %s failed at %s (%s); passing unscanned", ctx.queue_id or "NOQUEUE", name, stage, what
                )
                return Verdict(
                    Action.CONTINUE,
                    headers=HeaderEdit(prepend=(("X-Scan-Skipped", f"{name} (scanner unavailable)"),)),
                    reason=f"{name}_unavailable",
                )
            log.error(
                "%s: policy %s failed at %s (%s); temporary failure", ctx.queue_id or "NOQUEUE", name, stage, what
            )
            return Verdict(Action.TEMPFAIL, replies.TEMP_POLICY_FAILURE, reason=f"{name}_unavailable", detail=what)
        except Exception:
            log.exception("%s: policy %s crashed at %s", ctx.queue_id or "NOQUEUE", name, stage)
            return Verdict(Action.TEMPFAIL, replies.INTERNAL_ERROR, reason="policy_error")
        if stage == "data":
            metrics.SCAN_DURATION.labels(name).observe(time.monotonic() - started)
            metrics.SCAN_VERDICTS.labels(name, verdict.action.value).inc()
            metrics.SCANNER_UP.labels(name).set(1)
        return verdict

    async def _run(
        self,
        stage: str,
        ctx: PolicyContext,
        call: Callable[[Policy], Awaitable[Verdict]],
        entries: Sequence[PolicyEntry],
    ) -> StageResult:
        headers: list[HeaderEdit] = []
        for entry in entries:
            verdict = await self._call(entry, stage, call, ctx)
            if verdict.action is Action.CONTINUE:
                if verdict.headers != HeaderEdit():
                    headers.append(verdict.headers)
                continue
            return StageResult(verdict, entry.policy.name, tuple(headers))
        return StageResult(Verdict(Action.CONTINUE), None, tuple(headers))

    async def connect(self, ctx: PolicyContext) -> StageResult:
        """Run ``on_connect`` hooks."""
        return await self._run("connect", ctx, lambda p: p.on_connect(ctx), self.entries)

    async def helo(self, ctx: PolicyContext, helo: str) -> StageResult:
        """Run ``on_helo`` hooks."""
        return await self._run("helo", ctx, lambda p: p.on_helo(ctx, helo), self.entries)

    async def mail(self, ctx: PolicyContext, sender: str) -> StageResult:
        """Run ``on_mail`` hooks."""
        return await self._run("mail", ctx, lambda p: p.on_mail(ctx, sender), self.entries)

    async def rcpt(self, ctx: PolicyContext, recipient: str, require_accept: bool = True) -> StageResult:
        """Run ``on_rcpt`` hooks.

        With ``require_accept`` (the access pipeline) a recipient no policy ACCEPTs is
        refused ``554 5.7.1`` (default deny); otherwise CONTINUE means no objection.
        """
        result = await self._run("rcpt", ctx, lambda p: p.on_rcpt(ctx, recipient), self.entries)
        if require_accept and result.verdict.action is Action.CONTINUE:
            return StageResult(
                Verdict(Action.REJECT, replies.RELAY_DENIED, reason="relay_denied"), None, result.headers
            )
        return result

    async def data(self, ctx: PolicyContext, message: bytes, skip: frozenset[str] = frozenset()) -> StageResult:
        """Run ``on_data``: sequential policies, then the concurrent ones together.

        ``skip`` names policies not to run (scan switches and bypass lists).
        """
        entries = [e for e in self.entries if e.policy.name not in skip]
        call: Callable[[Policy], Awaitable[Verdict]] = lambda p: p.on_data(ctx, message)  # noqa: E731
        first = await self._run("data", ctx, call, [e for e in entries if not e.concurrent])
        if first.verdict.action is not Action.CONTINUE:
            return first
        concurrent = [e for e in entries if e.concurrent]
        verdicts = list(await asyncio.gather(*(self._call(e, "data", call, ctx) for e in concurrent)))
        headers = list(first.headers) + [
            v.headers for v in verdicts if v.action is Action.CONTINUE and v.headers != HeaderEdit()
        ]
        decided = strongest(verdicts)
        if decided.action is Action.CONTINUE:
            return StageResult(ACCEPT, None, tuple(headers))
        name = concurrent[verdicts.index(decided)].policy.name
        return StageResult(decided, name, tuple(headers))

    async def aclose(self) -> None:
        """Close every policy."""
        for entry in self.entries:
            await entry.policy.aclose()
