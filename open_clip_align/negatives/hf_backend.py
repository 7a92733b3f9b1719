"""``hf`` backend: a local Hugging Face causal LM (e.g. LLaMA-3.1-8B-Instruct, as in DeGLA's Stage 2).

The model and tokenizer load from a local directory only (``local_files_only``: nothing is downloaded). The
prompt goes through the tokenizer's chat template when it has one, else it is used as plain text; prompts are
left-padded and generated in batches of ``batch_size``; only the new tokens are decoded and
``parse_completion`` splits them into candidates. ``temperature == 0`` is greedy decoding (deterministic);
otherwise sampling is seeded per batch without touching the global torch RNG. ``transformers`` is imported only
when the backend is built.
"""
import copy
import gc
import random
from pathlib import Path
from typing import List, Optional, Sequence

from .base import BackendError, Request, register_backend
from .prompts import (Examples, build_messages, examples_from_args, load_examples, load_rules,
                      parse_completion, request_seed)


class HFBackend:
    """Batched generation with a local causal LM; ``max_new_tokens`` is the budget per requested line."""

    name = "hf"

    def __init__(self, model_path, batch_size: int = 8, max_new_tokens: int = 60, temperature: float = 0.0,
                 examples: Optional[Examples] = None, n_examples: int = 4, seed: int = 0, device: str = "cpu"):
        path = Path(model_path) if model_path else None
        if path is None or not path.is_dir():
            raise BackendError(f"--hf-model {model_path!r}: not a directory; expected a local Hugging Face "
                               "model folder (config.json, weights, tokenizer files)")
        if not (path / "config.json").is_file():
            raise BackendError(f"--hf-model {str(path)!r}: no config.json there; expected a local Hugging Face "
                               "model folder (config.json, weights, tokenizer files)")
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(f"hf backend: need batch_size >= 1 and max_new_tokens >= 1 "
                             f"(got {batch_size}, {max_new_tokens})")
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise BackendError(f"the hf backend needs transformers ({e}); install it with "
                               "`pip install transformers`") from None
        self._torch = torch
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype="auto")
        except (OSError, ValueError, KeyError) as e:
            raise BackendError(f"--hf-model {str(path)!r}: cannot load a causal LM and tokenizer from it: "
                               f"{e}") from None
        self.model.to(device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token_id is None:
                raise BackendError(f"--hf-model {str(path)!r}: the tokenizer has neither a pad nor an eos token, "
                                   "so batches cannot be padded")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.use_chat_template = bool(getattr(self.tokenizer, "chat_template", None))
        self.model_path, self.device = str(path), device
        self.batch_size, self.max_new_tokens = int(batch_size), int(max_new_tokens)
        self.temperature, self.seed = float(temperature), int(seed)
        self.examples = examples if examples is not None else load_examples()
        self.rules = load_rules()
        self.n_examples = int(n_examples)
        self._stop_ids = self._eos_ids()

    def __repr__(self):
        return f"HFBackend(model_path={self.model_path!r}, batch_size={self.batch_size}, device={self.device!r})"

    def prompt(self, request: Request) -> str:
        """The text fed to the model for ``request`` (chat template applied when the tokenizer has one)."""
        rng = random.Random(request_seed(self.seed, request))
        messages = build_messages(request.caption, request.neg_type, self.examples, self.n_examples, request.n,
                                  rng, self.rules)
        if self.use_chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages)

    def generate(self, requests: Sequence[Request]) -> List[List[str]]:
        """Candidates per request, in request order, generated ``batch_size`` prompts at a time."""
        out: List[List[str]] = []
        for start in range(0, len(requests), self.batch_size):
            out.extend(self._batch(requests[start:start + self.batch_size]))
        return out

    def close(self) -> None:
        self.model = None
        gc.collect()

    def _batch(self, batch: Sequence[Request]) -> List[List[str]]:
        torch = self._torch
        enc = self.tokenizer([self.prompt(r) for r in batch], return_tensors="pt", padding=True,
                             add_special_tokens=not self.use_chat_template).to(self.device)
        budget = self.max_new_tokens * max(r.n for r in batch)
        config = copy.deepcopy(self.model.generation_config)
        config.max_new_tokens, config.pad_token_id = budget, self.tokenizer.pad_token_id
        config.eos_token_id = sorted(self._stop_ids) or None
        config.top_p, config.top_k = None, None
        if self.temperature > 0:
            config.do_sample, config.temperature = True, self.temperature
        else:
            config.do_sample, config.temperature = False, None
        with torch.inference_mode(), torch.random.fork_rng(devices=self._rng_devices()):
            torch.manual_seed(request_seed(self.seed, batch[0]))
            generated = self.model.generate(**enc, generation_config=config)
        new_tokens = generated[:, enc["input_ids"].shape[1]:].tolist()
        results = []
        for request, tokens in zip(batch, new_tokens):
            stopped = any(t in self._stop_ids for t in tokens)
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            results.append(parse_completion(text, request.n, truncated=not stopped and len(tokens) >= budget))
        return results

    def _eos_ids(self) -> set:
        ids = set()
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(int(i) for i in source)
        return ids

    def _rng_devices(self) -> list:
        dev = self._torch.device(self.device)
        return [dev.index or 0] if dev.type == "cuda" else []


@register_backend("hf")
def _factory(args) -> HFBackend:
    """Build from the CLI namespace (``--hf-model`` is required)."""
    path = getattr(args, "hf_model", None)
    if not path:
        raise BackendError("the hf backend needs --hf-model PATH (a local Hugging Face model folder)")
    return HFBackend(
        path,
        batch_size=getattr(args, "batch_size", 8),
        max_new_tokens=getattr(args, "max_new_tokens", 60),
        temperature=getattr(args, "temperature", 0.0),
        examples=examples_from_args(args),
        n_examples=getattr(args, "n_examples", 4),
        seed=getattr(args, "seed", 0),
        device=getattr(args, "device", None) or "cpu",
    )
