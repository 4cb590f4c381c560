"""Exporting a trained model: `python -m trainer.export RUN --to safetensors OUT` writes weights and
h_params that rebuild the same model, for any architecture; `--to hf OUT` a GPT-2 dir that transformers
loads with our logits, our greedy continuation and the run's tokenizer ids, for every architecture
GPT-2 can express (the rest is refused, naming the keys)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys

import pytest
import torch
from helpers import TINY, call_main, ok

import trainer.export
from trainer.data.encodings import EXTRA, of_checkpoint
from trainer.generate import load_model
from trainer.hf_tokenizer import model_rows

pytest.importorskip("safetensors")


@pytest.mark.parametrize("variant", [[], ["model=modern", "tie_weights=true", "activation=swiglu"]])
def test_an_exported_run_rebuilds_the_same_model(trainer_here, tmp_path, variant):
    ok(trainer_here(*TINY, "max_iters=10", *variant, "hydra.run.dir=run"))
    r = call_main(trainer.export.main, "run", "--to", "safetensors", "out", cwd=tmp_path)
    assert r.returncode == 0 and "Wrote out/model.safetensors" in r.stdout
    exported, h = trainer.export.load_safetensors(tmp_path / "out")
    ours, state = load_model(str(tmp_path / "run"))
    assert h["vocab"] == state["vocab"].tolist()  # compact model ids -> the encoding's, for decoding
    idx = torch.randint(0, ours.head.out_features, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(exported(idx)[0], ours(idx)[0])
    assert json.loads((tmp_path / "out" / "h_params.json").read_text())["d_model"] == 32


@pytest.mark.parametrize("to", ["safetensors", "hf"])
def test_exporting_a_missing_run_is_one_line(tmp_path, to):
    r = call_main(trainer.export.main, "nowhere", "--to", to, "out", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == ("error: checkpoint=nowhere: no checkpoint there "
                                                  "(expected a run dir or a .ckpt file)")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- --to hf: a GPT-2 dir for transformers

# accents, CJK, emoji (one joined by ZWJs), code, runs of spaces, tabs and newlines, contractions, digits
VARIED = ("Héllo wörld — naïve café! 日本語のテキスト 🚀 👩‍👩‍👧 ok\n\ndef f(x):\n    return x**2  # sq\n\n\n"
          "   \t tabs\tand    spaces   \n  \nit's we'll DON'T 12345678 3.14159 end   \n\n")
PROMPT = "fix: the "
# the book's default architecture (sinusoidal positions, ReLU, an untied head, compacted cl100k) less its
# head bias, the one key of it GPT-2 cannot express
BOOK_EXPORTABLE = ["head_bias=false"]
needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason=EXTRA)


def export_hf(tmp_path, run="run", out="out"):
    r = ok(call_main(trainer.export.main, run, "--to", "hf", out, cwd=tmp_path))
    assert f"AutoModelForCausalLM.from_pretrained('{out}')" in r.stdout
    return tmp_path / out


def same_as_ours(run_dir, out):
    """Our model and transformers' load of its export: trainer.export.check_hf's logits and greedy
    continuation from random ids, and here the same from the text PROMPT through the exported tokenizer,
    whose ids must be the run's. The max abs logit difference, the exported tokenizer and the checkpoint."""
    import transformers

    ours, state = load_model(str(run_dir))
    _, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values())  # every weight in place, none left over
    check = trainer.export.check_hf(str(run_dir), out)
    assert check.same_greedy and check.positions == 2 * ours.context_length
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    rows = model_rows(of_checkpoint(state), state["vocab"], ours.head.out_features)
    prompt = torch.tensor([tok(PROMPT)["input_ids"]])  # (1, t) tokenizer ids
    model_ids = torch.searchsorted(rows, prompt)
    assert torch.equal(rows[model_ids], prompt)  # every prompt token has a row of ours
    with torch.no_grad():
        greedy = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=20)
        assert torch.equal(greedy, rows[ours.generate(model_ids, 20, temperature=0)])
    assert tok.decode(prompt[0]) == PROMPT
    return check.max_diff, tok, state


@needs_transformers
@pytest.mark.parametrize("variant", [["model=gpt2"], BOOK_EXPORTABLE], ids=["gpt2", "book"])
def test_a_run_exported_to_hf_gives_transformers_our_logits_and_continuation(trainer_here, tmp_path, variant):
    ok(trainer_here(*variant, *TINY, "hydra.run.dir=run"))
    out = export_hf(tmp_path)
    diff, tok, state = same_as_ours(tmp_path / "run", out)
    assert diff <= 1e-4
    from transformers import GenerationConfig

    enc = of_checkpoint(state)
    assert tok(VARIED)["input_ids"] == enc.encode(VARIED).tolist()  # cl100k's ids, unchanged
    # the compacted vocabulary back at cl100k's ids: the ids the run never saw are never generated
    generation = GenerationConfig.from_pretrained(out)
    assert generation.suppress_tokens == sorted(set(range(enc.n_vocab)) - set(state["vocab"].tolist()))
    assert generation.eos_token_id == enc.eot_token == 100257


