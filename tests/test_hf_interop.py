"""Hugging Face interop: the key map to transformers' Sam3Model, equal outputs, the transformers and
transformers-peft exports loaded by transformers and PEFT, training from a transformers base, model
cards and the upload.

Tolerance: every output (pred_logits, pred_boxes, pred_masks, presence_logits, semantic_seg) within
TOL of its largest magnitude, fp32 on CPU; measured ~2e-6 (fp32 rounding through different kernels).
Where the implementations differ by design, the tests pin the difference instead of loosening TOL.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import compose_command, tiny_run_overrides, train_in_process
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from sam3.train.data.collator import collate_fn_api
from sam3.train.data.sam3_image_dataset import Datapoint, FindQueryLoaded, Image
from synthetic import _metadata, final_outputs

import sam3_lora.models.transformers_keymap as keymap
from sam3_lora import export as export_cmd
from sam3_lora.hf.hub import HubUploadError
from sam3_lora.hf.model_card import STOCK_BASE, ModelCard, RunFacts, export_card
from sam3_lora.hf.transformers_config import VIT_LAYER_NORM_EPS, MissingExtraError, require_transformers, sam3_config
from sam3_lora.hf.transformers_model import check_against, empty_sam3_model
from sam3_lora.models import SIZES, BaseCheckpointError, build_model
from sam3_lora.models.assembly import measure_size
from sam3_lora.models.transformers_checkpoint import TRACKER_REASON
from sam3_lora.pipeline.tuned import load_tuned

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TOL = 1e-5
IMG = SIZES["tiny"].img_size
# sam3 always runs its geometry encoder; transformers only when given boxes. One padding box
# (label -10) makes Sam3Model encode sam3's text-only prompt: its CLS token, the box masked out.
PADDING_BOX, PADDING_LABEL = [0.5, 0.5, 1.0, 1.0], -10


# ------------------------------------------------------------------------------------------ helpers


def sam3_batch(prompts, seed=0):
    """One image; each prompt is a text, or (text, box cxcywh, label) for a text + box prompt."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(3, IMG, IMG, generator=g) * 0.5
    image[:, 30:70, 40:90] = 1.0
    queries = []
    for i, prompt in enumerate(prompts):
        text, box, label = (prompt, None, None) if isinstance(prompt, str) else prompt
        queries.append(
            FindQueryLoaded(
                query_text=text,
                image_id=0,
                object_ids_output=[],
                is_exhaustive=True,
                input_bbox=None if box is None else torch.tensor([box]),
                input_bbox_label=None if box is None else torch.tensor([label]),
                inference_metadata=_metadata(0, i + 1, (IMG, IMG)),
            )
        )
    point = Datapoint(find_queries=queries, images=[Image(data=image, objects=[], size=(IMG, IMG))])
    return collate_fn_api([point], dict_key="all", with_seg_masks=True)["all"]


def hf_inputs(model, batch, padding_box=True):
    """The same image, token ids (sam3's tokenizer) and boxes, as Sam3Model takes them."""
    find = batch.find_inputs[0]
    ids = model.backbone.language_backbone.tokenizer(batch.find_text_batch, context_length=32)[find.text_ids]
    n = len(find.img_ids)
    kwargs = dict(pixel_values=batch.img_batch[find.img_ids], input_ids=ids, attention_mask=(ids != 0).long())
    if find.input_boxes.numel():
        kwargs.update(
            input_boxes=find.input_boxes.transpose(0, 1), input_boxes_labels=find.input_boxes_label.t().long()
        )
    elif padding_box:
        kwargs.update(
            input_boxes=torch.tensor([[PADDING_BOX]]).repeat(n, 1, 1),
            input_boxes_labels=torch.full((n, 1), PADDING_LABEL),
        )
    return kwargs


@torch.no_grad()
def sam3_outputs(model, batch):
    out = final_outputs(model.eval()(batch))
    return {
        "pred_logits": out["pred_logits"].squeeze(-1),
        "pred_boxes": out["pred_boxes_xyxy"],
        "pred_masks": out["pred_masks"],
        "presence_logits": out["presence_logit_dec"],
        "semantic_seg": out["semantic_seg"],
    }


