"""Grounding a natural-language goal in a scene: sentence -> goal atoms over the scene's own names.

A small parser knows the instruction forms the suites use ("put both the X and the Y in the Z", "put
the X on the Y and put the W to the right of the V", "pick up the X and place it in the Y", "stack
the X on the Y", "lift the X"); the object and place phrases it extracts are matched to the scene's
entities by the frozen sentence encoder (all-MiniLM-L6-v2, the policies' own), against each entity's
words. A phrase that matches nothing well enough, or two entities equally well (two plates, no
"left"/"right"), is refused with the candidates: a goal is never guessed silently. "left"/"right"
pick among look-alikes by their position across the table (LIBERO's -y is the robot's left).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lbm.plan.symbolic import SKILLS, PlanningError, SceneState
from lbm.sim.base import atom
from lbm.sim.waypoints import target_words

MIN_SIMILARITY = 0.6
"""Cosine similarity below which a phrase matches no entity."""
MARGIN = 0.03
"""A phrase whose best two entities are closer than this is ambiguous (unless left/right decides)."""
ALIASES: Mapping[str, str] = {
    "porcelain_mug": "white mug",
    "white_yellow_mug": "yellow and white mug",
    "akita_black_bowl": "black bowl",
    "desk_caddy": "caddy",
    "black_book": "book",
    "flat_stove": "stove",
}
"""What LIBERO's instructions call objects whose asset names say otherwise."""
BEYOND = ("open", "close", "turn on", "turn off", "push", "pour", "wipe", "fold")
"""Verbs of skills the library does not have: such goals are refused, not planned."""
_PREP = r"(?P<prep>in|into|inside|on top of|onto|on|to the (?:left|right|front|back) of)"
_ARTICLE = r"(?:the |a |an )?"
_FORMS: tuple[tuple[str, str], ...] = (
    ("both", rf"^(?:put|place|move) both {_ARTICLE}(?P<o>.+?) and {_ARTICLE}(?P<o2>.+?) {_PREP} {_ARTICLE}(?P<t>.+)$"),
    ("pick-place", rf"^(?:pick up|grab|take) {_ARTICLE}(?P<o>.+?) and (?:place|put|drop) it {_PREP} {_ARTICLE}(?P<t>.+)$"),
    ("place", rf"^(?:put|place|move|stack|set) {_ARTICLE}(?P<o>.+?) {_PREP} {_ARTICLE}(?P<t>.+)$"),
    ("lift", rf"^(?:lift|pick up|raise|grab) {_ARTICLE}(?P<o>.+?)(?: off the table| and lift it| up)?$"),
)


@dataclass(frozen=True)
class Grounding:
    """The goal atoms of a sentence, and how each phrase was matched (phrase -> entity, similarity)."""

    sentence: str
    atoms: tuple[str, ...]
    matches: tuple[tuple[str, str, float], ...]


def entity_words(name: str, words: Mapping[str, str]) -> str:
    """How an instruction would name a scene entity: its scene words, an alias, or its name in words."""
    if name in words:
        return words[name]
    text = target_words(name)  # "flat stove", "back compartment of the desk caddy"
    for asset, said in ALIASES.items():
        text = re.sub(rf"\b{asset.replace('_', ' ')}\b", said, text)
    return text


def similarities(
    encode: Callable[[Sequence[str]], np.ndarray], scene: SceneState, phrase: str, candidates: Sequence[str]
) -> tuple[list[str], np.ndarray]:
    """Each candidate entity's words, and their cosine similarity to ``phrase`` under the sentence encoder."""
    texts = [entity_words(c, scene.words) for c in candidates]
    vectors = encode([phrase, *texts])
    return texts, vectors[1:] @ vectors[0]


def clauses(sentence: str) -> list[str]:
    """A goal sentence split into clauses ("... and put the W on the V")."""
    text = re.sub(r"[.!?]+$", "", sentence.strip().lower())
    text = re.sub(r"\s+", " ", text)
    verbs = r"(?=(?:put|place|pick up|stack|lift|move|set|open|close|turn)\b)(?!(?:put|place|drop) it\b)"
    return [c.strip() for c in re.split(rf",?\s+and (?:then )?{verbs}", text) if c.strip()]


