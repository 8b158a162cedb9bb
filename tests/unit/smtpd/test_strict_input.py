"""gateway.smtpd.strict_input: which commands and which message texts are refused, and how."""

from __future__ import annotations

from gateway.smtpd.strict_input import (
    JUNK_VIOLATION,
    NUL_VIOLATION,
    PIPELINING_VIOLATION,
    CommandChecks,
    InputRules,
    content_violation,
    unterminated_path,
)


def test_a_nul_in_an_argument_is_refused_and_the_session_goes_on() -> None:
    checks = CommandChecks(InputRules())
    assert checks.check("EHLO", "client\x00.example", pending_input=False, esmtp=False) is NUL_VIOLATION
    assert not NUL_VIOLATION.closes and NUL_VIOLATION.reply.code == 501
    assert checks.check("EHLO", "client.example", pending_input=False, esmtp=False) is None
    # MAIL and RCPT: left to their address checks (501 5.1.7 / 5.1.3)
    assert checks.check("MAIL", "FROM:<a\x00b@example.org>", pending_input=False, esmtp=True) is None
    assert checks.check("QUIT", None, pending_input=False, esmtp=True) is None


def test_junk_commands_are_counted_until_the_limit_and_again_after_each_accepted_message() -> None:
    checks = CommandChecks(InputRules(junk_command_limit=3))
    verbs = ["NOOP", "RSET", "MAIL", "RCPT", "VRFY", "ETRN"]
    results = [checks.check(verb, None, pending_input=False, esmtp=True) for verb in verbs]
    assert results == [None, None, None, None, None, JUNK_VIOLATION]  # the fourth junk command
    assert JUNK_VIOLATION.closes and JUNK_VIOLATION.reply.code == 421
    checks.message_accepted()
    assert [checks.check("NOOP", None, pending_input=False, esmtp=True) for _ in range(4)][-2:] == [
        None,
        JUNK_VIOLATION,
    ]
    unlimited = CommandChecks(InputRules(junk_command_limit=0))
    assert all(unlimited.check("NOOP", None, pending_input=False, esmtp=True) is None for _ in range(5000))


def test_pipelining_is_refused_without_ehlo_and_after_a_command_that_ends_a_group() -> None:
    checks = CommandChecks(InputRules())
    # HELO, then a whole transaction in one write: PIPELINING was never offered
    assert checks.check("HELO", "client", pending_input=True, esmtp=False) is PIPELINING_VIOLATION
    assert checks.check("MAIL", "FROM:<a@b.example>", pending_input=True, esmtp=False) is PIPELINING_VIOLATION
    # after EHLO: MAIL and RCPT may be followed at once, EHLO, STARTTLS and DATA may not
    assert checks.check("MAIL", "FROM:<a@b.example>", pending_input=True, esmtp=True) is None
    assert checks.check("RCPT", "TO:<c@d.example>", pending_input=True, esmtp=True) is None
    for verb in ("EHLO", "HELO", "STARTTLS", "DATA"):
        assert checks.check(verb, None, pending_input=True, esmtp=True) is PIPELINING_VIOLATION, verb
    assert checks.check("DATA", None, pending_input=False, esmtp=True) is None
    allowed = CommandChecks(InputRules(forbid_unauth_pipelining=False))
    assert allowed.check("HELO", "client", pending_input=True, esmtp=False) is None


def test_message_text_with_nul_or_undeclared_8bit() -> None:
    def reason(has_nul: bool, has_8bit: bool, strict: bool, declared: bool) -> str | None:
        found = content_violation(has_nul=has_nul, has_8bit=has_8bit, strict_8bitmime=strict, declared_8bit=declared)
        assert found is None or (found.reply.status == "5.6.0" and not found.closes)
        return found.reason if found else None

    assert reason(False, False, True, False) is None
    assert reason(True, False, False, True) == "nul_in_message"  # whatever was declared
    assert reason(False, True, False, False) is None  # 8-bit taken by default
    assert reason(False, True, True, False) == "strict_8bitmime"
    assert reason(False, True, True, True) is None  # BODY=8BITMIME or SMTPUTF8 declared


def test_an_unterminated_path_is_found_whatever_the_case_and_spacing() -> None:
    assert unterminated_path("FROM:<unterminated", "FROM:") and unterminated_path("to: <a@b.example", "TO:")
    assert not unterminated_path("FROM:<a@b.example>", "FROM:") and not unterminated_path("FROM:<>", "FROM:")
    assert not unterminated_path("FROM:a@b.example", "FROM:") and not unterminated_path(None, "FROM:")
    assert not unterminated_path("TO:<a@b.example>", "FROM:")  # another command's keyword: aiosmtpd's syntax error
