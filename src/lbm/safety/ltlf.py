"""Finite-trace temporal logic (LTLf) -> deterministic finite automata, by ltlf2dfa and MONA.

A safety rule becomes an LTLf formula over propositions (``p0``, ``p1``, ...); this module turns the
formula into a DFA and walks plans through it. The translation is the standard one (De Giacomo and
Vardi, IJCAI 2013): ltlf2dfa (LGPL-3.0) parses the formula and writes it as a monadic second-order
program, which the MONA tool (Debian's ``mona`` package) compiles to a minimal DFA. We run MONA
ourselves, on a private temporary file with a time limit, instead of ltlf2dfa's ``to_dfa``: that one
writes a fixed file inside its own package folder, which races when two processes translate at once.

Reading a finite plan: a trace is one valuation (the set of true propositions) per position; a plan
is safe for a formula iff the DFA accepts the whole trace. For checks *during* execution the verdict
on a prefix is different: a prefix that is not accepted may still be completed (an end-of-plan
obligation such as ``F(last & !p)``), so a prefix *violates* only when the DFA is in a dead state,
one from which no accepting state is reachable. Getting this wrong is the finite-trace pitfall
RoboGuard's walker has (it reads acceptance of the prefix as safety).

MONA's DFAs accept the empty trace when the formula holds on it; lbm's traces always have position 0
(the scene before the first step), so satisfiability here means "accepts some non-empty trace".
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lbm.errors import LbmError

MONA_TIMEOUT_S = 10.0
"""Time limit of one MONA call; a formula that takes longer is refused as too large."""
MAX_STATES = 5000
"""Largest automaton accepted for one constraint (a larger one is refused, not checked partially)."""
MAX_PROPOSITIONS = 40
"""Most propositions in one formula (MONA's BDDs handle more, but rules this wide are a grounding error)."""
INSTALL_HINT = (
    "Plan checking translates rules with the MONA tool: install Debian's `mona` package (apt-get install mona; "
    "`make install` does it when run as root) and the Python package ltlf2dfa (`pip install 'lbm[safety]'`)."
)


class SpecificationError(LbmError):
    """A formula that cannot be translated (syntax, size, time-out, missing tools)."""


@dataclass(frozen=True)
class DFA:
    """A complete deterministic automaton over valuations of ``variables``.

    ``edges[state]`` is a list of ``(mask, bits, target)``: a valuation matches when its bits under
    ``mask`` equal ``bits`` (bit k is ``variables[k]``); MONA's don't-cares are the zeros of ``mask``.
    """

    formula: str
    variables: tuple[str, ...]
    start: int
    accepting: frozenset[int]
    edges: tuple[tuple[tuple[int, int, int], ...], ...]
    live: frozenset[int]
    """States from which an accepting state is reachable (the others are dead: a violation for good)."""

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {v: k for k, v in enumerate(self.variables)}

    @property
    def states(self) -> int:
        return len(self.edges)

    @property
    def satisfiable(self) -> bool:
        """Whether some non-empty trace is accepted."""
        return any(t in self.live for _, _, t in self.edges[self.start])

    def step(self, state: int, true: Iterable[str]) -> int:
        """The state after reading one position whose true propositions are ``true`` (others false)."""
        index = self._index
        word = sum(1 << index[v] for v in true if v in index)
        for mask, bits, target in self.edges[state]:
            if word & mask == bits:
                return target
        raise AssertionError(f"MONA's automaton for {self.formula} is not complete at state {state}")  # cannot happen

    def run(self, trace: Sequence[Iterable[str]], state: int | None = None) -> list[int]:
        """The states after each position of ``trace`` (from ``start``, or from ``state``)."""
        out, q = [], self.start if state is None else state
        for valuation in trace:
            q = self.step(q, valuation)
            out.append(q)
        return out

    def accepts(self, trace: Sequence[Iterable[str]]) -> bool:
        """Whether the finite trace satisfies the formula."""
        return bool(trace) and self.run(trace)[-1] in self.accepting


def translate(formula: str) -> DFA:
    """The minimal DFA of an LTLf formula in ltlf2dfa's syntax (``G``, ``F``, ``X``, ``WX``, ``U``, ``R``,
    ``last``, ``!``, ``&``, ``|``, ``->``); propositions are lower-case names. Cached per formula."""
    return _translate(re.sub(r"\s+", " ", formula.strip()))


@functools.lru_cache(maxsize=4096)
def _translate(formula: str) -> DFA:
    try:
        from lark.exceptions import LarkError
        from ltlf2dfa.base import MonaProgram
        from ltlf2dfa.parser.ltlf import LTLfParser
    except ImportError:
        raise SpecificationError(INSTALL_HINT) from None
    mona = shutil.which("mona")
    if mona is None:
        raise SpecificationError(INSTALL_HINT)
    try:
        parsed = LTLfParser()(formula)
    except LarkError as error:
        raise SpecificationError(f"Cannot parse the LTLf formula {formula!r}: {str(error).splitlines()[0]}") from None
    labels = parsed.find_labels()
    if len(labels) > MAX_PROPOSITIONS:
        raise SpecificationError(
            f"The formula {formula[:80]}... has {len(labels)} propositions (at most {MAX_PROPOSITIONS}): "
            "split the rule, or name fewer objects in it."
        )
    program = MonaProgram(parsed).mona_program()
    with tempfile.TemporaryDirectory(prefix="lbm-mona-") as folder:
        path = os.path.join(folder, "spec.mona")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(program)
        try:
            done = subprocess.run(
                [mona, "-q", "-u", "-w", path], capture_output=True, text=True, timeout=MONA_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            raise SpecificationError(
                f"MONA did not translate {formula[:80]} within {MONA_TIMEOUT_S:g} s: the automaton would be too large; "
                "split the rule into smaller ones."
            ) from None
    if done.returncode != 0 or "Transitions:" not in done.stdout:
        raise SpecificationError(f"MONA failed on {formula[:80]}: {(done.stderr or done.stdout).strip()[:300]}")
    return _parse_mona(formula, done.stdout)


def _parse_mona(formula: str, text: str) -> DFA:
    names = re.search(r"DFA for formula with free variables:[ \t]*(.*)", text)
    variables = tuple(v.lower() for v in (names.group(1).split() if names else []))
    accepting = frozenset(int(s) for s in _field(r"Accepting states:[ \t]*(.*)", text, formula).split())
    count = int(_field(r"Automaton has (\d+) state", text, formula))
    if count > MAX_STATES:
        raise SpecificationError(
            f"The automaton of {formula[:80]} has {count} states (at most {MAX_STATES}): split the rule into smaller ones."
        )
    edges: list[list[tuple[int, int, int]]] = [[] for _ in range(count)]
    for source, pattern, target in re.findall(r"State (\d+): ([01X]*) -> state (\d+)", text):
        mask = sum(1 << k for k, c in enumerate(pattern) if c != "X")
        bits = sum(1 << k for k, c in enumerate(pattern) if c == "1")
        edges[int(source)].append((mask, bits, int(target)))
    # MONA's state 0 reads a dummy first symbol: the automaton of the formula starts at its successor.
    start = edges[0][0][2]
    live = set(accepting)
    grew = True
    while grew:
        before = len(live)
        live |= {s for s, out in enumerate(edges) if any(t in live for _, _, t in out)}
        grew = len(live) > before
    return DFA(formula, variables, start, accepting, tuple(tuple(e) for e in edges), frozenset(live))


def _field(pattern: str, text: str, formula: str) -> str:
    found = re.search(pattern, text)
    if found is None:
        raise SpecificationError(f"Unexpected MONA output for {formula[:80]} (no {pattern.split(':')[0]!r}).")
    return found.group(1)
