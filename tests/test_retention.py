"""Retention: a second dataset scored before and after tuning; the recipe group; the forgetting sweep's config."""

import json

import pytest
from conftest import compose_command, compose_train, tiny_run_overrides, train_in_process
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sam3_lora import evaluate as evaluate_cmd
from sam3_lora.data import toy
from sam3_lora.evaluation.saco import METRIC_KEYS
from sam3_lora.pipeline.settings import ConfigError, check_settings
from sam3_lora.runs.sweep_report import read_run


@pytest.fixture(scope="module")
def source_root(tmp_path_factory):
    """The base domain: circles, squares, triangles; its held-out splits prompt every concept."""
    return toy.generate(
        tmp_path_factory.mktemp("source"), domain="base", seed=4, splits={"train": 0, "valid": 3, "test": 4}
    )


@pytest.fixture(scope="module")
def retention_run(toy_root, source_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("retention_run")
    overrides = tiny_run_overrides(
        toy_root,
        "retention=coco",
        f"retention.root={source_root}",
        "logger=tensorboard",
        "final_eval.compare_base=true",
        "final_eval.adapter_scales=[0.5]",
    )
    return run_dir, train_in_process(overrides, run_dir)


def test_the_adapter_scale_curve_runs_from_the_base_to_the_tuned_model(retention_run):
    run_dir, summary = retention_run
    curve = {p["scale"]: p for p in summary["adapter_scales"]}
    assert sorted(curve) == [0.0, 0.5, 1.0]
    kept, base = summary["retention"], summary["results"]["base"]
    for key in ("bbox/AP", "segm/AP"):  # scale 0 is the frozen base, scale 1 the model as trained
        assert curve[0.0]["target"][key] == pytest.approx(base[key], abs=1e-9)
        assert curve[0.0]["retention"][key] == pytest.approx(kept["base"][key], abs=1e-9)
        assert curve[1.0]["retention"][key] == pytest.approx(kept["tuned"][key], abs=1e-9)
        assert curve[1.0]["target"][key] == pytest.approx(summary["results"]["lora"][key], abs=1e-9)
    assert set(kept["valid"]) == {"base", "tuned"} and "segm/AP" in kept["valid"]["tuned"]  # for choices on valid
    report_run = read_run(run_dir / "results.json")
    assert sorted(report_run.curve) == [0.0, 0.5, 1.0]
    assert report_run.curve[0.0]["source_change_segm_AP"] == pytest.approx(0.0, abs=1e-9)
    assert report_run.values["valid_source_change_segm_AP"] == pytest.approx(
        kept["valid"]["tuned"]["segm/AP"] - kept["valid"]["base"]["segm/AP"]
    )


def test_retention_scores_base_and_tuned_and_their_change(retention_run):
    run_dir, summary = retention_run
    retained = summary["retention"]
    assert retained["dataset"] == "retention" and retained["split"] == "test"
    assert set(METRIC_KEYS) <= set(retained["base"]) and set(METRIC_KEYS) <= set(retained["tuned"])
    for key in ("bbox/AP", "segm/AP", "segm/cgF1", "saco/IL_MCC"):
        assert retained["change"][key] == pytest.approx(retained["tuned"][key] - retained["base"][key])
    # The base was scored before training and recorded for a resumed run.
    assert json.loads((run_dir / "heldout_retention.json").read_text())["base"] == retained["base"]
    # Training moved the model, so the tuned scores are not the base's (the test can fail).
    assert retained["tuned"] != retained["base"]
    assert json.loads((run_dir / "results.json").read_text())["retention"] == retained
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"retention/segm/AP", "retention/change/segm/AP", "retention/saco/IL_MCC"} <= tags
    (event,) = acc.Scalars("retention/change/segm/AP")
    assert event.value == pytest.approx(retained["change"]["segm/AP"], abs=1e-6)


def test_results_table_prints_the_retention_rows(retention_run):
    from sam3_lora.pipeline.results import results_table
    from sam3_lora.runs.results import RunResults

    run_dir, summary = retention_run
    text = results_table(RunResults.read(run_dir), run_dir)
    assert "retention: 'retention' test split" in text
    change_row = next(line for line in text.splitlines() if line.startswith("change"))
    assert f"{summary['retention']['change']['bbox/AP']:+.3f}" in change_row


def test_evaluate_scores_a_run_on_a_dataset_given_on_the_command_line(retention_run, source_root):
    run_dir, summary = retention_run
    cfg = compose_command("evaluate", run_dir=run_dir, num_workers=0, **{"dataset.root": source_root})
    out = evaluate_cmd.evaluate(cfg, dataset_given=True)
    # The run's best adapter on the source domain: what training recorded as retained.
    for key in ("bbox/AP", "segm/AP", "segm/cgF1", "saco/threshold"):
        assert out["metrics"][key] == pytest.approx(summary["retention"]["tuned"][key], abs=1e-9), key
    assert (run_dir / "eval_coco_test.json").is_file()  # named after the dataset, not the run's eval_test
    assert out["ann_file"].startswith(str(source_root))


def test_retention_section_is_checked_like_a_dataset():
    with pytest.raises(ConfigError, match=r"retention\.root"):
        check_settings(compose_train(["retention=coco"]))  # root is ??? (mandatory)
    with pytest.raises(ConfigError, match=r"retention\.colour: unknown key"):
        check_settings(compose_train(["retention=coco", "retention.root=/x", "+retention.colour=red"]))


@pytest.mark.parametrize(
    "recipe,lora,lr",
    [
        ("lora_minimal", "q_proj", 3e-3),
        ("lora_balanced", "linear1", 3e-3),
        ("lora_full", "all", 3e-3),
        ("lora_heads", "all", 3e-3),
        ("lora_balanced_lr3e-4", "linear1", 3e-4),
        ("lora_balanced_distill", "linear1", 3e-3),
    ],
)
def test_recipe_options_set_the_preset_and_its_learning_rate(recipe, lora, lr):
    cfg = compose_train(["experiment=quickstart", f"recipe={recipe}"])
    assert lora in cfg.lora.targets and cfg.optimizer.lr == lr
    # The quick start's own settings stay (the recipe option is applied after the experiment).
    assert cfg.retention.name == "toy_base" and cfg.model.name == "tiny_toy"


def test_full_finetune_trains_every_weight_at_a_lower_rate():
    cfg = compose_train(["experiment=quickstart", "recipe=full_finetune"])
    assert cfg.lora._target_ == "sam3_lora.tuning.full.FullFineTuning" and cfg.optimizer.lr == pytest.approx(3e-4)


def test_forgetting_experiment_sweeps_ten_setups_times_three_seeds():
    from hydra import compose, initialize_config_dir

    from sam3_lora.core.conf import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=forgetting"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params.recipe.split(",") == [
        *("lora_minimal", "lora_balanced", "lora_full", "lora_heads", "full_finetune"),
        *("lora_balanced_lr3e-4", "full_finetune_lr3e-3"),  # step size apart from parameter count
        *("lora_balanced_distill", "lora_balanced_distill_target", "full_finetune_distill"),
    ]
    assert params.seed.split(",") == ["0", "1", "2"]
    assert cfg.hydra.callbacks.sweep_report._target_.endswith("WriteSweepReport")
    assert cfg.retention.generate.domain == "base" and cfg.dataset.generate.domain == "shifted"
