"""The stats stage end to end on a tiny model: run folder, manifest, guard, CLI, and an
independent recomputation of the columns from the same contexts."""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from steerscreen.cli import app
from steerscreen.corpus import DEFAULT_SPLITS, load_corpus, make_contexts, split_documents
from steerscreen.errors import SteerscreenError
from steerscreen.pipeline.runs import RunDir
from steerscreen.pipeline.stats import FEATURE_LOGIT_TOKENS, StatsConfig, run_stats
from steerscreen.saes import load_sae, save_sae
from steerscreen.stats import COLUMNS
from tests.tiny_models import D, tiny_model

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

F = 40
HOOK = "blocks.1.hook_resid_post"
DEAD = (0, 1)  # features forced dead
CONTEXT_LEN = 12


def make_sae(folder: Path, d_in: int = D, hook: str = HOOK) -> Path:
    meta = SAEMetadata(model_name="tiny-llama", hook_name=hook)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=F, metadata=meta))
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name == "b_enc":
                p.copy_(-0.3 + 0.1 * torch.randn(p.shape, generator=gen))
                p[list(DEAD)] = -1e3
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return save_sae(sae, folder)


def make_corpus(path: Path, n_docs: int = 40) -> Path:
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))

    def word() -> str:
        return "".join(rng.choice(letters, size=rng.integers(2, 8)))

    # Random letters: a window of a few characters identifies its document.
    docs = [" ".join(word() for _ in range(rng.integers(10, 30))) for _ in range(n_docs)]
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("stage")
    model = tiny_model("llama")
    model_dir = root / "tiny-llama"
    model.model.config.save_pretrained(model_dir)  # config.json: a valid `local:` spec
    sae_dir = make_sae(root / "sae")
    corpus = make_corpus(root / "corpus.txt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_sae(str(sae_dir))
    cfg = StatsConfig(sae=str(sae_dir), model=f"local:{model_dir}", corpus=f"text:{corpus}",
                      tokens=300, context_len=CONTEXT_LEN, batch_size=4, reservoir_size=5,
                      max_partners=F, n_examples=3, example_window=4, final_norm_contexts=6,
                      n_components=4)
    out = root / "run"
    res = run_stats(cfg, out, model=model, sae=loaded, progress=False)
    return {"root": root, "model": model, "loaded": loaded, "cfg": cfg, "out": out, "res": res}


def stats_split_contexts(setup) -> np.ndarray:
    cfg, model = setup["cfg"], setup["model"]
    corpus = load_corpus(cfg.corpus)
    docs = [corpus.documents[i] for i in split_documents(len(corpus.documents), DEFAULT_SPLITS,
                                                         cfg.seed)["stats"]]
    n = -(-cfg.tokens // (cfg.context_len - 1))
    return make_contexts(docs, model.tokenize, model.bos_id, cfg.context_len,
                         n_contexts=n).token_ids


# --- the run folder ---------------------------------------------------------------------------

def test_table_has_one_row_per_feature_and_every_column(setup) -> None:
    df = pl.read_parquet(setup["out"] / RunDir.FEATURE_STATS)
    assert df.columns == list(COLUMNS)
    assert df.height == F
    assert df["feature"].to_list() == list(range(F))
    dead = df["dead"].to_numpy()
    assert dead[list(DEAD)].all() and 0 < (~dead).sum() < F
    assert np.isnan(df["base_freq"].to_numpy()[list(DEAD)]).all()
    res = setup["res"]
    assert (res.n_features, res.n_dead, res.n_alive) == (F, int(dead.sum()), int((~dead).sum()))
    assert not res.skipped
    # The (dose-free, scale-free) logit columns are present for live features.
    assert np.isfinite(df["logit_pr"].to_numpy()[~dead]).all()


def test_manifest_records_environment_inputs_and_stage(setup) -> None:
    out, cfg, loaded = setup["out"], setup["cfg"], setup["loaded"]
    m = json.loads((out / RunDir.MANIFEST).read_text())
    env = m["environment"]
    for pkg in ("steerscreen", "torch", "transformers", "sae_lens"):
        assert env["versions"][pkg], pkg
    assert env["python"] and env["platform"] and env["device"] == "cpu"
    assert env["dtype"] == "float32"
    assert m["hook"] == HOOK and m["sae_path"] == str(loaded.path)
    assert m["sae"]["sha256"] == loaded.sha256 and m["sae"]["d_sae"] == F
    assert len(m["model"]["sha256"]) == 64 and m["model"]["name"] == "tiny-llama"
    assert m["corpus"]["sha256"] == load_corpus(cfg.corpus).sha256
    assert m["corpus"]["splits"]["fractions"] == dict(DEFAULT_SPLITS)
    assert m["seeds"] == {"splits": 0, "reservoir": 0}
    st = m["stages"]["stats"]
    assert st["status"] == "complete"
    assert st["config"] == cfg.record() and "batch_size" not in st["config"]
    assert st["inputs"]["hook"] == HOOK
    for name in (RunDir.FEATURE_STATS, RunDir.FEATURE_EXAMPLES, FEATURE_LOGIT_TOKENS):
        digest = hashlib.sha256((out / name).read_bytes()).hexdigest()
        assert st["outputs"][name]["sha256"] == digest
    assert {"pass", "table", "total"} <= set(st["timings_s"])
    dose = st["results"]["dose"]
    assert dose["strength"] == 0.25 and dose["softcap_ignored"] is True
    assert dose["alpha"] == pytest.approx(0.25 * dose["residual_norm"])
    assert m["residual_norm"] == dose["residual_norm"] and m["alpha"] == dose["alpha"]
    assert m["dose_mode"] == "stats-fixed" and m["strengths"] == [0.25]
    assert not list(out.glob(".*.tmp"))  # no temp files left behind


# --- an independent computation ---------------------------------------------------------------

def reference(setup, ids: np.ndarray) -> dict[str, Any]:
    """base_freq, base_mag, r and every activation, by a plain loop, one context at a time."""
    model, sae = setup["model"], setup["loaded"].sae
    n_pos, n_fire, sum_act = 0, np.zeros(F), np.zeros(F)
    norms, acts = [], []
    for row in ids:
        x = model.forward(torch.tensor(row[None]), read=[HOOK], logits=False).acts[HOOK][0]
        with torch.no_grad():
            a = sae.encode(x.float()).numpy().astype(np.float64)
        acts.append(a)
        a = a[1:]
        n_pos += a.shape[0]
        n_fire += (a > 0).sum(0)
        sum_act += a.sum(0)
        norms += x[1:].double().norm(dim=-1).tolist()
    dec = sae.W_dec.detach().double().norm(dim=1).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        freq = np.where(n_fire > 0, np.log10(n_fire / n_pos), np.nan)
        mag = np.where(n_fire > 0, np.log10(sum_act / n_fire * dec), np.nan)
    norms = sorted(norms)
    return {"freq": freq, "mag": mag, "r": norms[(len(norms) - 1) // 2], "acts": acts,
            "n_pos": n_pos}


def test_contexts_come_from_the_stats_split_only(setup) -> None:
    ids = stats_split_contexts(setup)
    m = json.loads((setup["out"] / RunDir.MANIFEST).read_text())
    res = m["stages"]["stats"]["results"]
    assert res["contexts_sha256"] == hashlib.sha256(ids.astype(np.int64).tobytes()).hexdigest()
    corpus = load_corpus(setup["cfg"].corpus)
    splits = split_documents(len(corpus.documents), DEFAULT_SPLITS, 0)
    tok = setup["model"].tokenize

    def home(window: list[int]) -> set[str]:
        found = set()
        for name, idx in splits.items():
            for i in idx:
                t = tok(corpus.documents[i])
                if any(t[s:s + len(window)] == window for s in range(len(t) - len(window) + 1)):
                    found.add(name)
        return found

    for row in ids:
        assert home(row[1:].tolist()) == {"stats"}


def test_columns_match_a_plain_loop(setup) -> None:
    ids = stats_split_contexts(setup)
    ref = reference(setup, ids)
    df = pl.read_parquet(setup["out"] / RunDir.FEATURE_STATS)
    np.testing.assert_allclose(df["base_freq"].to_numpy(), ref["freq"], rtol=1e-9,
                               equal_nan=True)
    np.testing.assert_allclose(df["base_mag"].to_numpy(), ref["mag"], rtol=1e-5, atol=1e-6,
                               equal_nan=True)
    res = setup["res"]
    assert res.n_positions == ref["n_pos"] == len(ids) * (CONTEXT_LEN - 1)
    assert res.residual_norm == pytest.approx(ref["r"], rel=1e-5)
    assert res.alpha == pytest.approx(0.25 * ref["r"], rel=1e-5)


def test_examples_are_the_top_firings_with_their_contexts(setup) -> None:
    ids = stats_split_contexts(setup)
    acts = reference(setup, ids)["acts"]
    ex = pl.read_parquet(setup["out"] / RunDir.FEATURE_EXAMPLES)
    assert {"feature", "rank", "value", "context_id", "position", "token_ids",
            "context_token_ids", "text", "token"} <= set(ex.columns)
    assert not set(DEAD) & set(ex["feature"].to_list())
    for row in ex.iter_rows(named=True):
        c, t, f = row["context_id"], row["position"], row["feature"]
        assert t >= 1
        assert row["context_token_ids"] == ids[c].tolist()
        assert row["token_ids"] == ids[c][max(0, t - 3):t + 1].tolist()
        assert row["value"] == pytest.approx(acts[c][t, f], rel=1e-5)
    top = ex.filter(pl.col("rank") == 0)
    for f, v in zip(top["feature"], top["value"], strict=True):
        best = max(a[1:, f].max() for a in acts)
        assert v == pytest.approx(best, rel=1e-5)


def _top_direct_logits(setup) -> tuple[np.ndarray, np.ndarray]:
    """torch.topk of W_U^T (gamma v_f), written out from the unembedding's parts."""
    un = setup["model"].unembed()
    W = setup["loaded"].sae.W_dec.detach().float()
    v = W / W.norm(dim=1, keepdim=True)
    assert not un.centre  # llama: RMSNorm, no centring
    top = torch.topk((v * un.gain) @ un.W_U, 10, dim=1)
    return top.indices.numpy(), top.values.double().numpy()


def test_logit_tokens_are_each_features_top_direct_logits(setup) -> None:
    df = pl.read_parquet(setup["out"] / FEATURE_LOGIT_TOKENS)
    assert df.schema == pl.Schema({"feature": pl.Int64, "rank": pl.Int64, "token_id": pl.Int64,
                                   "token": pl.String, "dl": pl.Float64})
    assert df.height == F * 10
    df = df.sort("feature", "rank")
    assert df["rank"].to_list() == list(range(10)) * F
    ids, dl = _top_direct_logits(setup)
    assert np.array_equal(df["token_id"].to_numpy().reshape(F, 10), ids)
    np.testing.assert_allclose(df["dl"].to_numpy().reshape(F, 10), dl, rtol=1e-5, atol=1e-6)
    assert df["token"].is_null().all()  # the tiny model's tokenizer cannot decode


class _DecodingTokenizer:
    """The model's tokenizer (the stage tokenizes its contexts), decoding ids as ``<id>``."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __call__(self, *args, **kwargs):
        return self._tokenizer(*args, **kwargs)

    def batch_decode(self, seqs):
        return [" ".join(f"<{i}>" for i in s) for s in seqs]


def test_logit_tokens_are_added_to_an_older_complete_stage(setup, tmp_path: Path,
                                                            monkeypatch) -> None:
    out = tmp_path / "run"
    kw = dict(model=setup["model"], sae=setup["loaded"], progress=False)
    run_stats(setup["cfg"], out, **kw)
    # A stage recorded before the stage wrote the file: no file, no output entry.
    (out / FEATURE_LOGIT_TOKENS).unlink()
    m = json.loads((out / RunDir.MANIFEST).read_text())
    del m["stages"]["stats"]["outputs"][FEATURE_LOGIT_TOKENS]
    (out / RunDir.MANIFEST).write_text(json.dumps(m))
    monkeypatch.setattr(setup["model"], "tokenizer", _DecodingTokenizer(setup["model"].tokenizer))
    res = run_stats(setup["cfg"], out, **kw)
    assert res.skipped and res.logit_tokens_path.is_file()
    df = pl.read_parquet(res.logit_tokens_path).sort("feature", "rank")
    ids, _ = _top_direct_logits(setup)
    assert np.array_equal(df["token_id"].to_numpy().reshape(F, 10), ids)
    assert df["token"].to_list() == [f"<{i}>" for i in ids.reshape(-1)]
    rec = json.loads((out / RunDir.MANIFEST).read_text())["stages"]["stats"]
    digest = hashlib.sha256(res.logit_tokens_path.read_bytes()).hexdigest()
    assert rec["outputs"][FEATURE_LOGIT_TOKENS]["sha256"] == digest
    assert rec["status"] == "complete" and RunDir.FEATURE_STATS in rec["outputs"]
    assert run_stats(setup["cfg"], out, **kw).skipped  # and now it is simply complete


# --- the guard --------------------------------------------------------------------------------

def test_same_config_is_skipped(setup) -> None:
    out = setup["out"]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    logs: list[str] = []
    res = run_stats(setup["cfg"], out, model=setup["model"], sae=setup["loaded"],
                    progress=False, log=logs.append)
    assert res.skipped and res.n_features == F
    assert res.residual_norm == setup["res"].residual_norm
    assert any("already complete" in m for m in logs)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_other_config_is_refused_unless_forced(setup, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = setup["cfg"]
    run_stats(cfg, out, model=setup["model"], sae=setup["loaded"], progress=False)
    manifest = (out / RunDir.MANIFEST).read_text()
    other = StatsConfig(**{**cfg.__dict__, "tokens": 200})
    with pytest.raises(SteerscreenError, match="different config") as err:
        run_stats(other, out, model=setup["model"], sae=setup["loaded"], progress=False)
    assert "tokens: 300 -> 200" in err.value.what and "--force" in err.value.fix
    assert (out / RunDir.MANIFEST).read_text() == manifest  # untouched
    # A runtime-only change (batch size) is not a different config.
    fast = StatsConfig(**{**cfg.__dict__, "batch_size": 7})
    assert run_stats(fast, out, model=setup["model"], sae=setup["loaded"],
                     progress=False).skipped
    res = run_stats(other, out, force=True, model=setup["model"], sae=setup["loaded"],
                    progress=False)
    assert not res.skipped and res.n_positions == 19 * (CONTEXT_LEN - 1)
    m = json.loads((out / RunDir.MANIFEST).read_text())
    assert m["stages"]["stats"]["config"]["tokens"] == 200


def test_damaged_outputs_are_recomputed(setup, tmp_path: Path) -> None:
    out = tmp_path / "run"
    kw = dict(model=setup["model"], sae=setup["loaded"], progress=False)
    run_stats(setup["cfg"], out, **kw)
    (out / RunDir.FEATURE_STATS).write_bytes(b"garbage")
    res = run_stats(setup["cfg"], out, **kw)
    assert not res.skipped
    assert pl.read_parquet(out / RunDir.FEATURE_STATS).height == F


def test_foreign_folder_is_refused(setup, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SteerscreenError, match="without a steerscreen manifest"):
        run_stats(setup["cfg"], tmp_path, model=setup["model"], sae=setup["loaded"],
                  progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_too_few_tokens_in_the_stats_split(setup, tmp_path: Path) -> None:
    big = StatsConfig(**{**setup["cfg"].__dict__, "tokens": 10**6})
    with pytest.raises(SteerscreenError, match="stats split") as err:
        run_stats(big, tmp_path / "run", model=setup["model"], sae=setup["loaded"],
                  progress=False)
    assert "--tokens" in err.value.fix
    assert not (tmp_path / "run").exists()


def test_residual_norm_merges_exactly() -> None:
    from steerscreen.stats import StatsAccumulator, StatsOptions

    opts = StatsOptions(reservoir_size=2)
    norms = torch.rand(6, 9) * 10
    whole = StatsAccumulator(3, 2, opts)
    whole.add_resid_norms(norms)
    a, b = StatsAccumulator(3, 2, opts), StatsAccumulator(3, 2, opts)
    a.add_resid_norms(norms[:2])
    b.add_resid_norms(norms[2:4])
    b.add_resid_norms(norms[4:])
    merged = a.merge(b)
    assert torch.equal(merged.resid_norms, whole.resid_norms)
    flat = np.sort(norms[:, 1:].reshape(-1).numpy())
    assert merged.residual_norm() == flat[(flat.size - 1) // 2]
    again = StatsAccumulator.from_state_dict(merged.state_dict())
    assert again.residual_norm() == merged.residual_norm()
    assert math.isnan(StatsAccumulator(3, 2, opts).residual_norm())
    nbytes = sum(v.numel() * v.element_size() for v in merged.state_dict().values()
                 if isinstance(v, torch.Tensor))
    assert opts.memory_bytes(3, 2, 0, merged.resid_norms.numel()) == nbytes


# --- the command line -------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture()
def cli_model(setup, monkeypatch):
    monkeypatch.setattr("steerscreen.pipeline.stats.load_model",
                        lambda spec, device="cpu", dtype="float32", **_kw: setup["model"])
    return setup


def _cli_args(setup, out: Path, sae: Path | str, *extra: str) -> list[str]:
    cfg = setup["cfg"]
    return ["stats", "--sae", str(sae), "--model", cfg.model, "--corpus", cfg.corpus,
            "--tokens", "100", "--context-len", str(CONTEXT_LEN), "--reservoir-size", "5",
            "--out", str(out), *extra]


@pytest.mark.parametrize("case, message", [
    ("malformed hook", "not a supported hook point"),
    ("hook past the last layer", "has 4 layers"),
    ("hook the SAE was not trained at", "was trained at"),
    ("wrong-width SAE", "d_in=16"),
    ("missing SAE", "does not exist"),
    ("bad corpus", "corpus file"),
])
def test_cli_bad_input(cli_model, tmp_path: Path, case: str, message: str) -> None:
    setup = cli_model
    sae = Path(setup["cfg"].sae)
    extra: list[str] = []
    if case == "malformed hook":
        extra = ["--hook", "blocks.1.resid_post"]
    elif case == "hook past the last layer":
        extra = ["--hook", "blocks.9.hook_resid_post"]
    elif case == "hook the SAE was not trained at":
        extra = ["--hook", "blocks.2.hook_resid_post"]
    elif case == "wrong-width SAE":
        sae = make_sae(tmp_path / "narrow", d_in=16)
    elif case == "missing SAE":
        sae = tmp_path / "nowhere"
    out = tmp_path / "run"
    args = _cli_args(setup, out, sae, *extra)
    if case == "bad corpus":
        args[args.index("--corpus") + 1] = f"text:{tmp_path / 'none.txt'}"
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()), res.output
    assert "Traceback" not in res.output
    assert not out.exists()


def test_cli_runs_and_summarises(cli_model, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = runner.invoke(app, _cli_args(cli_model, out, cli_model["cfg"].sae))
    assert res.exit_code == 0, res.output
    assert f"{F} features" in res.output and "dead" in res.output
    assert pl.read_parquet(out / RunDir.FEATURE_STATS).height == F
    again = runner.invoke(app, _cli_args(cli_model, out, cli_model["cfg"].sae))
    assert again.exit_code == 0 and "skipped" in again.output


# --- the linear response ------------------------------------------------------------------------

def test_linear_columns_come_from_the_first_stats_contexts(setup) -> None:
    from steerscreen.layout import LINEAR_CONTEXTS, LINEAR_FORMS
    from steerscreen.pipeline.linear import read_forms
    from steerscreen.stats.linear import linear_columns, linearise

    out, cfg = setup["out"], setup["cfg"]
    df = pl.read_parquet(out / RunDir.FEATURE_STATS)
    ctx = pl.read_parquet(out / LINEAR_CONTEXTS)
    ids = np.array(ctx["token_ids"].to_list())
    want_n = min(cfg.linear_contexts, len(stats_split_contexts(setup)))
    assert ids.shape == (want_n, CONTEXT_LEN) and set(ctx["set"]) == {"linearisation"}
    np.testing.assert_array_equal(ids, stats_split_contexts(setup)[:want_n])
    forms = linearise(setup["model"], setup["loaded"].hook_name, ids)
    tokens = pl.read_parquet(out / FEATURE_LOGIT_TOKENS).sort(["feature", "rank"])
    top = torch.tensor(tokens["token_id"].to_numpy().reshape(F, -1))
    want = linear_columns(forms, setup["loaded"].sae.W_dec.detach(), top)
    for name, values in want.items():
        np.testing.assert_allclose(df[name].to_numpy(), values, rtol=1e-6, err_msg=name)
        assert np.isfinite(values).all()
    saved = read_forms(out / LINEAR_FORMS)
    np.testing.assert_allclose(saved.kl_rate(setup["loaded"].sae.W_dec.detach()),
                               np.exp(want["lin_kl"]), rtol=1e-6)
    rec = RunDir(out).stage("stats")
    assert rec["results"]["linear"]["contexts"] == want_n
    assert {LINEAR_CONTEXTS, LINEAR_FORMS} <= set(rec["outputs"])


def test_linear_response_resumes_from_its_checkpoint(setup, tmp_path: Path) -> None:
    from steerscreen.pipeline import linear

    cfg = StatsConfig(**{**setup["cfg"].__dict__, "checkpoint_s": 0.0})
    calls = {"n": 0}
    real = linear.linearise

    def dying(*args, on_context=None, **kw):
        def hook(forms):
            on_context(forms)
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
        return real(*args, on_context=hook, **kw)

    linear._CACHE.clear()
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(linear, "linearise", dying)
        with pytest.raises(KeyboardInterrupt):
            run_stats(cfg, out, model=setup["model"], sae=setup["loaded"], progress=False)
    assert (out / ".linear_checkpoint" / "forms.json").is_file()
    seen = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(linear, "linearise", lambda *a, forms=None, **k: (
            seen.append(forms.n_contexts), real(*a, forms=forms, **k))[1])
        run_stats(cfg, out, model=setup["model"], sae=setup["loaded"], progress=False)
    assert seen == [2]
    assert not (out / ".linear_checkpoint").exists()
    a = pl.read_parquet(out / RunDir.FEATURE_STATS)
    b = pl.read_parquet(setup["out"] / RunDir.FEATURE_STATS)
    for name in ("lin_stability", "lin_kl", "lin_collateral_out", "lin_target_gain"):
        np.testing.assert_array_equal(a[name].to_numpy(), b[name].to_numpy())


def test_no_linear_contexts_leaves_the_lin_columns_nan(setup, tmp_path: Path) -> None:
    cfg = StatsConfig(**{**setup["cfg"].__dict__, "linear_contexts": 0})
    run_stats(cfg, tmp_path / "run", model=setup["model"], sae=setup["loaded"], progress=False)
    df = pl.read_parquet(tmp_path / "run" / RunDir.FEATURE_STATS)
    assert np.isnan(df["lin_kl"].to_numpy()).all()
    assert not (tmp_path / "run" / "linear_forms.safetensors").exists()
