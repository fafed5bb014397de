"""Plain-language safety rules -> LTLf constraints grounded in a scene (the "root of trust" stage).

A deployment file lists rules in words and, optionally, marks regions and extends object classes::

    rules:
      - keep liquids off the stove
      - do not put anything in the bowl while it is on the stove
      - stay out of the region marked keep-out
    marks:
      keep-out: [main_table_stove_front_region]
    classes:
      sharp: [knife, scissors]

A contextualizer grounds the rules against the *scene* (its objects, places and atoms from the
symbolic-state API), never against a user's goal, so no goal wording can change what is forbidden.
The template contextualizer here reads each rule with one of a few forms (see ``FORMS``), maps its
object and place phrases to the scene's entities with the sentence encoder (MiniLM, as the goal
grounder does) and its class words ("liquids", "anything sharp") to object classes, and writes one
LTLf formula per rule over two kinds of propositions:

* scene atoms, ``on(o,p)``, ``in(o,p)``, ``turnon(s)``, ``open(d)`` ... as the scene reports them;
* skill propositions, ``pick(o)`` (a step moves ``o``) and ``place(o,p)`` (a step puts ``o`` on/in ``p``).

Every constraint keeps a one-line reason. A rule whose object or place this scene does not have
(no stove in a living room) applies to nothing here: it is listed as *vacuous* with why, never
dropped silently. A rule over a predicate the scene does not report (``upright``), a rule no form
reads, a mark the file does not define and rules that contradict each other are errors.
:class:`Contextualizer` is a protocol, so an LLM root of trust can replace the templates later.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lbm.errors import LbmError
from lbm.plan.ground import MARGIN, MIN_SIMILARITY, entity_words, similarities
from lbm.plan.symbolic import SceneState
from lbm.safety.ltlf import DFA, SpecificationError, translate
from lbm.sim.base import atom, parse_atom

CLASSES: Mapping[str, tuple[str, ...]] = {
    "liquid": ("bottle", "wine", "milk", "juice", "ketchup", "sauce"),
    "sharp": ("knife", "scissors", "blade", "fork", "skewer"),
    "food": ("cheese", "butter", "pudding", "soup", "sauce", "ketchup", "milk", "juice", "cookies", "bread"),
    "fragile": ("mug", "bowl", "plate", "bottle", "glass", "cup"),
    "container": ("basket", "bowl", "caddy", "tray", "box"),
    "cube": ("cube", "block"),
}
"""Object classes rules may name, by words of the objects' names (a deployment file can add or extend)."""
QUANTIFIERS = ("anything", "something", "everything", "any object", "all objects", "objects", "any item", "items")
"""Phrases that mean every movable object."""
STATES = {"on": "turnon", "running": "turnon", "turned on": "turnon", "switched on": "turnon", "off": "turnoff",
          "open": "open", "opened": "open", "closed": "close", "shut": "close"}  # fmt: skip
"""Device states a condition can name -> the scene predicate that reports them."""
_NEG = r"(?:never|do not|don't|dont|must not|must never|should not)"
_PUT = r"(?:put|place|set|drop|move|stack|store)"
_REL = r"(?P<rel>on top of|onto|on|into|inside|in|within|near|next to)"
FORMS: tuple[tuple[str, str], ...] = (
    ("place-while", rf"^{_NEG} {_PUT} (?P<what>.+?) {_REL} (?P<where>.+?) (?:while|when|if) (?P<cond>.+)$"),
    ("place-before", rf"^{_NEG} {_PUT} (?P<what>.+?) {_REL} (?P<where>.+?) (?:before|until) (?P<cond>.+)$"),
    ("turn-on-while",
     rf"^{_NEG} (?:turn on|switch on|start) (?P<where>.+?) (?:while|when|if) (?P<what>.+?) (?:is|are) (?:on|in) it$"),
    ("leave", rf"^{_NEG} leave (?P<what>.+?) {_REL} (?P<where>.+?)(?: at the end| when done| behind)?$"),
    ("place", rf"^{_NEG} {_PUT} (?P<what>.+?) {_REL} (?P<where>.+)$"),
    ("keep-away", r"^keep (?P<what>.+?) (?:off|out of|away from) (?P<where>.+)$"),
    ("stay-out", r"^(?:stay out of|keep out of|do not enter|never enter|never reach into) (?P<where>.+)$"),
    ("pick", rf"^{_NEG} (?:pick up|touch|move|grasp|lift|handle|take) (?P<what>.+)$"),
    ("keep-at", r"^(?:always )?keep (?P<what>.+?) (?P<rel>on top of|on|inside|in) (?P<where>.+)$"),
    ("keep-state", r"^keep (?P<what>.+?) (?P<state>[a-z]+)$"),
)  # fmt: skip
"""The rule forms the template contextualizer reads, tried in order (first match wins)."""
EXAMPLES = (
    "never put anything sharp within the region marked person-reach",
    "keep liquids off the stove",
    "do not put anything in the bowl while it is on the stove",
    "do not turn on the stove while something is on it",
    "do not put the tomato sauce in the basket before the alphabet soup is in the basket",
    "do not leave food on the stove",
    "stay out of the region marked keep-out",
    "never touch the wine bottle",
    "keep the bowl on the plate",
)


