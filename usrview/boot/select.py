"""Which image a boot serves: boot counting and the fallback to the last good image.

:func:`plan` is the rule, a pure function of the command line's request, the
recorded images and their boot states (:mod:`usrview.images.bootstate`).  It
returns the candidates in the order the initrd tries them: the first one that
loads is served.

1. The image asked for (``usrview.image=``, default ``current``):

   - chosen by hand (an id, ``previous``, the rollback word): served whatever its
     state, and no try is spent -- a hand on the keyboard overrules the counting;
   - good: served;
   - on trial with tries left: served, spending one try (before it is mounted,
     so that a boot that dies while loading or serving it counts);
   - on trial with no tries left: it becomes bad (:attr:`Plan.mark_bad`);
   - bad, or not an image at all (unknown id, no previous image): not served.

2. Then the good images: the one ``usrview boot-complete`` marked good last,
   then the other good images, newest first.
3. Last, so that a machine with no good image (its very first image on trial,
   say) still boots: every other image, the one asked for first, then current,
   previous and the rest newest first.  Only when none of them loads does the
   boot fail.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from usrview.images import bootstate
from usrview.images.bootstate import BootState

__all__ = ["Candidate", "Plan", "plan"]


@dataclass(frozen=True)
class Candidate:
    """An image to try. Attributes: image (id), spend_try (serving it spends one of its
    tries), reason (why it is served instead of the image asked for; "" for that one)."""

    image: str
    spend_try: bool = False
    reason: str = ""


@dataclass
class Plan:
    """Attributes: requested (the id asked for, or the reference when it names no
    image), candidates (in order), mark_bad ((id, why) of an image whose tries ran out)."""

    requested: str
    candidates: list[Candidate] = field(default_factory=list)
    mark_bad: tuple[str, str] | None = None


def plan(state: BootState, images: list[str], *, requested: str, requested_id: str | None,
         explicit: bool = False, not_found: str = "", current: str | None = None,
         previous: str | None = None) -> Plan:
    """The candidates for this boot.

    ``images``: the recorded image ids, newest first.  ``requested``: the
    reference asked for; ``requested_id``: the image it names (None when it names
    none, ``not_found`` then says why).
    """
    result = Plan(requested_id or requested)
    reason = not_found or f"no image {requested!r}"
    if requested_id is not None:
        entry = state.of(requested_id)
        if explicit or entry.state == bootstate.GOOD:
            result.candidates.append(Candidate(requested_id))
        elif entry.state == bootstate.TRIAL and (entry.tries or 0) > 0:
            result.candidates.append(Candidate(requested_id, spend_try=True))
        elif entry.state == bootstate.TRIAL:
            why = "it was booted on trial and never reached boot-complete, and has no tries left"
            result.mark_bad = (requested_id, why)
            reason = f"image {requested_id} is bad: {why}"
        else:
            reason = f"image {requested_id} is bad: {entry.why or 'marked bad'}"
    good = [i for i in images if state.of(i).state == bootstate.GOOD]
    if state.last_good in good:
        good.remove(state.last_good)
        good.insert(0, state.last_good)
    for image_id in good:
        result.candidates.append(Candidate(image_id, reason=reason))
    last_resort = f"{reason}; no good image could be served"
    for image_id in [requested_id, current, previous, *images]:
        if image_id is not None and image_id in images:
            result.candidates.append(Candidate(image_id, reason=last_resort))
    seen: set[str] = set()
    result.candidates = [c for c in result.candidates if not (c.image in seen or seen.add(c.image))]
    return result
