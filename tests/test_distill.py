"""Keeping the base while tuning: distillation from the frozen base on anchor images
(sam3_lora/training/distill.py, sam3_lora/data/anchors.py, sam3_lora/pipeline/preservation.py), and
hard negatives from beyond the dataset (dataset.negative_prompts)."""

import json
import shutil

import pytest
import torch
from conftest import compose_train, tiny_run_overrides, train_in_process
from synthetic import make_batch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sam3_lora.data.anchors import AnchorError, anchor_images, refuse_scored_overlap, write_anchor_split
from sam3_lora.data.config import Split
from sam3_lora.data.sam3_dataset import build_dataset, build_loader
from sam3_lora.lora import LoraConfig, inject_lora, lora_parameters
from sam3_lora.pipeline.settings import ConfigError, check_settings
from sam3_lora.training.distill import TERM_WEIGHTS, Teacher, distillation_terms, final_outputs
from sam3_lora.training.loss import build_sam3_loss, compute_loss, core_loss
from sam3_lora.tuning import FullFineTuning, LoraTuning


def _distill_loss(model, teacher, batch):
    terms = distillation_terms(final_outputs(model(batch)), teacher(model, batch), mask_size=8)
    return sum(TERM_WEIGHTS[k] * v for k, v in terms.items()), terms


def test_the_loss_is_zero_at_initialisation_and_positive_after_a_step(tiny_model):
    inject_lora(tiny_model, LoraConfig(rank=4, alpha=8.0, dropout=0.0, parts=["vision", "encoder", "decoder"]))
    tiny_model.train()
    teacher = Teacher(tiny_model, frozen_copy=False)
    batch = make_batch(112, 2, seed=3)
    loss, terms = _distill_loss(tiny_model, teacher, batch)
    assert set(terms) == set(TERM_WEIGHTS)  # class, presence, boxes, GIoU and masks all compared
    assert abs(loss.item()) < 1e-6
    opt = torch.optim.SGD(lora_parameters(tiny_model), lr=0.5)
    labelled = core_loss(compute_loss(tiny_model, build_sam3_loss(tiny_model.transformer.decoder.num_queries), batch))
    labelled.backward()
    opt.step()
    loss, _ = _distill_loss(tiny_model, teacher, batch)
    assert loss.item() > 1e-4 and loss.requires_grad
    assert tiny_model.training  # the teacher's eval mode does not stay behind


def test_teacher_answers_carry_no_grad_and_a_frozen_copy_stays_the_base(tiny_model):
    batch = make_batch(112, 1, seed=4)
    teacher = Teacher.for_model(tiny_model, FullFineTuning())  # every weight trains: a copy before training
    before = teacher(tiny_model, batch)
    assert teacher.frozen is not None and not any(p.requires_grad for p in teacher.frozen.parameters())
    assert all(not t.requires_grad for t in before.values() if isinstance(t, torch.Tensor))
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.add_(0.05)
    after = teacher(tiny_model, batch)
    torch.testing.assert_close(after["pred_logits"], before["pred_logits"])

    lora = LoraTuning(LoraConfig(rank=4, alpha=8.0, dropout=0.0))
    lora.apply(tiny_model)
    lora_teacher = Teacher.for_model(tiny_model, lora)
    assert lora_teacher.frozen is None  # the adapters switched off: nothing copied
    saving = LoraTuning(LoraConfig(rank=4, alpha=8.0, modules_to_save=["segmentation_head"]))
    assert not saving.base_inside()  # modules_to_save train base weights in place: a copy is the teacher
    out = lora_teacher(tiny_model, batch)
    assert all(not t.requires_grad for t in out.values() if isinstance(t, torch.Tensor))


def _split(root, name):
    return Split(str(root / name / "_annotations.coco.json"), str(root / name))


def test_anchor_images_that_are_images_of_a_scored_split_are_refused(toy_root, tmp_path):
    folder = tmp_path / "anchors"
    folder.mkdir()
    test_images = json.loads((toy_root / "test" / "_annotations.coco.json").read_text())["images"]
    train_images = json.loads((toy_root / "train" / "_annotations.coco.json").read_text())["images"]
    for im in train_images:
        shutil.copy(toy_root / "train" / im["file_name"], folder / im["file_name"])
    scored = {"toy/valid": _split(toy_root, "valid"), "toy/test": _split(toy_root, "test")}
    records, where = anchor_images(str(folder))
    assert refuse_scored_overlap(write_anchor_split(records, where, ["circle"], tmp_path), scored) == len(train_images)

    leaked = test_images[1]["file_name"]
    shutil.copy(toy_root / "test" / leaked, folder / "renamed_copy.png")  # same bytes, another name
    records, where = anchor_images(str(folder))
    with pytest.raises(AnchorError, match=rf"renamed_copy.png = .*{leaked} \(toy/test\)"):
        refuse_scored_overlap(write_anchor_split(records, where, ["circle"], tmp_path), scored)


