"""The notebook API against the command line on a finished embedded study (used by the slow
end-to-end test): the embedded model and a trained SAE loaded as plain transformers and SAELens
objects, ``ss.screen`` on them, and the ``screen`` / ``explain`` commands on the same inputs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

import steerscreen as ss
from steerscreen.cli import app
from steerscreen.corpus import load_corpus

TOKENS = "3000"


def check_notebook_matches_cli(study: Path, tmp: Path) -> None:
    import torch
    from sae_lens import SAE
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steerscreen.models.loading import embedded_gguf

    rec = json.loads((study / "study.json").read_text())
    run = rec["runs"][0]
    sae_dir, down = Path(run["sae"]), rec["downstream"]
    predictor = study / run["path"] / "screening" / "predictor.json"
    cli_out = tmp / "cli-screen"
    args = ["--predictor", str(predictor), "--sae", str(sae_dir), "--corpus", "embedded",
            "--tokens", TOKENS, "--downstream-sae", down["sae"], "--downstream-hook",
            down["hook"]]
    res = CliRunner().invoke(app, ["screen", *args, "--out", str(cli_out)])
    assert res.exit_code == 0, res.output
    cli = ss.Screen(cli_out, predictor).table

    gguf = embedded_gguf("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                              dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sae = SAE.load_from_disk(str(sae_dir))
        sae_down = SAE.load_from_disk(down["sae"])
    nb = ss.screen(model=hf, tokenizer=tok, sae=sae, hook=run["hook"],
                   corpus=list(load_corpus("embedded").documents), predictor=predictor,
                   downstream_sae=sae_down, tokens=int(TOKENS), out=tmp / "nb-screen")
    assert nb.table["feature"].to_list() == cli["feature"].to_list()  # the same ranking
    np.testing.assert_allclose(nb.table["pred_cleanliness"].to_numpy(),
                               cli["pred_cleanliness"].to_numpy(), rtol=1e-9, atol=1e-12)
    top = int(nb.table["feature"][0])
    res = CliRunner().invoke(app, ["explain", *args, "--out", str(cli_out), str(top)])
    assert res.exit_code == 0, res.output
    assert nb.explain(top).text() in res.stdout