@torch.no_grad()
def hf_outputs(model, kwargs):
    out = model.eval()(**kwargs)
    return {k: getattr(out, k) for k in ("pred_logits", "pred_boxes", "pred_masks", "presence_logits", "semantic_seg")}


def relative_errors(a, b):
    return {k: float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)) for k in b}


def assert_same(a, b, tol=TOL):
    errors = relative_errors(a, b)
    assert max(errors.values()) < tol, errors
    return errors


@pytest.fixture(scope="module")
def hf_pair():
    """A randomly initialised Sam3Model of the tiny size, and our tiny model given its weights by the key map."""
    torch.manual_seed(3)
    hf = transformers.Sam3Model(sam3_config(SIZES["tiny"])).eval()
    ours = build_model("tiny", eval_mode=True)
    converted = keymap.to_sam3(hf.state_dict())
    missing, unexpected = ours.load_state_dict(converted.tensors, strict=False)
    assert not unexpected and set(missing) == set(keymap.no_counterpart(missing))
    return hf, ours


# --------------------------------------------------------------------------------------- the key map


def test_key_map_round_trips_exactly_both_ways(hf_pair):
    hf, ours = hf_pair
    sam3_state, hf_state = ours.state_dict(), hf.state_dict()
    there = keymap.to_transformers(sam3_state)
    assert set(there.tensors) == set(hf_state)  # every Sam3Model tensor comes from one of ours
    back = keymap.to_sam3(there.tensors, kept=there.kept)
    assert set(back.tensors) == set(sam3_state)
    for name, value in sam3_state.items():
        assert torch.equal(back.tensors[name], value), name
    again = keymap.to_transformers(keymap.to_sam3(hf_state).tensors)
    for name, value in hf_state.items():
        assert torch.equal(again.tensors[name], value), name
    # Nothing without a counterpart goes unnamed: the class-token position row, RoPE buffers, point encoder.
    reasons = set(there.left_out.values())
    assert reasons == {keymap.CLS_ROW_REASON, *(r for _, r in keymap.SAM3_ONLY)}
    assert sum("points_" in n for n in there.left_out) == 6


def test_unknown_tensors_are_named_not_dropped(hf_pair):
    hf, ours = hf_pair
    with pytest.raises(keymap.KeyMapError, match=r"no rule in the key map: \['backbone.extra.weight'\]"):
        keymap.to_transformers({**ours.state_dict(), "backbone.extra.weight": torch.zeros(1)})
    with pytest.raises(keymap.KeyMapError, match=r"not part of transformers' Sam3Model.*'vision_encoder.new'"):
        keymap.to_sam3({**hf.state_dict(), "vision_encoder.new": torch.zeros(1)})
    hf_state = dict(hf.state_dict())
    del hf_state["detr_encoder.layers.0.self_attn.k_proj.weight"]
    with pytest.raises(keymap.KeyMapError, match=r"self_attn.in_proj_weight needs q, k and v.*\['k'\]"):
        keymap.to_sam3(hf_state)


@pytest.mark.parametrize("size", ["tiny", "medium"])
def test_config_from_our_size_spec_makes_the_converted_model(size):
    model = build_model(size)
    assert measure_size(model) == SIZES[size]
    config = sam3_config(SIZES[size])
    assert config.vision_config.backbone_config.layer_norm_eps == VIT_LAYER_NORM_EPS
    assert model.backbone.vision_backbone.trunk.blocks[0].norm1.eps == VIT_LAYER_NORM_EPS  # what sam3 computes
    check_against(empty_sam3_model(config), keymap.to_transformers(model.state_dict()).tensors)


# ----------------------------------------------------------------------------------- equal outputs


def test_same_weights_same_outputs_text_and_box_prompts(hf_pair):
    hf, ours = hf_pair
    batch = sam3_batch([("square", [0.5, 0.45, 0.4, 0.35], 1), ("circle", [0.3, 0.6, 0.2, 0.3], 0)], seed=1)
    errors = assert_same(hf_outputs(hf, hf_inputs(ours, batch)), sam3_outputs(ours, batch))
    print("text + box prompts, max relative error per output:", errors)


