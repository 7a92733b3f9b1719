"""In-context examples for few-shot captioning: k image-caption pairs per evaluated image, drawn from a support
split, never from the evaluated images.

The draw for an evaluated image is a seeded permutation of the support split that depends only on (seed, that
image's name): the same examples come back whatever the batch size, ``--limit`` or order. Support images that
are also evaluated (same resolved path) are passed over in that permutation; each example's caption is one of its
references, drawn with the same generator.
"""
import random
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from ..errors import UserError

__all__ = ["Shot", "FewShotError", "draw_shots"]


class FewShotError(UserError):
    """A support split that cannot give k examples per image."""


@dataclass(frozen=True)
class Shot:
    """One in-context example: its image path, its name in the support file and the caption shown."""
    path: str
    name: str
    caption: str


def draw_shots(k: int, eval_paths: Sequence[str], eval_names: Sequence[str], support_paths: Sequence[str],
               support_names: Sequence[str], support_refs: Dict[str, List[str]], seed: int,
               where: str = "--support") -> Tuple[List[List[Shot]], int]:
    """``(shots per evaluated image, number of support images left out because they are evaluated)``.

    ``support_refs`` maps a support path to its reference captions. Raises :class:`FewShotError` when fewer than
    ``k`` support images remain.
    """
    evaluated = set(eval_paths)
    usable = [p not in evaluated and bool(support_refs.get(p)) for p in support_paths]
    overlap = sum(1 for p in support_paths if p in evaluated)
    if sum(usable) < k:
        raise FewShotError(f"--shots {k}: {where} has {sum(usable)} image(s) with captions that are not evaluated "
                           f"({overlap} overlap with --data); need at least {k}")
    draw = min(len(support_paths), k + len(usable) - sum(usable))
    shots = []
    for name in eval_names:
        rng = random.Random(f"{seed}/{name}")
        picks = [j for j in rng.sample(range(len(support_paths)), draw) if usable[j]][:k]
        shots.append([Shot(support_paths[j], support_names[j], rng.choice(support_refs[support_paths[j]]))
                      for j in picks])
    return shots, overlap
