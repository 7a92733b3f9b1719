"""A scorer for the evaluation suite (``open_clip_align.eval``) that ranks with a ComAlign model.

Images become components on the fly (boxes from a provider -> views -> the frozen base -> the head) and
captions become spaCy phrase components (-> the frozen text tower); each unique image and caption is done once
per run. An item's score matrix is the paper form without normalisation (there is no gallery to normalise on
in a pairwise benchmark), averaged over both directions so that choosing a caption for an image and an image
for a caption use the same numbers:

    s(i, t) = ½ [ mean(global, s^e_I2T, s^r_I2T)(i, t) + mean(global, s^e_T2I, s^r_T2I)(t, i) ]

The CLIP-only parts of the suite (zero-shot classification, the blind caption prior) use the base model through
a ``DualEncoderScorer``; retrieval uses ``retrieval_tiles`` (the same paper form, one score per direction, served in
tiles so that no gallery-sized matrix is built).
"""
from typing import Dict, List, Sequence, Tuple

import torch
from tqdm import tqdm

from ..eval.items import EvalDataError, ImageRef, Item
from ..eval.model_scorers import ModelScorer, register_model_scorer
from ..eval.retrieval import Tile
from ..eval.scoring import DualEncoderScorer
from .boxes import BoxProvider, add_box_arguments, box_options, box_provider_from_args
from .scoring import combine, compute_scores
from .slots import phrase_tokens
from .text import ComponentParser
from .views import image_views

IMAGE_KEYS = ("image_features", "refined_global", "image_entity", "image_relation", "image_entity_mask",
              "image_relation_mask")
TEXT_KEYS = ("text_features", "text_entity", "text_relation", "text_entity_mask", "text_relation_mask")


def _stack(outputs: Sequence[Dict[str, torch.Tensor]], keys) -> Dict[str, torch.Tensor]:
    return {k: torch.stack([o[k] for o in outputs]) for k in keys}


