; lbm's tabletop skill domain: what the skill library can do, in STRIPS.
; Every movable object rests on (at ?o ?p) one place: a region, a container or another object.
; Shared places (regions, baskets, plates, bowls) take any number of objects; stackable places
; (cubes) take one, so stacking needs them clear. Atoms of the scene map onto these facts:
; on(o,p) and in(o,p) become (at o p); lifted(o) is (lifted o).
(define (domain lbm-tabletop)
  (:requirements :strips)
  (:predicates
    (movable ?o) (shared ?p) (stackable ?p) (distinct ?a ?b)
    (at ?o ?p) (clear ?x) (hand-empty) (lifted ?o))

  ; pick-place(o, from, to) onto or into a place that holds many objects; a loaded place is not clear
  ; (a bowl with something in it is not picked up), which matters only for places that are objects
  (:action pick-place
    :parameters (?o ?from ?to)
    :precondition (and (movable ?o) (at ?o ?from) (clear ?o) (hand-empty) (shared ?to) (distinct ?o ?to))
    :effect (and (at ?o ?to) (not (at ?o ?from)) (clear ?from) (not (clear ?to))))

  ; stack(o, from, to) onto an object that holds one
  (:action stack
    :parameters (?o ?from ?to)
    :precondition (and (movable ?o) (at ?o ?from) (clear ?o) (hand-empty) (stackable ?to) (clear ?to) (distinct ?o ?to))
    :effect (and (at ?o ?to) (not (at ?o ?from)) (clear ?from) (not (clear ?to))))

  ; pick-lift(o, from): pick the object up and hold it high
  (:action pick-lift
    :parameters (?o ?from)
    :precondition (and (movable ?o) (at ?o ?from) (clear ?o) (hand-empty))
    :effect (and (lifted ?o) (not (at ?o ?from)) (clear ?from) (not (hand-empty)))))
