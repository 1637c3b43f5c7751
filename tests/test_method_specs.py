"""Method specs (``methods`` + ``method_options``) are checked against the method classes' constructors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from amlx import metrics as metric_registry
from amlx.methods import MethodSpec, MethodSpecError, parse_methods
from amlx.methods.perturbation import LimeMethod
from amlx.methods.random import RandomAttribution

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
JOB_CONFIGS = sorted([*CONFIGS.glob("eval/*.yaml"), *CONFIGS.glob("explain/*.yaml"), CONFIGS / "main.yaml"])


def test_names_aliases_options_and_labels():
    random, lime, again = parse_methods(["random", "lime", "random_b=random"],
                                        {"lime": {"n_samples": 50}, "random_b": {"seed": 5}})  # fmt: skip
    assert random == MethodSpec("random", "random", {}) and random.label == "random"
    assert (lime.name, lime.label) == ("lime", "lime[n_samples=50]")  # options in the file name, no alias given
    assert (again.alias, again.name, again.label) == ("random_b", "random", "random_b")
    assert random.accepts("seed") and not parse_methods(["gradient_x_input"])[0].accepts("seed")
    built = again.build(seed=7)  # a job's per-chunk seed replaces the option
    assert isinstance(built, RandomAttribution) and built.seed == 7
    assert isinstance(lime.build(), LimeMethod) and lime.build().n_samples == 50


@pytest.mark.parametrize(
    "methods, options, message",
    [
        (["lmie"], None, "unknown attribution method 'lmie' in methods (did you mean 'lime'?); registered methods: "),
        (["lime"], {"lime": {"n_sample": 5}}, "its options are: budget_per_unit, internal_batch_size, n_samples, "),
        (["random"], {"random": {"seed": "one"}}, "option 'seed' of method 'random' (method_options.random) must be int"),
        (["faml"], {"faml": {"lr": "fast"}}, "option 'lr' of method 'faml' (method_options.faml) must be float | None"),
        (["marc"], {"marc": {"alpha_lamda": 1.0}}, "(did you mean 'alpha_lambda'?)"),  # forwarded to MaRC's settings
        (["marc"], {"marc": {"steps": 0.5}}, "option 'steps' of method 'marc' (method_options.marc) must be int"),
        (["random", "random"], None, "'random' appears twice in methods; give the second one an alias"),
        (["random"], {"randm": {"seed": 1}}, "method_options for ['randm'], which are not in methods ['random']"),
        (["=random"], None, "must be NAME or ALIAS=NAME"),
        ([], None, "no methods given"),
        (["random"], {"random": 3}, "method_options.random must be a mapping"),
    ],
)
def test_a_wrong_spec_is_refused_with_the_valid_names(methods, options, message):
    with pytest.raises(MethodSpecError) as err:
        parse_methods(methods, options)
    assert message in str(err.value)


def test_option_values_of_the_right_type_pass():
    (faml,) = parse_methods(["faml"], {"faml": {"lr": 1, "steps": 3, "lora": {"r": 4}, "checkpoint": "x.ckpt"}})
    assert faml.options["lr"] == 1  # an int is a valid float


@pytest.mark.parametrize("path", JOB_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_job_config_names_valid_methods_options_and_metrics(path):
    cfg = yaml.safe_load(path.read_text())
    parse_methods(cfg["methods"], cfg.get("method_options"))
    metric_registry.check_names(cfg.get("metrics", []))