@dataclass(frozen=True)
class RuleFile:
    """A deployment's rules, its marked regions and its extra object classes."""

    rules: tuple[str, ...]
    marks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    classes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    source: str = "<rules>"


@dataclass(frozen=True)
class Constraint:
    """One grounded rule: an LTLf formula over ``p0 .. pk``, what each proposition means, and why."""

    rule: str
    formula: str
    propositions: tuple[str, ...]
    """``propositions[k]`` is what ``pk`` stands for: a scene atom or a skill proposition."""
    reason: str

    @property
    def dfa(self) -> DFA:
        return translate(self.formula)

    @functools.cached_property
    def _letter(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for k, p in enumerate(self.propositions):
            out.setdefault(p, []).append(f"p{k}")
        return out

    def letters(self, valuation: Collection[str]) -> set[str]:
        """The true ``pk`` of a valuation (a set of true atoms and skill propositions)."""
        return {name for p in valuation if p in self._letter for name in self._letter[p]}


@dataclass(frozen=True)
class Specification:
    """What a rule file means in one scene: its constraints, and the rules that apply to nothing here."""

    constraints: tuple[Constraint, ...]
    vacuous: tuple[tuple[str, str], ...] = ()
    """(rule, why it applies to nothing in this scene)."""
    contextualizer: str = "templates"


class Contextualizer(Protocol):
    """Rules + scene -> specification. The template one is the default; an LLM root of trust, served
    elsewhere, implements the same call and sees the rules and the scene, never a user's goal."""

    name: str

    def ground(self, rules: RuleFile, scene: SceneState) -> Specification: ...


def read_rules(path: str | Path) -> RuleFile:
    """Read a deployment's rules file (YAML); every rule must be readable by some form (else an error)."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise LbmError(f"Rules file {file} not found; write one (see `lbm safety plan-redteam --help` for the format).")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise LbmError(f"Rules file {file} is not valid YAML: {str(error).splitlines()[0]}") from None
    return parse_rules(data, str(file))


def parse_rules(data: Any, source: str = "<rules>") -> RuleFile:
    """A :class:`RuleFile` from parsed YAML, checking its shape and that every rule has a readable form."""
    if not isinstance(data, dict) or "rules" not in data:
        raise LbmError(f"{source}: a rules file is a mapping with a 'rules:' list (and optional 'marks:', 'classes:').")
    unknown = sorted(set(data) - {"rules", "marks", "classes"})
    if unknown:
        raise LbmError(f"{source}: unknown key(s) {', '.join(unknown)}; known: rules, marks, classes.")
    rules = data["rules"]
    if not isinstance(rules, list) or not rules or not all(isinstance(r, str) and r.strip() for r in rules):
        raise LbmError(f"{source}: 'rules' must be a non-empty list of sentences.")
    for k, rule in enumerate(rules, 1):
        if _form(rule) is None:
            raise LbmError(
                f"{source}: rule {k} ({rule!r}) has no form the contextualizer reads. Forms, e.g.: " + "; ".join(EXAMPLES)
            )
    marks, classes = data.get("marks") or {}, data.get("classes") or {}
    for key, value in (("marks", marks), ("classes", classes)):
        if not isinstance(value, dict) or not all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in value.values()
        ):
            raise LbmError(f"{source}: '{key}' maps names to lists of names, e.g. {key}: {{keep-out: [region_a]}}.")
    return RuleFile(
        tuple(_normal(r) for r in rules),
        {_normal(k): tuple(v) for k, v in marks.items()},
        {_normal(k): tuple(v) for k, v in classes.items()},
        source,
    )


class TemplateContextualizer:
    """The rule forms of ``FORMS`` + the sentence encoder (see the module doc)."""

    name = "templates"

    def __init__(self, encode: Callable[[Sequence[str]], np.ndarray] | None = None) -> None:
        if encode is None:
            from lbm.policies.language import InstructionCache

            encode = InstructionCache(use_user_cache=False).lookup
        self.encode = encode

    def ground(self, rules: RuleFile, scene: SceneState) -> Specification:
        constraints: list[Constraint] = []
        vacuous: list[tuple[str, str]] = []
        for rule in rules.rules:
            try:
                constraints.append(_Grounding(self, rules, scene, rule).constraint())
            except _Vacuous as why:
                vacuous.append((rule, str(why)))
        spec = Specification(tuple(constraints), tuple(vacuous), self.name)
        check_consistent(spec)
        return spec


def check_consistent(spec: Specification) -> None:
    """Refuse a specification no trace can satisfy, naming the rule(s): each alone, then each pair."""
    for c in spec.constraints:
        if not c.dfa.satisfiable:
            raise SpecificationError(f"Rule {c.rule!r} can never be satisfied ({c.formula} over {', '.join(c.propositions)}).")
    for i, a in enumerate(spec.constraints):
        for b in spec.constraints[i + 1 :]:
            if set(a.propositions) & set(b.propositions) and not translate(conjoin([a, b])[0]).satisfiable:
                raise SpecificationError(f"The rules {a.rule!r} and {b.rule!r} contradict each other: no plan satisfies both.")


def conjoin(constraints: Sequence[Constraint]) -> tuple[str, tuple[str, ...]]:
    """One formula for several constraints over a shared proposition list (for consistency checks)."""
    names: dict[str, str] = {}
    parts = []
    for c in constraints:  # rename each constraint's p0.. to shared names (x.. first, so no clash), then back to p..
        local = {f"p{k}": names.setdefault(p, f"x{len(names)}") for k, p in enumerate(c.propositions)}
        parts.append("(" + re.sub(r"\bp\d+\b", lambda m, local=local: local[m.group(0)], c.formula) + ")")
    return re.sub(r"\bx(\d+)\b", r"p\1", " & ".join(parts)), tuple(names)


class _Vacuous(Exception):
    """The rule names something this scene does not have: it applies to nothing here."""


class _Grounding:
    """One rule grounded in one scene."""

    def __init__(self, owner: TemplateContextualizer, rules: RuleFile, scene: SceneState, rule: str) -> None:
        self.encode, self.rules, self.scene, self.rule = owner.encode, rules, scene, rule
        self.classes = {**CLASSES, **{k: (*CLASSES.get(k, ()), *v) for k, v in rules.classes.items()}}

    def constraint(self) -> Constraint:
        form, m = _form(self.rule) or ("", None)
        assert m is not None  # parse_rules refused rules without a form
        g = m.groupdict()
        rel = g.get("rel")
        if rel in ("near", "next to"):
            raise SpecificationError(
                f"Rule {self.rule!r}: '{rel}' is not a relation this scene reports (it reports on and in atoms)."
            )
        if form == "keep-state":
            return self._keep_state(g["what"], g["state"])
        if form == "pick":
            objects = self.objects(g["what"])
            return self._make("G(!({0}))", [[f"pick({o})" for o in objects]], f"never move {_list(objects)}")
        what = self.objects(g["what"]) if g.get("what") and form != "turn-on-while" else list(self.scene.objects)
        places = self.places(g["where"])
        if form == "turn-on-while":
            things = self.objects(g["what"])
            devices = self._device_atoms(g["where"], "turnon", places)
            return self._make(
                "G(!(({0}) & ({1})))",
                [devices, self._at(things, places)],
                f"never {_list(devices)} while {_list(things)} rests there",
            )
        if form in ("place-while", "place-before"):
            cond = self.condition(g["cond"], g["where"], places)
            moves = [f"place({o},{p})" for o in what for p in places if o != p]
            if form == "place-while":
                return self._make(
                    "G(({1}) -> !({0}))", [moves, cond], f"never put {_list(what)} on/in {_list(places)} while {_list(cond)}"
                )
            reason = f"put {_list(what)} on/in {_list(places)} only after {_list(cond)}"
            return self._make("((!({0})) U ({1})) | G(!({0}))", [moves, cond], reason)
        if form == "keep-at":  # every named object always on/in one of the places
            groups = [self._at([o], places) for o in what]
            template = "G(" + " & ".join(f"({{{k}}})" for k in range(len(groups))) + ")"
            return self._make(template, groups, f"always {_list(what)} on/in {_list(places)}")
        at = self._at(what, places)
        if form == "leave":
            return self._make("F(last & !({0}))", [at], f"at the end, none of {_list(at)}")
        return self._make("G(!({0}))", [at], f"never {_list(at)}")

    # ---- formulas ------------------------------------------------------------------------------
    def _make(self, template: str, groups: list[list[str]], reason: str) -> Constraint:
        props: list[str] = []
        parts = []
        for group in groups:
            if not group:
                raise _Vacuous("no proposition of this scene fits it")
            names = [f"p{len(props) + k}" for k in range(len(group))]
            props += group
            parts.append(" | ".join(names))
        formula = template.format(*parts)
        return Constraint(self.rule, formula, tuple(props), f"{reason} (rule: {self.rule!r})")

    def _at(self, objects: Sequence[str], places: Sequence[str]) -> list[str]:
        atoms = self.scene.atoms
        return [a for o in objects for p in places for a in (atom("on", o, p), atom("in", o, p)) if o != p and a in atoms]

    def _keep_state(self, phrase: str, state: str) -> Constraint:
        objects = self.objects(phrase)
        preds = sorted({parse_atom(a)[0] for a in self.scene.atoms})
        held = [atom(state, o) for o in objects if atom(state, o) in self.scene.atoms]
        if not held:
            raise SpecificationError(
                f"Rule {self.rule!r} needs the predicate {state}(...) for {_list(objects)}, which this scene does not "
                f"report (its predicates: {', '.join(preds)}); it cannot be checked here, so it is refused, not assumed."
            )
        return self._make("G({0})", [held], f"always {_list(held)}")

    def _device_atoms(self, phrase: str, predicate: str, family: Sequence[str]) -> list[str]:
        found = [atom(predicate, e) for e in self._roots(family) if atom(predicate, e) in self.scene.atoms]
        if not found:
            raise SpecificationError(
                f"Rule {self.rule!r}: '{phrase}' ({_list(family)}) has no {predicate}(...) atom in this scene, "
                "so the state the rule is about cannot be observed; it is refused, not assumed."
            )
        return found

    def condition(self, text: str, it: str, places: Sequence[str]) -> list[str]:
        """A condition phrase -> the atoms any of which make it true."""
        text = re.sub(r"^(?:the|a|an) ", "", text.strip())
        placed = re.match(rf"^(?P<x>.+?) (?:is|are) {_REL} (?P<y>.+)$", text)
        if placed and placed.group("y") not in STATES:
            x = placed.group("x")
            things = list(self.scene.objects) if x in ("something", "anything") else self.objects(it if x == "it" else x)
            where = places if placed.group("y") == "it" else self.places(placed.group("y"))
            return self._at(things, where)
        stated = re.match(r"^(?P<x>.+?) (?:is|are) (?P<s>turned on|switched on|on|off|running|open|opened|closed|shut)$", text)
        if stated is None:
            raise SpecificationError(
                f"Rule {self.rule!r}: cannot read the condition '{text}' "
                "(forms: 'X is on/in Y', 'it is on', 'the drawer is open')."
            )
        family = places if stated.group("x") == "it" else self.places(stated.group("x"))
        return self._device_atoms(stated.group("x") if stated.group("x") != "it" else it, STATES[stated.group("s")], family)

    # ---- phrases -> entities ---------------------------------------------------------------------
    def objects(self, phrase: str) -> list[str]:
        """Movable objects a phrase names: all (anything), a class (liquids, anything sharp) or entities."""
        text = re.sub(r"^(?:the|a|an|any|all|every) ", "", _normal(phrase))
        if text in QUANTIFIERS or text in ("thing", "things", "object"):
            return list(self.scene.objects)
        core = re.sub(r"^(?:anything|something|everything|things|objects|items) |(?: things| objects| items)$", "", text)
        cls = next((c for c in self.classes if core in (c, c + "s", c + "es") or core.rstrip("s") == c), None)
        if cls is not None:
            members = [o for o in self.scene.objects if set(entity_words(o, self.scene.words).split()) & set(self.classes[cls])]
            if not members:
                raise _Vacuous(f"no object of this scene is {cls} ({', '.join(self.scene.objects)})")
            return members
        return self._match(text, list(self.scene.objects), "object")

    def places(self, phrase: str) -> list[str]:
        """Places a phrase names: a marked region, or scene places with their fixture's other regions."""
        text = re.sub(r"^(?:the|a|an) ", "", _normal(phrase))
        marked = re.match(r"^(?:regions?|areas?|zones?) marked (?P<m>.+)$", text)
        key = _normal(marked.group("m")) if marked else next((k for k in self.rules.marks if _same(k, text)), None)
        if key is not None:
            if key not in self.rules.marks:
                raise SpecificationError(
                    f"Rule {self.rule!r} refers to the region marked {key!r}, which {self.rules.source} does not mark "
                    f"(marks: {', '.join(self.rules.marks) or 'none'}); add it under 'marks:'."
                )
            names = [p for p in self.scene.places if p in self.rules.marks[key]]
            if not names:
                raise _Vacuous(f"none of the regions marked {key!r} ({', '.join(self.rules.marks[key])}) is in this scene")
            return names
        hits = self._match(re.sub(r"^top of (?:the )?", "", text), list(self.scene.places), "place")
        roots = self._roots(hits)
        return [p for p in self.scene.places if p in hits or any(p.startswith(r + "_") or p == r for r in roots)]

    def _roots(self, names: Sequence[str]) -> list[str]:
        """The fixtures or objects places belong to (``flat_stove_1_cook_region`` -> ``flat_stove_1``)."""
        known = set(self.scene.places) | set(self.scene.objects)
        out = []
        for n in names:
            parts = n.split("_")
            root = next(("_".join(parts[:k]) for k in range(1, len(parts) + 1) if "_".join(parts[:k]) in known), n)
            out.append(root)
        return list(dict.fromkeys(out))

    def _match(self, phrase: str, candidates: list[str], kind: str) -> list[str]:
        """Entities whose words match the phrase (the best, and any as good within the grounder's margin)."""
        if not candidates:
            raise _Vacuous(f"the scene has no {kind}s")
        _, sims = similarities(self.encode, self.scene, phrase, candidates)
        best = float(sims.max())
        if best < MIN_SIMILARITY:
            near = int(np.argmax(sims))
            raise _Vacuous(f"no {kind} of this scene is '{phrase}' (closest: {candidates[near]}, similarity {best:.2f})")
        # A rule about "the plate" in a scene with two plates covers both: for safety, ties are included.
        return [c for c, s in zip(candidates, sims) if best - float(s) < MARGIN]


def _form(rule: str) -> tuple[str, re.Match[str]] | None:
    text = _normal(rule)
    return next(((name, m) for name, rx in FORMS if (m := re.match(rx, text))), None)


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[.!]+$", "", str(text).strip().lower().replace("’", "'")))


def _same(mark: str, text: str) -> bool:
    words = lambda s: re.sub(r"[^a-z0-9]+", " ", s.replace("'s", "")).split()  # noqa: E731
    return words(mark) == words(text)


def _list(items: Sequence[str]) -> str:
    items = list(items)
    return ", ".join(items[:4]) + (f" and {len(items) - 4} more" if len(items) > 4 else "")