class ComAlignScorer:
    """Scores ``Item``s with a ``ComAlignCLIP``; drop-in for ``DualEncoderScorer`` in the evaluation suite.

    ``provider`` proposes boxes per image (``make_box_provider``); ``render``/``letterbox`` as in the embed
    tool; ``padding`` ``"masked"`` (heads trained here) or ``"reference"`` (the released head's scorer);
    ``global_term`` ``"refined"`` (ĉ) or ``"clip"`` (ĝ) in the paper mean.
    """

    def __init__(self, model, preprocess, tokenizer, provider: BoxProvider, parser: ComponentParser = None,
                 render: str = "grey", letterbox: bool = False, padding: str = "masked", global_term: str = "refined",
                 device="cpu", batch_size: int = 32, text_batch_size: int = 256, progress: bool = True,
                 base: DualEncoderScorer = None):
        self.model, self.preprocess, self.tokenizer, self.provider = model, preprocess, tokenizer, provider
        self.parser = parser or ComponentParser(n_entity=model.n_entity, n_relation=model.n_relation)
        self.render, self.letterbox, self.padding, self.global_term = render, letterbox, padding, global_term
        self.device, self.batch_size, self.text_batch_size = torch.device(device), batch_size, text_batch_size
        self.progress = progress
        self.base = base or DualEncoderScorer(model, preprocess, tokenizer, device=device, batch_size=batch_size,
                                              text_batch_size=text_batch_size, progress=progress)
        self._images: Dict[ImageRef, Dict[str, torch.Tensor]] = {}
        self._texts: Dict[str, Dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ the base CLIP (suite parts that need it)
    def image_features(self, refs):
        return self.base.image_features(refs)

    def text_features(self, texts):
        return self.base.text_features(texts)

    def text_norms(self, texts):
        return self.base.text_norms(texts)

    # ------------------------------------------------------------------ components
    def _views(self, ref: ImageRef) -> torch.Tensor:
        return image_views(ref.load(), ref.path, self.provider, self.preprocess, self.model.n_entity,
                           self.model.n_relation, self.render, self.letterbox)[0]

    @torch.inference_mode()
    def image_components(self, refs: Sequence[ImageRef]) -> Dict[ImageRef, Dict[str, torch.Tensor]]:
        """``{ref: {IMAGE_KEYS...}}`` (normalised head outputs and masks, CPU); each unique ref done once."""
        todo = [r for r in dict.fromkeys(refs) if r not in self._images]
        for start in tqdm(range(0, len(todo), self.batch_size), desc="image components", leave=False,
                          disable=not self.progress):
            chunk = todo[start:start + self.batch_size]
            views = torch.stack([self._views(r) for r in chunk]).to(self.device)
            out = self.model(image=views)
            for i, ref in enumerate(chunk):
                self._images[ref] = {k: out[k][i].float().cpu() if out[k].is_floating_point() else out[k][i].cpu()
                                     for k in IMAGE_KEYS}
        return {r: self._images[r] for r in refs}

    @torch.inference_mode()
    def text_components(self, texts: Sequence[str]) -> Dict[str, Dict[str, torch.Tensor]]:
        """``{caption: {TEXT_KEYS...}}``; each unique caption parsed and encoded once."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._texts]
        parsed = dict(zip(todo, self.parser.parse_many(todo)))
        for start in tqdm(range(0, len(todo), self.text_batch_size), desc="text components", leave=False,
                          disable=not self.progress):
            chunk = todo[start:start + self.text_batch_size]
            tokens = torch.stack([phrase_tokens(self.tokenizer, t, parsed[t], self.model.n_entity,
                                                self.model.n_relation) for t in chunk]).to(self.device)
            out = self.model(text=tokens)
            for i, text in enumerate(chunk):
                self._texts[text] = {k: out[k][i].float().cpu() if out[k].is_floating_point() else out[k][i].cpu()
                                     for k in TEXT_KEYS}
        return {t: self._texts[t] for t in texts}

    # ------------------------------------------------------------------ scores
    def _combined(self, refs: Sequence[ImageRef], texts: Sequence[str]):
        """Paper-form ``CombinedScores`` (float64) from exactly computed component scores (``exact=True``): the
        scores of a pair depend on that image and caption only, so a repeated caption ties exactly."""
        images, captions = self.image_components(refs), self.text_components(texts)
        scores = compute_scores(_stack([images[r] for r in refs], IMAGE_KEYS),
                                _stack([captions[t] for t in texts], TEXT_KEYS), padding=self.padding, exact=True)
        return combine(scores, mode="paper", global_term=self.global_term)

    def directional_scores(self, refs: Sequence[ImageRef], texts: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(i2t [n_images, n_texts], t2i [n_texts, n_images])`` float32, paper form, no normalisation."""
        combined = self._combined(refs, texts)
        return combined.i2t.float(), combined.t2i.float()

    def score_items(self, items: Sequence[Item]) -> List[torch.Tensor]:
        """One ``[n_images, n_captions]`` float32 matrix per item: ½(I2T + T2Iᵀ) (all components computed up
        front; each entry a function of its image and caption alone)."""
        self.image_components([r for it in items for r in it.images])
        self.text_components([c for it in items for c in it.captions])
        out = []
        for it in items:
            combined = self._combined(it.images, it.captions)
            out.append(((combined.i2t + combined.t2i.T) / 2).float())
        return out

    def retrieval_tiles(self, refs: Sequence[ImageRef], texts: Sequence[str]) -> Tile:
        """Gallery scores for retrieval, tile by tile (``eval.retrieval.scoring_ranks``): every component is computed
        up front, then ``tile(rows [bi], cols [bt])`` gives ``directional_scores`` of those images and captions
        (``(i2t [bi, bt], t2i [bt, bi])``). Exact scores depend on their pair alone, so the ranks equal those of
        the full [n_images, n_texts] matrices, which are never built."""
        self.image_components(refs)
        self.text_components(texts)

        def tile(rows: torch.Tensor, cols: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
            return self.directional_scores([refs[i] for i in rows.tolist()], [texts[t] for t in cols.tolist()])
        return tile


@register_model_scorer
class ComAlignModelScorer(ModelScorer):
    """``python -m open_clip_align.eval`` on a ``comalign-*`` model: rank with its components (``ComAlignScorer``)."""

    name = "comalign"
    title = "ComAlign model (comalign-*)"

    def add_arguments(self, g):
        g.add_argument("--comalign-head", default=None, help="head weights (the released file or ours)")
        add_box_arguments(g, prefix="comalign-", default="grid")
        g.add_argument("--comalign-render", default="grey", choices=("grey", "crop"), help="how a view shows its box")
        g.add_argument("--comalign-letterbox", action="store_true", help="pad images to a square before rendering")
        g.add_argument("--comalign-padding", default="masked", choices=("masked", "reference"),
                       help="max-mean over real components only (heads trained here) or the released scorer's "
                            "zero-padded means (the released head)")
        g.add_argument("--comalign-global", default="refined", choices=("refined", "clip"),
                       help="global term of the paper mean: the refined token ĉ or CLIP's ĝ")

    def matches(self, model_name):
        from ..models import plugin_block
        return (plugin_block(model_name) or {}).get("arch") == "comalign"

    def check(self, args):
        box_options(args, "comalign-")

    def build(self, args, model, preprocess, tokenizer, base):
        from .model import HeadCheckpointError, load_comalign_head
        if args.comalign_head:  # after --pretrained, so it wins over the head of a combined checkpoint
            try:
                load_comalign_head(model.comalign_head, args.comalign_head)
            except HeadCheckpointError as err:  # the suite's own error class, as for its other inputs
                raise EvalDataError(str(err)) from None
        return ComAlignScorer(model, preprocess, tokenizer, box_provider_from_args(args, "comalign-"),
                              render=args.comalign_render, letterbox=args.comalign_letterbox,
                              padding=args.comalign_padding, global_term=args.comalign_global, device=args.device,
                              batch_size=args.batch_size, progress=base.progress, base=base)
