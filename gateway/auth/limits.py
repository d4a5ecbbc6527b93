"""A token against Event Grid's documented limits: its size (Authentication Data), ``sub`` and ``aud``.

The same checks for every source (``fieldgate token``, ``check-config`` for tokens it can get offline);
the lines name the claim and the limit, never the token text.
"""

from __future__ import annotations

from gateway.auth.token import Token
from gateway.config.limits import audience_problem, subject_problem, token_size_problem


def token_limit_problems(token: Token) -> list[str]:
    """One line per limit the token breaks (empty: it fits)."""
    problems: list[str] = []
    size = token_size_problem(len(token.value.encode("utf-8")))
    if size is not None:
        problems.append(size)
    claims = token.claims
    sub = subject_problem(claims.get("sub"))
    if sub is not None:
        problems.append(f"claim sub: {sub}")
    if "aud" not in claims:
        problems.append("claim aud: missing (Event Grid needs the namespace host name in it)")
    else:
        aud = audience_problem(claims["aud"])
        if aud is not None:
            problems.append(f"claim aud: {aud}")
    return problems


def token_limit_lines(token: Token) -> tuple[list[str], int]:
    """Report lines for ``fieldgate token`` / ``check-config`` and the number of problems."""
    problems = token_limit_problems(token)
    if not problems:
        return ["limits:    fits Event Grid's limits (size, sub, aud)"], 0
    return [f"limits:    {p}" for p in problems], len(problems)