def test_same_weights_same_outputs_text_prompts_with_a_padding_box(hf_pair):
    hf, ours = hf_pair
    batch = sam3_batch(["square", "a red circle"], seed=2)
    errors = assert_same(hf_outputs(hf, hf_inputs(ours, batch)), sam3_outputs(ours, batch))
    print("text prompts (Sam3Model given one padding box), max relative error per output:", errors)


def _prompt_lengths(hf, ours, batch, kwargs):
    """Valid prompt tokens each DETR encoder attends to: sam3's (mask True = padding), transformers' (True = valid)."""
    seen = {}
    hooks = [
        ours.transformer.encoder.register_forward_pre_hook(
            lambda m, a, kw: seen.__setitem__("sam3", (~kw["prompt_key_padding_mask"]).sum(1)), with_kwargs=True
        ),
        hf.detr_encoder.register_forward_pre_hook(
            lambda m, a, kw: seen.__setitem__("transformers", kw["text_mask"].sum(1)), with_kwargs=True
        ),
    ]
    try:
        sam3_outputs(ours, batch), hf_outputs(hf, kwargs)
    finally:
        for h in hooks:
            h.remove()
    return seen["sam3"], seen["transformers"]


def test_text_only_prompts_differ_by_the_geometry_cls_token(hf_pair):
    """Not rounding: transformers' Sam3Model skips the geometry encoder without boxes, so the prompt
    the encoder, decoder, scoring and mask head attend to lacks sam3's geometry CLS token."""
    hf, ours = hf_pair
    batch = sam3_batch(["square", "a red circle"], seed=2)
    plain = hf_inputs(ours, batch, padding_box=False)
    errors = relative_errors(hf_outputs(hf, plain), sam3_outputs(ours, batch))
    assert errors["pred_logits"] > 100 * TOL and errors["pred_masks"] > 100 * TOL, errors
    # Where: the same vision and text features, then one prompt token fewer.
    with torch.no_grad():
        vision = hf.get_vision_features(plain["pixel_values"][:1])
        fpn = ours.backbone.forward_image(batch.img_batch)["backbone_fpn"]
        for theirs, mine in zip(vision.fpn_hidden_states[:-1], fpn):
            torch.testing.assert_close(theirs, mine, rtol=TOL, atol=TOL)
        text = hf.get_text_features(plain["input_ids"], plain["attention_mask"]).pooler_output
        _, memory, _ = ours.backbone.language_backbone(batch.find_text_batch, device="cpu")
        valid = plain["attention_mask"].bool()
        torch.testing.assert_close(text[valid], memory.transpose(0, 1)[valid], rtol=TOL, atol=TOL)
    sam3_tokens, hf_tokens = _prompt_lengths(hf, ours, batch, plain)
    assert torch.equal(sam3_tokens, hf_tokens + 1)
    sam3_tokens, hf_tokens = _prompt_lengths(hf, ours, batch, hf_inputs(ours, batch))
    assert torch.equal(sam3_tokens, hf_tokens)


def test_presence_logits_are_clamped_by_transformers_only(hf_pair):
    """sam3 0.1.4's decoder calls presence_logits.clamp(-10, 10) and discards the result; transformers clamps."""
    hf, ours = hf_pair
    batch = sam3_batch([("square", [0.5, 0.45, 0.4, 0.35], 1)], seed=3)
    head, hf_head = ours.transformer.decoder.presence_token_head.layers[2], hf.detr_decoder.presence_head.layer3
    with torch.no_grad():
        head.bias += 25.0
        hf_head.bias += 25.0
    try:
        theirs, mine = hf_outputs(hf, hf_inputs(ours, batch)), sam3_outputs(ours, batch)
    finally:
        with torch.no_grad():
            head.bias -= 25.0
            hf_head.bias -= 25.0
    assert (mine["presence_logits"] > 10).all() and torch.equal(
        theirs["presence_logits"], torch.full_like(mine["presence_logits"], 10.0)
    )
    assert_same(
        {k: v for k, v in theirs.items() if k != "presence_logits"},
        {k: v for k, v in mine.items() if k != "presence_logits"},
    )