@needs_transformers
def test_a_char_run_exports_a_tokenizer_over_its_own_characters(trainer_here, tmp_path):
    ok(trainer_here(*BOOK_EXPORTABLE, *TINY, "encoding=char", "hydra.run.dir=run"))
    out = export_hf(tmp_path)
    diff, tok, state = same_as_ours(tmp_path / "run", out)
    assert diff <= 1e-4
    from transformers import GenerationConfig

    vocab, unk = state["vocab"], len(state["vocab"])  # the model's ids, and one more: <unk>
    assert tok("fix 日")["input_ids"] == [*torch.searchsorted(vocab, torch.tensor([ord(c) for c in "fix "])).tolist(),
                                          unk]  # a character the run never saw
    assert tok.unk_token_id == unk and GenerationConfig.from_pretrained(out).suppress_tokens == [unk]
    assert tok.decode(tok(VARIED)["input_ids"], skip_special_tokens=True) == \
        "".join(c for c in VARIED if ord(c) in set(vocab.tolist()))


@needs_transformers
def test_an_hf_encoding_run_exports_its_own_tokenizer(trainer_here, tmp_path, cache_dir, monkeypatch):
    import tokenizers

    import trainer.tokenizer

    monkeypatch.setenv("TRAINER_CACHE_DIR", str(cache_dir))
    ok(call_main(trainer.tokenizer.main, "vocab_size=300", "out=toks", cwd=tmp_path))
    ok(trainer_here("model=gpt2", *TINY, "encoding=hf:toks/tokenizer.json", "hydra.run.dir=run"))
    out = export_hf(tmp_path)
    assert same_as_ours(tmp_path / "run", out)[0] <= 1e-4
    mine = tokenizers.Tokenizer.from_file(str(tmp_path / "toks" / "tokenizer.json"))
    exported = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    assert exported.get_vocab(with_added_tokens=True) == mine.get_vocab(with_added_tokens=True)
    assert exported.encode(VARIED).ids == mine.encode(VARIED).ids and exported.token_to_id("<|endoftext|>") == 0


@needs_transformers
def test_check_loads_the_export_back_and_says_how_close_it_is(trainer_here, tmp_path):
    ok(trainer_here("model=gpt2", *TINY, "max_iters=4", "hydra.run.dir=run"))
    r = ok(call_main(trainer.export.main, "run", "--to", "hf", "out", "--check", cwd=tmp_path))
    line = r.stdout.splitlines()[-1]
    assert re.fullmatch(r"transformers vs ours: max \|logit difference\| \d\.\d\de-\d\d over 64 positions \(float32; "
                        r"within 0\.0001: yes\), greedy continuation of 20 tokens the same", line), line
    r = call_main(trainer.export.main, "run", "--to", "safetensors", "out2", "--check", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.endswith("error: --check: only with --to hf\n")


@pytest.mark.parametrize("variant, keys", [
    (["model=modern", "norm=rmsnorm"], "positions=rope (GPT-2 adds a position table; it rotates nothing); "
                                       "norm=rmsnorm (GPT-2's norms are LayerNorms)"),
    ([], "head_bias=true (GPT-2's output head has no bias)"),  # the book's default
], ids=["modern", "book"])
def test_what_gpt2_cannot_express_is_refused_naming_its_keys(trainer_here, tmp_path, variant, keys):
    ok(trainer_here(*TINY, "max_iters=2", *variant, "hydra.run.dir=run"))
    r = call_main(trainer.export.main, "run", "--to", "hf", "out", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr == f"error: --to hf: GPT-2 cannot express {keys}; --to safetensors " \
                                             "writes any model\n"
    assert not (tmp_path / "out").exists()


def test_without_transformers_the_export_names_the_extra(trainer_here, tmp_path, monkeypatch):
    ok(trainer_here("model=gpt2", *TINY, "max_iters=2", "hydra.run.dir=run"))
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers raises ImportError
    r = call_main(trainer.export.main, "run", "--to", "hf", "out", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr == f"error: --to hf: needs the transformers package: {EXTRA}\n"
    assert not (tmp_path / "out").exists()
