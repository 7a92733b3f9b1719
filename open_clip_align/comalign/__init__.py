"""ComAlign (compositional alignment on a frozen CLIP, spec comalign.md): everything outside the model.

* ``scoring`` — max-mean role scores (blocked over the gallery) and the paper/reference score combinations;
* ``text``, ``boxes``, ``views`` — component extraction: spaCy phrases, box providers, view rendering;
* ``store``, ``embed``, ``annotations`` — the component-embedding cache, its builder CLI, caption files.

The model (``ComAlignHead``, ``ComAlignCLIP``, the ``comalign-*`` configs) lives in
``open_clip_align.models.comalign``. Submodules import their own heavy dependencies (spaCy, h5py, scikit-image),
so only ``scoring`` is imported here.
"""
from .scoring import (ComAlignScores, CombinedScores, combine, compute_scores, l2_normalize, maxmean_scores,
                      normalisation_constants, paired_maxmean)

__all__ = ["ComAlignScores", "CombinedScores", "combine", "compute_scores", "l2_normalize", "maxmean_scores",
           "normalisation_constants", "paired_maxmean"]