# ------------------------------------------------------------- trained LoRA, exported, loaded by HF


@pytest.fixture(scope="module")
def lora_run(toy_root, tmp_path_factory):
    """A few LoRA steps with targets in every part (q, k, v, out, FFN of all six) and a module trained in full."""
    run_dir = tmp_path_factory.mktemp("hf_run")
    train_in_process(
        tiny_run_overrides(
            toy_root,
            "trainer.max_epochs=2",
            "lora.targets=[all]",
            "lora.parts=[all]",
            "lora.modules_to_save=[dot_prod_scoring]",
            "final_eval.compare_base=true",
        ),
        run_dir,
    )
    return run_dir


@pytest.fixture(scope="module")
def exports(lora_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf_exports")
    for name, extra in (("merged", {}), ("peft", {}), ("base", {"base": True})):
        fmt = "transformers-peft" if name == "peft" else "transformers"
        export_cmd.export(compose_command("export", run_dir=lora_run, format=fmt, output=out / name, **extra))
    return out


@pytest.fixture(scope="module")
def tuned(lora_run):
    return load_tuned(OmegaConf.create({"run_dir": str(lora_run), "adapter": None, "base": False}))


def test_exports_reproduce_the_tuned_model_in_transformers_and_peft(tuned, exports):
    batches = [sam3_batch(["circle", "square"], seed=4), sam3_batch([("triangle", [0.4, 0.4, 0.5, 0.5], 1)], seed=5)]
    merged = transformers.Sam3Model.from_pretrained(exports / "merged")
    base = transformers.Sam3Model.from_pretrained(exports / "base")
    for batch in batches:
        ref, kwargs = sam3_outputs(tuned.model, batch), hf_inputs(tuned.model, batch)
        changed = relative_errors(hf_outputs(base, kwargs), ref)  # training moved scores and masks (the box
        assert changed["pred_logits"] > 100 * TOL and changed["pred_masks"] > 100 * TOL  # head's last layer is 0)
        assert_same(hf_outputs(merged, kwargs), ref)
    lora = peft.PeftModel.from_pretrained(base, str(exports / "peft"))
    written = load_file(str(exports / "peft" / "adapter_model.safetensors"))
    loaded = peft.get_peft_model_state_dict(lora)  # what PEFT holds, in its file's names: every tensor taken
    assert set(loaded) == set(written) and all(torch.equal(loaded[k], written[k]) for k in written)
    for batch in batches:
        assert_same(hf_outputs(lora, hf_inputs(tuned.model, batch)), sam3_outputs(tuned.model, batch))
    # Merged by PEFT or by us: the same Sam3Model weights.
    unloaded = lora.merge_and_unload().state_dict()
    for name, value in merged.state_dict().items():
        torch.testing.assert_close(unloaded[name], value, rtol=TOL, atol=TOL, msg=name)


def test_peft_adapter_is_exact_per_projection(tuned, exports):
    config = json.loads((exports / "peft" / "adapter_config.json").read_text())
    rank = tuned.info.config.rank
    assert config["r"] == rank and not config["rank_pattern"] and not config["alpha_pattern"]
    assert config["modules_to_save"] == ["dot_product_scoring"]
    modules = dict(transformers.Sam3Model.from_pretrained(exports / "base").named_modules())
    assert all(isinstance(modules[t], torch.nn.Linear) for t in config["target_modules"])
    targets = set(config["target_modules"])
    for part in ("vision_encoder.backbone.layers.0.attention", "text_encoder.text_model.encoder.layers.0.self_attn"):
        assert {f"{part}.{p}_proj" for p in "qkv"} <= targets  # packed q/k/v: one Linear each, rank r
    assert "text_encoder.text_model.encoder.layers.0.self_attn.out_proj" in targets
    for part in ("geometry_encoder.layers.0", "detr_encoder.layers.0", "detr_decoder.layers.1"):
        assert {f"{part}.mlp.fc1", f"{part}.mlp.fc2"} <= targets and any(
            t.startswith(part) and t.endswith("o_proj") for t in targets
        )
    assert "mask_decoder.prompt_cross_attn.o_proj" in targets
    written = load_file(str(exports / "peft" / "adapter_model.safetensors"))
    assert all(v.shape[0] == rank for k, v in written.items() if k.endswith("lora_A.weight"))


def test_export_cards_say_how_to_load_and_what_was_left_out(exports, lora_run):
    for name, library in (("merged", "transformers"), ("peft", "peft"), ("base", "transformers")):
        text = (exports / name / "README.md").read_text()
        meta = yaml.safe_load(text.split("---")[1])
        assert meta["library_name"] == library and meta["license"] == "other" and meta["datasets"] == ["toy"]
        assert "padding box" in text and "input_boxes_labels=torch.tensor([[-10]])" in text
        assert "point-prompt encoder" in text or name == "peft"
    assert "frozen base model" in (exports / "base" / "README.md").read_text()
    assert "PeftModel.from_pretrained(base" in (exports / "peft" / "README.md").read_text()


# ------------------------------------------------------------------------ transformers-format base


def test_training_starts_from_a_transformers_base(exports, toy_root, tmp_path, tuned):
    base = build_model("tiny", checkpoint_path=str(exports / "base"))
    file_only = build_model("tiny", checkpoint_path=str(exports / "base" / "model.safetensors"))
    torch.manual_seed(0)  # the run's seed: the tiny base the adapter was trained on
    original = build_model("tiny").state_dict()
    for name, value in base.state_dict().items():
        torch.testing.assert_close(file_only.state_dict()[name], value, rtol=0, atol=0)
        if "points_" in name:
            assert not value.any(), name  # no counterpart: set to zero, the same on every build
        elif name.endswith("pos_embed"):  # the class-token row sam3 never reads: zero
            assert not value[:, 0].any() and torch.equal(value[:, 1:], original[name][:, 1:])
        else:
            assert torch.equal(value, original[name]), name
    run_dir = tmp_path / "run"
    summary = train_in_process(
        tiny_run_overrides(toy_root, "trainer.max_epochs=1", f"+model.checkpoint_path={exports / 'base'}"), run_dir
    )
    assert summary["results"]["lora"]["segm/AP"] >= 0
    reloaded = load_tuned(OmegaConf.create({"run_dir": str(run_dir), "adapter": None, "base": False}))
    assert reloaded.info.base_weights_fingerprint == reloaded.model.lora_report.base_weights_fingerprint


def test_hub_layout_with_prefix_and_tracker_loads_and_names_what_it_skips(exports, tmp_path, caplog):
    state = load_file(str(exports / "base" / "model.safetensors"))
    hub = tmp_path / "hub"
    hub.mkdir()
    tensors = {f"detector_model.{k}": v for k, v in state.items()}
    tensors["tracker_model.memory.weight"] = torch.zeros(2)
    save_file(tensors, str(hub / "model.safetensors"))
    (hub / "config.json").write_text(json.dumps({"model_type": "sam3_video"}))
    with caplog.at_level("INFO"):
        model = build_model("tiny", checkpoint_path=str(hub))
    assert TRACKER_REASON in caplog.text and "point-prompt encoder" in caplog.text
    assert torch.equal(model.dot_prod_scoring.hs_proj.weight, state["dot_product_scoring.query_proj.weight"])


def test_transformers_base_of_another_size_or_kind_is_refused(exports, tmp_path):
    with pytest.raises(BaseCheckpointError, match=r"does not fit this model: weights missing: .*another SAM3 size"):
        build_model("medium", checkpoint_path=str(exports / "base"))
    with pytest.raises(BaseCheckpointError, match=r"query_embed.weight is \(20, 64\) in the checkpoint and \(10, 64\)"):
        build_model("tiny", checkpoint_path=str(exports / "base"), overrides={"num_queries": 10})
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseCheckpointError, match="folder without transformers SAM3 weights"):
        build_model("tiny", checkpoint_path=str(tmp_path / "empty"))
    other = tmp_path / "bert"
    other.mkdir()
    save_file(load_file(str(exports / "base" / "model.safetensors")), str(other / "model.safetensors"))
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(BaseCheckpointError, match="describes a 'bert' model, not SAM3"):
        build_model("tiny", checkpoint_path=str(other))