def test_negative_prompts_reach_the_batch_as_queries_with_nothing_to_find(toy_root):
    ds = build_dataset(
        _split(toy_root, "train"), 112, training=True, num_hard_negatives=-1, negative_prompts=["dog", "Circle"]
    )
    batch = next(iter(build_loader(ds, 2, True)))
    texts = batch.find_text_batch
    assert "dog" in texts and texts.count("circle") == 1 and "Circle" not in texts  # a category already: not added
    queries = batch.find_inputs[0].text_ids.tolist()
    boxes = batch.find_targets[0].num_boxes.tolist()
    dog = [n for q, n in zip(queries, boxes) if texts[q] == "dog"]
    assert len(dog) == 2 and dog == [0, 0]  # asked of each image, nothing to find
    assert any(n > 0 for q, n in zip(queries, boxes) if texts[q] != "dog")


def test_negative_prompts_need_negatives_and_a_readable_file(tmp_path):
    base = ["model=sam3_tiny", "dataset=toy", f"dataset.root={tmp_path}"]
    with pytest.raises(ConfigError, match="never asked with dataset.num_hard_negatives=0"):
        check_settings(compose_train([*base, "dataset.negative_prompts=[dog]", "dataset.num_hard_negatives=0"]))
    with pytest.raises(ConfigError, match=r"dataset.negative_prompts=.*missing.txt: no such file"):
        check_settings(compose_train([*base, f"dataset.negative_prompts={tmp_path}/missing.txt"]))
    names = tmp_path / "names.txt"
    names.write_text("# general vocabulary\ndog\n\ncar\n")
    s = check_settings(compose_train([*base, f"dataset.negative_prompts={names}"]))
    assert s.dataset.negative_prompt_names() == ["dog", "car"]


def _losses(run_dir, tag):
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


def test_a_run_with_distillation_logs_its_loss_and_records_its_anchors(toy_root, tmp_path):
    anchors = tmp_path / "toy_anchors" / "train"
    overrides = tiny_run_overrides(
        toy_root,
        "preserve=toy_anchors",
        f"preserve.images={anchors}",
        "preserve.generate.splits={train: 6, valid: 0, test: 0}",
        "preserve.anchor_batch=2",
        "logger=tensorboard",
    )
    summary = train_in_process(overrides, tmp_path / "run")
    distill = _losses(tmp_path / "run", "train/loss_distill")
    assert len(distill) == 2 and all(v >= 0 for v in distill) and distill[-1] > 0
    assert len(_losses(tmp_path / "run", "train/loss_distill_mask")) == 2
    coco = json.loads((tmp_path / "run" / "anchors.coco.json").read_text())
    assert len(coco["images"]) == 6 and not coco["annotations"]
    assert [c["name"] for c in coco["categories"]] == ["circle", "square", "triangle"]
    assert summary["results"]["lora"]["segm/AP"] >= 0


def test_the_target_images_as_anchors_leave_the_training_categories_out(toy_root, tmp_path):
    overrides = tiny_run_overrides(toy_root, "preserve=toy_target_anchors", "trainer.max_epochs=1")
    train_in_process(overrides, tmp_path)
    coco = json.loads((tmp_path / "anchors.coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["triangle"]  # circle and square are trained on
    assert len(coco["images"]) == 4

    only_trained = tiny_run_overrides(toy_root, "preserve=toy_target_anchors", "preserve.vocabulary=[circle,star]")
    with pytest.raises(AnchorError, match="every name of preserve.vocabulary .* is a training category"):
        train_in_process(only_trained, tmp_path / "again")


def test_the_model_card_says_the_run_distilled(toy_root, tmp_path):
    overrides = tiny_run_overrides(
        toy_root, "preserve=toy_target_anchors", "trainer.max_epochs=1", "preserve.weight=0.5"
    )
    summary = train_in_process(overrides, tmp_path)
    assert summary["preserve"]["weight"] == 0.5 and summary["preserve"]["images"] == "target"
    card = (tmp_path / "README.md").read_text()
    assert "### Distillation from the base" in card and "asked about: circle, square, triangle; weight 0.5" in card


def test_negative_prompts_count_as_tuned_concepts_for_routing(toy_root, tmp_path):
    from conftest import compose_command

    from sam3_lora.pipeline.tuned import load_tuned

    overrides = tiny_run_overrides(toy_root, "trainer.max_epochs=1", "dataset.negative_prompts=[dog, hexagon]")
    train_in_process(overrides, tmp_path)
    tuned = load_tuned(compose_command("evaluate", run_dir=tmp_path))
    # the adapter was trained to stay silent on them: they are its concepts, not the base's
    assert tuned.tuned_concepts() == {"circle", "square", "star", "cross", "dog", "hexagon"}
