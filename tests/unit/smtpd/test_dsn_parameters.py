"""gateway.smtpd.dsn_parameters: RFC 3461 parameters taken out of MAIL and RCPT, checked and decoded."""

from __future__ import annotations

import pytest

from gateway.smtpd.dsn_parameters import (
    MAIL_PARAMETERS,
    NOT_ASKED,
    RCPT_PARAMETERS,
    DsnRequest,
    ParameterError,
    split_off,
    xtext_decode,
)


def getaddr(path: str) -> tuple[str | None, str | None]:
    """A stand-in for aiosmtpd's _getaddr on the simple paths these tests use: ``<addr>`` then the rest."""
    end = path.index(">") + 1
    return path[1 : end - 1], path[end:].lstrip()


def test_xtext() -> None:
    assert xtext_decode("user+40example.com") == "user@example.com"
    assert xtext_decode("a+2Bb+3Dc") == "a+b=c"
    for bad in ("a b", "a=b", "a+4", "a+zz", "a+2b"):  # space and '=' are not xchars; hex is upper case
        with pytest.raises(ValueError):
            xtext_decode(bad)


def test_mail_parameters_are_taken_out_and_the_rest_left_for_aiosmtpd() -> None:
    arg, request = split_off(
        "FROM:<a@b.example> SIZE=100 ret=hdrs EnvId=QQ+2B314159 BODY=8BITMIME", "FROM:", MAIL_PARAMETERS, getaddr
    )
    assert arg == "FROM:<a@b.example> SIZE=100 BODY=8BITMIME"
    assert request == DsnRequest(ret="HDRS", envid="QQ+314159")  # the value kept as sent, decoded
    assert split_off("FROM:<a@b.example> SIZE=100", "FROM:", MAIL_PARAMETERS, getaddr) == (
        "FROM:<a@b.example> SIZE=100",
        NOT_ASKED,
    )
    assert split_off("FROM:<a@b.example> RET=FULL", "FROM:", MAIL_PARAMETERS, getaddr) == (
        "FROM:<a@b.example>",
        DsnRequest(ret="FULL"),
    )


def test_rcpt_parameters() -> None:
    arg, request = split_off(
        "TO:<c@d.example> NOTIFY=success,Failure ORCPT=rfc822;orig+40d.example", "TO:", RCPT_PARAMETERS, getaddr
    )
    assert arg == "TO:<c@d.example>"
    assert request == DsnRequest(notify=("SUCCESS", "FAILURE"), orcpt="rfc822;orig@d.example")
    assert split_off("TO:<c@d.example> NOTIFY=NEVER", "TO:", RCPT_PARAMETERS, getaddr)[1].notify == ("NEVER",)
    # a keyword without a value is not one of ours: left for aiosmtpd, which answers 555
    assert split_off("TO:<c@d.example> NOTIFY", "TO:", RCPT_PARAMETERS, getaddr) == (
        "TO:<c@d.example> NOTIFY",
        NOT_ASKED,
    )


@pytest.mark.parametrize(
    "arg",
    [
        "TO:<c@d.example> NOTIFY=NEVER,SUCCESS",
        "TO:<c@d.example> NOTIFY=SOMETIMES",
        "TO:<c@d.example> NOTIFY=",
        "TO:<c@d.example> NOTIFY=FAILURE NOTIFY=DELAY",
        "TO:<c@d.example> ORCPT=orig@d.example",
        "TO:<c@d.example> ORCPT=rfc822;",
        "TO:<c@d.example> ORCPT=rfc822;a=b",
    ],
)
def test_malformed_rcpt_parameters_get_501_5_5_4(arg: str) -> None:
    with pytest.raises(ParameterError) as raised:
        split_off(arg, "TO:", RCPT_PARAMETERS, getaddr)
    assert (raised.value.reply.code, raised.value.reply.status) == (501, "5.5.4")


@pytest.mark.parametrize(
    "arg",
    [
        "FROM:<a@b.example> RET=SOME",
        "FROM:<a@b.example> ENVID=" + "x" * 101,
        "FROM:<a@b.example> ENVID=a+00b",
        "FROM:<a@b.example> RET=FULL RET=HDRS",
    ],
)
def test_malformed_mail_parameters_get_501_5_5_4(arg: str) -> None:
    with pytest.raises(ParameterError) as raised:
        split_off(arg, "FROM:", MAIL_PARAMETERS, getaddr)
    assert raised.value.reply.code == 501