def test_the_core_needs_no_transformers(exports, monkeypatch, tmp_path, lora_run):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails
    with pytest.raises(MissingExtraError, match=r'pip install -e "\.\[hf\]"'):
        require_transformers("this")
    build_model("tiny", checkpoint_path=str(exports / "base"))  # reading transformers weights: safetensors only
    out = tmp_path / "hf"
    with pytest.raises(MissingExtraError, match=r"export format=transformers needs the transformers package"):
        export_cmd.export(compose_command("export", run_dir=lora_run, format="transformers", output=out))
    assert not out.exists()


# -------------------------------------------------------------------------------- cards and upload


def test_training_run_writes_a_model_card(lora_run):
    text = (lora_run / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["library_name"] == "sam3_lora" and meta["pipeline_tag"] == "image-segmentation"
    assert {"sam3", "lora"} <= set(meta["tags"]) and meta["license_name"] == "sam-license"
    assert "base_model" not in meta  # the tiny model is not a Hub model
    results = json.loads((lora_run / "results.json").read_text())
    train = results["dataset"]["splits"]["train"]
    assert f"| train | {train['images']} | {train['annotations']} |" in text
    assert "Categories (5): circle, square, star, cross, triangle" in text  # train's, then valid's absent one
    assert "| rank | 8 |" in text and "| modules_to_save | dot_prod_scoring |" in text
    base, tuned = results["results"]["base"]["segm/AP"], results["results"]["lora"]["segm/AP"]
    assert f"| segm AP | {base:.3f} | {tuned:.3f} | {tuned - base:+.3f} |" in text
    assert "python -m sam3_lora.train model=sam3_tiny dataset=toy" in text and "'lora.parts=[all]'" in text


def test_stock_base_is_named_on_the_hub():
    card = export_card("transformers", RunFacts(model_name="sam3", checkpoint_path="sam3.pt"), output_name="out")
    assert isinstance(card, ModelCard) and card.front_matter()["base_model"] == STOCK_BASE
    assert "Not recorded" in card.render()


class FakeHub:
    """Stands in for huggingface_hub.HfApi: records what would be uploaded (no network here)."""

    calls = []
    fail = False

    def create_repo(self, **kw):
        if FakeHub.fail:
            raise ConnectionError("offline")
        FakeHub.calls.append(("create_repo", kw))

    def upload_folder(self, **kw):
        FakeHub.calls.append(
            ("upload_folder", {**kw, "files": sorted(p.name for p in Path(kw["folder_path"]).iterdir())})
        )

    def upload_file(self, **kw):
        FakeHub.calls.append(("upload_file", kw))


def test_push_to_hub_uploads_the_export_and_its_card(lora_run, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    FakeHub.calls, FakeHub.fail = [], False
    out = export_cmd.export(
        compose_command(
            "export", run_dir=lora_run, format="transformers-peft", output=tmp_path / "p", push_to_hub="me/sam3-toy"
        )
    )
    (_, created), (_, uploaded) = FakeHub.calls
    assert created == {"repo_id": "me/sam3-toy", "repo_type": "model", "exist_ok": True}
    assert uploaded["folder_path"] == str(out) and uploaded["files"] == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert "https://huggingface.co/me/sam3-toy" in (out / "README.md").read_text()
    FakeHub.calls = []
    merged = export_cmd.export(
        compose_command("export", run_dir=lora_run, output=tmp_path / "tuned.pt", push_to_hub="me/m")
    )
    assert [(c[1]["path_or_fileobj"], c[1]["path_in_repo"]) for c in FakeHub.calls[1:]] == [
        (str(merged), "tuned.pt"),
        (str(tmp_path / "tuned.README.md"), "README.md"),
    ]
    FakeHub.fail = True
    with pytest.raises(
        HubUploadError, match=r"failed \(ConnectionError: offline\).*complete on disk.*huggingface-cli upload me/x"
    ):
        export_cmd.export(
            compose_command(
                "export", run_dir=lora_run, format="transformers", output=tmp_path / "h", push_to_hub="me/x"
            )
        )
    assert (tmp_path / "h" / "model.safetensors").is_file()