class Grounder:
    """Sentence -> goal atoms for one scene (objects, places, positions)."""

    def __init__(
        self,
        scene: SceneState,
        position: Callable[[str], np.ndarray] | None = None,
        encode: Callable[[Sequence[str]], np.ndarray] | None = None,
    ) -> None:
        if encode is None:  # every entity's words are embedded once per grounder, not once per phrase
            from lbm.policies.language import InstructionCache

            encode = InstructionCache(use_user_cache=False).lookup
        self.scene, self.position, self.encode = scene, position, encode
        self.movables = list(scene.objects)
        self.places = list(scene.places)

    def ground(self, sentence: str) -> Grounding:
        """The goal atoms of ``sentence``; :class:`PlanningError` names what could not be grounded and why."""
        atoms: list[str] = []
        matches: list[tuple[str, str, float]] = []
        for clause in clauses(sentence):
            verb = next((v for v in BEYOND if clause.startswith(v + " ")), None)
            if verb:
                raise PlanningError(
                    f"'{clause}' needs a skill to {verb}, which is beyond the skill library ({', '.join(SKILLS)}); "
                    "the goal is refused rather than planned without it."
                )
            form, m = next(((f, m) for f, rx in _FORMS if (m := re.match(rx, clause))), (None, None))
            if m is None:
                raise PlanningError(
                    f"Cannot read '{clause}' as a goal. Forms understood: 'put the X in/on the Y', 'pick up the X and "
                    "place it in the Y', 'put both the X and the Y in the Z', 'stack the X on the Y', 'lift the X' "
                    "(clauses joined by 'and')."
                )
            groups = m.groupdict()
            if form == "lift":
                obj, sim = self.match(groups["o"], self.movables, "object")
                matches.append((groups["o"], obj, sim))
                atoms.append(atom("lifted", obj))
                continue
            prep = groups["prep"]
            side = re.match(r"to the (left|right|front|back) of", prep)
            phrase = f"{side.group(1)} of the {groups['t']}" if side else groups["t"]
            options = [phrase, f"top of the {phrase}"] if prep == "on top of" else [phrase]
            target, tsim = self._best(options)
            matches.append((phrase, target, tsim))
            for key in ("o", "o2"):
                if not groups.get(key):
                    continue
                obj, sim = self.match(groups[key], self.movables, "object")
                matches.append((groups[key], obj, sim))
                atoms.append(self._relation(obj, target, "in" if prep in ("in", "into", "inside") else "on"))
        return Grounding(sentence, tuple(atoms), tuple(matches))

    def _best(self, options: Sequence[str]) -> tuple[str, float]:
        """The best-matching place over alternative readings of a phrase; the first reading's refusal if none fits."""
        found, errors = [], []
        for phrase in options:
            try:
                found.append(self.match(phrase, self.places, "place"))
            except PlanningError as error:
                errors.append(error)
        if not found:
            raise errors[0]
        return max(found, key=lambda r: r[1])

    def _relation(self, obj: str, target: str, said: str) -> str:
        """The scene's atom for obj at target: the one said when the scene defines it, else the one it defines."""
        defined = [r for r in ("in", "on") if atom(r, obj, target) in self.scene.atoms]
        if not defined:
            raise PlanningError(f"The scene defines no on/in atom for {obj} at {target}: that placement cannot be checked.")
        return atom(said if said in defined else defined[0], obj, target)

    def match(self, phrase: str, candidates: Sequence[str], kind: str) -> tuple[str, float]:
        """The entity a phrase names, with its similarity; refuses no match and ties."""
        if not candidates:
            raise PlanningError(f"The scene has no {kind}s to match '{phrase}' against.")
        # "left plate" picks among look-alikes; "right of the plate" is a region's own name.
        side = next((s for s in ("left", "right") if re.match(rf"{s} (?!of\b)", phrase)), None)
        core = phrase.split(" ", 1)[1] if side else phrase
        texts, sims = similarities(self.encode, self.scene, core, candidates)
        order = np.argsort(-sims)
        best = float(sims[order[0]])
        if best < MIN_SIMILARITY:
            near = ", ".join(f"{candidates[i]} ('{texts[i]}', {sims[i]:.2f})" for i in order[:3])
            raise PlanningError(f"No {kind} in the scene matches '{phrase}' (closest: {near}); name one that is there.")
        tied = [int(i) for i in order if best - float(sims[i]) < MARGIN]
        tied = _prefer_regions(tied, candidates)
        if len(tied) == 1:
            return candidates[tied[0]], best
        names = ", ".join(f"{candidates[i]} ('{texts[i]}')" for i in tied)
        if side and self.position is not None:
            y = {i: float(self.position(candidates[i])[1]) for i in tied}
            pick = min(y, key=lambda i: y[i]) if side == "left" else max(y, key=lambda i: y[i])
            return candidates[pick], best
        raise PlanningError(f"'{phrase}' is ambiguous: it fits {names} equally well; say which (e.g. left or right).")


def _prefer_regions(tied: list[int], candidates: Sequence[str]) -> list[int]:
    """An object and its own region tie on their words ("basket"): the region is where things go."""
    names = [candidates[i] for i in tied]
    return [i for i in tied if not any(o != candidates[i] and o.startswith(candidates[i] + "_") for o in names)]
