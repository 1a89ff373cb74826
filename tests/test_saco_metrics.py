"""SA-Co metrics (IL_MCC, pmF1, cgF1) on hand-computed cases, against COCOeval where they overlap,
and in the evaluate command and training's records.

Every case is built from axis-aligned rectangles on 64x64 images: a rectangle's box and its
mask give the same IoU, so bbox and segm figures agree and each IoU is a ratio of pixel
counts worked out in the comments (and checked with pycocotools' maskUtils).

Formulas (sam3's CGF1Eval, epsilons aside):
  IL_MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))   over (image, category) pairs
  pmF1   = mean over IoU thresholds t in 0.50, 0.55, ..., 0.95 of the micro F1 over the pairs with
           an instance: P = TP / (TP + FP), R = TP / (TP + FN), F1 = 2PR / (P + R)
  cgF1   = pmF1 * IL_MCC
"""

import json

import numpy as np
import pytest
from conftest import compose_command, tiny_run_overrides, train_in_process
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sam3_lora import evaluate as evaluate_cmd
from sam3_lora.data import toy
from sam3_lora.evaluation.saco import METRIC_KEYS, SCORE_KEYS, THRESHOLDS, SacoEvaluation, saco_evaluate
from sam3_lora.pipeline.results import results_table
from sam3_lora.pipeline.settings import ConfigError
from sam3_lora.runs.results import RunResults

SIZE = 64
# sam3's epsilons (1e-4 in F1's denominators) keep a perfect score a hair under 1.
EPS = 1e-3
CATEGORIES = [{"id": 1, "name": "apple"}, {"id": 2, "name": "pear"}, {"id": 3, "name": "plum"}]


def _rle(x, y, w, h):
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8, order="F")
    mask[y : y + h, x : x + w] = 1
    rle = mask_util.encode(mask)
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def gt(ann_id, image_id, category_id, box, masked=True, crowd=0):
    x, y, w, h = box
    ann = {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": [x, y, w, h]}
    ann.update(area=w * h, iscrowd=crowd, segmentation=_rle(*box) if masked else [])
    return ann


def det(image_id, category_id, box, score):
    return {
        "image_id": image_id,
        "category_id": category_id,
        "score": score,
        "bbox": list(box),
        "segmentation": _rle(*box),
    }


def dataset(annotations, num_images=3):
    images = [{"id": i, "file_name": f"{i}.png", "height": SIZE, "width": SIZE} for i in range(1, num_images + 1)]
    return {"images": images, "categories": CATEGORIES, "annotations": annotations}


def iou(a, b):
    return float(mask_util.iou([a], [b], [0])[0, 0])


def mcc(tp, fp, tn, fn):
    return (tp * tn - fp * fn) / ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) ** 0.5


def f1(tp, fp, fn):
    p, r = tp / (tp + fp), tp / (tp + fn)
    return 2 * p * r / (p + r) if p + r else 0.0


def _both(metrics, stat):
    return metrics[f"bbox/{stat}"], metrics[f"segm/{stat}"]


# ------------------------------------------------------------------ undefined and degenerate cases
def test_no_instance_in_the_split_leaves_pmf1_and_cgf1_undefined():
    # Three images x three categories, no annotation; one detection on image 1 / apple.
    result = saco_evaluate(dataset([]), [det(1, 1, (0, 0, 10, 10), 0.9)], score_threshold=0.5)
    m = result.metrics
    # Image level: TP 0, FN 0, FP 1, TN 8: TP + FN = 0 is an empty marginal -> 0 (as sklearn).
    assert m["saco/IL_MCC"] == 0.0
    assert _both(m, "pmF1") == _both(m, "cgF1") == (-1.0, -1.0)  # no pair with an instance
    # IL_FPR: of the 9 pairs without an instance, 1 answered with a detection; for apple 1 of its 3.
    assert m["saco/IL_FPR"] == pytest.approx(1 / 9, abs=1e-6)
    for iou_type in ("bbox", "segm"):
        apple = result.per_category[iou_type]["apple"]
        assert apple == {"IL_MCC": 0.0, "IL_FPR": pytest.approx(1 / 3, abs=1e-6), "pmF1": -1.0, "cgF1": -1.0}
        assert all(c["IL_FPR"] == 0.0 for name, c in result.per_category[iou_type].items() if name != "apple")


def test_all_pairs_negative_without_detections_is_a_perfect_negative_with_mcc_zero():
    result = saco_evaluate(dataset([]), [], score_threshold=0.5)
    # TN 9, nothing else: every marginal but TN + FP and TN + FN is empty -> IL_MCC 0, pmF1 undefined.
    assert result.metrics["saco/IL_MCC"] == 0.0
    assert _both(result.metrics, "pmF1") == (-1.0, -1.0)
    # Every threshold ties at cgF1 -1: the lowest one is chosen.
    assert saco_evaluate(dataset([]), []).threshold == THRESHOLDS[0] == 0.05


def _instances():
    """Image 1: two apples and a pear; image 2: an apple; image 3: nothing. No plum anywhere."""
    return [
        gt(1, 1, 1, (0, 0, 10, 10)),
        gt(2, 1, 1, (20, 20, 10, 10)),
        gt(3, 1, 2, (40, 0, 20, 20)),
        gt(4, 2, 1, (5, 5, 10, 10)),
    ]


def _perfect():
    return [det(a["image_id"], a["category_id"], a["bbox"], 0.9) for a in _instances()]


def test_perfect_prediction_scores_one():
    result = saco_evaluate(dataset(_instances()), _perfect(), score_threshold=0.5)
    m = result.metrics
    # Pairs: 3 positive (1/apple, 1/pear, 2/apple), all predicted; 6 negative, none predicted.
    assert m["saco/IL_MCC"] == pytest.approx(mcc(tp=3, fp=0, tn=6, fn=0), abs=EPS) == pytest.approx(1.0)
    for stat in ("pmF1", "cgF1"):
        assert _both(m, stat) == (pytest.approx(1.0, abs=EPS), pytest.approx(1.0, abs=EPS))
    assert result.per_category["segm"]["apple"]["cgF1"] == pytest.approx(1.0, abs=EPS)
    # pear: 1 positive pair (TP), 2 negative (TN): MCC 1. plum: never present -> undefined pmF1.
    assert result.per_category["bbox"]["pear"]["IL_MCC"] == pytest.approx(1.0, abs=EPS)
    assert result.per_category["segm"]["plum"] == {"IL_MCC": 0.0, "IL_FPR": 0.0, "pmF1": -1.0, "cgF1": -1.0}


def test_empty_prediction_scores_zero():
    result = saco_evaluate(dataset(_instances()), [], score_threshold=0.5)
    m = result.metrics
    # Image level: TP 0, FP 0 (no predicted positive: empty marginal) -> 0; pmF1: TP 0 -> 0.
    assert m["saco/IL_MCC"] == 0.0
    assert _both(m, "pmF1") == (0.0, 0.0) and _both(m, "cgF1") == (0.0, 0.0)


def test_detections_below_the_threshold_do_not_count():
    low = [dict(d, score=0.3) for d in _perfect()]
    assert saco_evaluate(dataset(_instances()), low, score_threshold=0.5).metrics["segm/cgF1"] == 0.0
    assert saco_evaluate(dataset(_instances()), low, score_threshold=0.3).metrics["segm/cgF1"] == pytest.approx(
        1.0, abs=EPS
    )


# ------------------------------------------------------------------ a mixed case, by hand
def _mixed():
    annotations = [
        gt(1, 1, 1, (0, 0, 10, 10)),  # g1: image 1 / apple
        gt(2, 1, 1, (20, 20, 10, 10)),  # g2: image 1 / apple
        gt(3, 2, 1, (0, 0, 10, 10)),  # g3: image 2 / apple
        gt(4, 2, 2, (30, 30, 20, 20)),  # g4: image 2 / pear
    ]
    detections = [
        det(1, 1, (0, 0, 10, 10), 0.9),  # d1 on g1: IoU 100/100 = 1.0
        det(1, 1, (20, 20, 9, 8), 0.8),  # d2 on g2: IoU 72/100 = 0.72
        det(1, 1, (40, 40, 10, 10), 0.7),  # d3: apple where there is none -> FP of a positive pair
        det(2, 1, (0, 0, 9, 9), 0.95),  # d4 on g3: IoU 81/100 = 0.81
        det(2, 1, (0, 0, 10, 10), 0.3),  # d5 on g3, below the 0.5 threshold: not counted
        det(1, 2, (30, 30, 10, 10), 0.6),  # d6: a pear on image 1, which has none -> image-level FP
        # image 2 / pear (g4): no detection -> FN pair. Image 3 and every plum pair: true negatives.
    ]
    return dataset(annotations), detections


def test_mixed_case_worked_out_by_hand():
    data, detections = _mixed()
    boxes = {a["id"]: a["segmentation"] for a in data["annotations"]}
    assert iou(detections[1]["segmentation"], boxes[2]) == pytest.approx(0.72)
    assert iou(detections[3]["segmentation"], boxes[3]) == pytest.approx(0.81)

    result = saco_evaluate(data, detections, score_threshold=0.5)
    m = result.metrics
    # Image level, 9 pairs: 1/apple TP, 2/apple TP, 2/pear FN, 1/pear FP, 3/apple, 3/pear and the
    # three plum pairs TN: MCC = (2*5 - 1*1) / sqrt(3*3*6*6) = 9/18 = 0.5.
    assert mcc(tp=2, fp=1, tn=5, fn=1) == pytest.approx(0.5)
    assert m["saco/IL_MCC"] == pytest.approx(0.5, abs=EPS)
    # pmF1 over the positive pairs 1/apple (d1, d2, d3 vs g1, g2), 2/apple (d4 vs g3), 2/pear (g4):
    #   matches 1.0 (d1-g1), 0.72 (d2-g2), 0.81 (d4-g3); d3 unmatched; g4 missed.
    #   t in 0.50..0.70 (5 thresholds): TP 3, FP 1 (d3), FN 1 (g4): P = R = 3/4, F1 = 3/4
    #   t in 0.75, 0.80 (2):             TP 2, FP 2, FN 2:           F1 = 1/2
    #   t in 0.85..0.95 (3):             TP 1, FP 3, FN 3:           F1 = 1/4
    #   pmF1 = (5*3/4 + 2*1/2 + 3*1/4) / 10 = 0.55; the FP pair 1/pear is not among them.
    pmf1 = (5 * f1(3, 1, 1) + 2 * f1(2, 2, 2) + 3 * f1(1, 3, 3)) / 10
    assert pmf1 == pytest.approx(0.55)
    assert _both(m, "pmF1") == (pytest.approx(0.55, abs=EPS), pytest.approx(0.55, abs=EPS))
    assert _both(m, "cgF1") == (pytest.approx(0.275, abs=EPS), pytest.approx(0.275, abs=EPS))

    apple, pear, plum = (result.per_category["segm"][n] for n in ("apple", "pear", "plum"))
    # apple: 1/apple TP, 2/apple TP, 3/apple TN -> MCC = 2*1 / sqrt(2*2*1*1) = 1.
    #   t <= 0.70: TP 3, FP 1, FN 0 -> P 3/4, R 1, F1 6/7; t 0.75, 0.80: TP 2, FP 2, FN 1 -> F1 4/7;
    #   t >= 0.85: TP 1, FP 3, FN 2 -> P 1/4, R 1/3, F1 2/7.  pmF1 = (5*6 + 2*4 + 3*2) / 70 = 44/70.
    assert apple["IL_MCC"] == pytest.approx(1.0, abs=EPS)
    assert apple["pmF1"] == pytest.approx((5 * f1(3, 1, 0) + 2 * f1(2, 2, 1) + 3 * f1(1, 3, 2)) / 10, abs=EPS)
    assert apple["pmF1"] == pytest.approx(44 / 70, abs=EPS) and apple["cgF1"] == pytest.approx(44 / 70, abs=EPS)
    # pear: 1/pear FP, 2/pear FN, 3/pear TN -> MCC = (0*1 - 1*1) / sqrt(1*1*2*2) = -1/2; TP 0 -> pmF1 0.
    assert pear["IL_MCC"] == pytest.approx(-0.5, abs=EPS) and pear["pmF1"] == 0.0 and pear["cgF1"] == 0.0
    assert plum == {"IL_MCC": 0.0, "IL_FPR": 0.0, "pmF1": -1.0, "cgF1": -1.0}
    assert result.per_category["bbox"]["apple"] == pytest.approx(apple, abs=1e-9)

    # At 0.25 d5 counts too: 2/apple then has d4 and d5 on g3, and the Hungarian matching takes
    # d5 (IoU 1.0): at t >= 0.85 the TP count is 2 instead of 1 (FP 2, FN 2): F1 1/2 there.
    low = saco_evaluate(data, detections, score_threshold=0.25).metrics
    expected = (5 * f1(3, 2, 1) + 2 * f1(2, 3, 2) + 3 * f1(2, 3, 2)) / 10
    assert low["segm/pmF1"] == pytest.approx(expected, abs=EPS)


def test_false_positive_on_an_absent_concept_lowers_il_mcc_not_pmf1():
    data = dataset(_instances())
    clean = saco_evaluate(data, _perfect(), score_threshold=0.5).metrics
    # A plum on image 3: a negative pair becomes an image-level FP.
    spurious = saco_evaluate(data, _perfect() + [det(3, 3, (10, 10, 5, 5), 0.8)], score_threshold=0.5).metrics
    # TP 3, FP 1, TN 5, FN 0: MCC = 15 / sqrt(4*3*6*5) = 15 / sqrt(360)
    assert spurious["saco/IL_MCC"] == pytest.approx(mcc(tp=3, fp=1, tn=5, fn=0), abs=EPS)
    assert spurious["saco/IL_MCC"] < clean["saco/IL_MCC"] - 0.1
    assert spurious["segm/pmF1"] == clean["segm/pmF1"] and spurious["bbox/pmF1"] == clean["bbox/pmF1"]
    assert spurious["segm/cgF1"] == pytest.approx(spurious["segm/pmF1"] * spurious["saco/IL_MCC"])


# ------------------------------------------------------------------ the threshold
def test_threshold_chooser_takes_the_best_cgf1_and_the_lower_of_ties():
    data = dataset([gt(1, 1, 1, (0, 0, 10, 10)), gt(2, 2, 1, (20, 20, 10, 10))])
    detections = [
        det(1, 1, (0, 0, 10, 10), 0.72),  # the two apples, found
        det(2, 1, (20, 20, 10, 10), 0.72),
        det(1, 2, (0, 0, 10, 10), 0.57),  # pears that are not there
        det(2, 2, (0, 0, 10, 10), 0.38),
    ]
    ev = SacoEvaluation(data, detections)
    sweep = ev.sweep()
    # 9 pairs, 2 positive. pmF1 is 1 while the apples count (t <= 0.70), 0 after. Image level:
    #   t <= 0.35: TP 2, FP 2, TN 5 -> MCC = 10 / sqrt(4*2*7*5); t 0.40..0.55: FP 1 -> 12 / sqrt(3*2*7*6);
    #   t 0.60..0.70: FP 0 -> 1 (cgF1 ties at 0.60, 0.65, 0.70); t >= 0.75: no detection -> 0.
    assert sweep[0.35]["segm/cgF1"] == pytest.approx(mcc(2, 2, 5, 0), abs=EPS)
    assert sweep[0.55]["segm/cgF1"] == pytest.approx(mcc(2, 1, 6, 0), abs=EPS)
    assert sweep[0.6]["segm/cgF1"] == sweep[0.65]["segm/cgF1"] == sweep[0.7]["segm/cgF1"]
    assert sweep[0.6]["segm/cgF1"] == pytest.approx(1.0, abs=EPS) and sweep[0.75]["segm/cgF1"] == 0.0
    assert ev.choose_threshold() == 0.6
    chosen = saco_evaluate(data, detections)
    assert chosen.threshold == 0.6 and chosen.metrics == ev.score(0.6).metrics
    # Scoring a threshold again after others gives the same figures (the matching is redone).
    assert ev.score(0.35).metrics == {"saco/threshold": 0.35, **{k: sweep[0.35][k] for k in METRIC_KEYS[1:]}}


def test_threshold_chosen_on_boxes_when_the_split_has_no_masks():
    data = dataset([gt(1, 1, 1, (0, 0, 10, 10), masked=False)])
    detections = [det(1, 1, (0, 0, 10, 10), 0.72), det(2, 1, (0, 0, 10, 10), 0.57)]
    ev = SacoEvaluation(data, detections)
    assert not ev.has_masks
    assert ev.score(0.6).metrics["segm/cgF1"] == -1.0  # no instance to find in segm
    # bbox: the FP on image 2 goes above 0.57; the apple stays until 0.72.
    assert ev.choose_threshold() == 0.6


# ------------------------------------------------------------------ crowds and mask-less annotations
def test_annotations_without_a_mask_are_segm_ignore_regions_and_count_at_image_level():
    data = dataset(
        [
            gt(1, 1, 1, (0, 0, 10, 10)),
            gt(2, 1, 1, (20, 20, 10, 10), masked=False),  # a box-only apple beside a masked one
            gt(3, 2, 1, (0, 0, 10, 10), masked=False),  # image 2's only apple has no mask
        ]
    )
    detections = [det(1, 1, (0, 0, 10, 10), 0.9), det(1, 1, (20, 20, 10, 10), 0.9), det(2, 1, (0, 0, 10, 10), 0.9)]
    result = saco_evaluate(data, detections, score_threshold=0.5)
    m = result.metrics
    assert len(result.notes) == 1 and "2 of 3 annotations have no mask" in result.notes[0]
    # bbox: every box counts: all found -> pmF1 ~ 1. Image level (from the boxes): 1/apple and
    # 2/apple TP, the other 7 pairs TN -> 1.
    assert m["bbox/pmF1"] == pytest.approx(1.0, abs=EPS) and m["saco/IL_MCC"] == pytest.approx(1.0, abs=EPS)
    # segm: only g1 is an instance to find. On 1/apple, CGF1Eval does not excuse the detection on
    # the box-only g2 (a FP: TP 1, FP 1, FN 0 -> F1 2/3 at every IoU threshold); 2/apple has no
    # instance to find, so it is not among pmF1's pairs at all.
    assert m["segm/pmF1"] == pytest.approx(f1(1, 1, 0), abs=EPS)
    assert m["segm/cgF1"] == pytest.approx(m["segm/pmF1"] * m["saco/IL_MCC"])


def test_crowd_regions_are_not_instances_to_find():
    # Image 1's apples: one instance and a crowd region; the crowd is neither found nor missed.
    data = dataset([gt(1, 1, 1, (0, 0, 10, 10)), gt(2, 1, 1, (30, 30, 20, 20), crowd=1)])
    found = saco_evaluate(data, [det(1, 1, (0, 0, 10, 10), 0.9)], score_threshold=0.5).metrics
    assert found["segm/pmF1"] == pytest.approx(1.0, abs=EPS)


def test_segm_cgf1_is_cgf1evals_own_when_every_annotation_has_a_mask():
    data, detections = _mixed()
    ev = SacoEvaluation(data, detections)
    for t in (0.25, 0.5, 0.9):
        m = ev.score(t, per_category=False).metrics
        assert m["segm/cgF1"] == pytest.approx(float(np.mean(ev.counts("segm", t)["cgF1"])), abs=1e-12)
        assert m["saco/IL_MCC"] == pytest.approx(float(ev.counts("segm", t)["IL_MCC"]), abs=1e-12)


# ------------------------------------------------------------------ against pycocotools
def test_recall_at_iou_half_matches_cocoeval_with_every_detection_counted():
    data, detections = _mixed()
    detections = [d for d in detections if d["score"] >= 0.5]  # d5 (a duplicate on g3) out: unambiguous
    data["annotations"].append(gt(5, 3, 1, (40, 40, 10, 10)))  # an apple nobody finds: apple recall 3/4
    ev = SacoEvaluation(data, detections)
    coco_gt = COCO()
    coco_gt.dataset = json.loads(json.dumps(data))
    coco_gt.createIndex()
    for iou_type in ("bbox", "segm"):
        reference = COCOeval(coco_gt, coco_gt.loadRes(json.loads(json.dumps(detections))), iou_type)
        reference.evaluate()
        reference.accumulate()
        for k, cat_id in enumerate(reference.params.catIds):
            # recall: [IoU thresholds, categories, area ranges (0: all), max dets (-1: 100)]
            coco_recall = reference.eval["recall"][0, k, 0, -1]
            counts = ev.counts(iou_type, THRESHOLDS[0], cat_id)
            tp, fn = counts["TPs"][0], counts["FNs"][0]
            if coco_recall < 0:  # no instance of the category
                assert tp + fn == 0
                continue
            assert tp / (tp + fn) == pytest.approx(coco_recall)
            assert counts["recall"][0] == pytest.approx(coco_recall, abs=EPS)


def test_unknown_image_or_category_is_refused():
    with pytest.raises(ValueError, match="detection 1: image 9 / category 1 is not in the dataset"):
        SacoEvaluation(dataset([]), [det(9, 1, (0, 0, 4, 4), 0.5)])


def test_results_table_shows_the_sa_co_columns_and_the_threshold(tmp_path):
    m = {"bbox/AP": 0.1, "bbox/AP50": 0.2, "segm/AP": 0.3, "segm/AP50": 0.4}
    m.update({"saco/threshold": 0.45, "saco/IL_MCC": 0.5, "saco/IL_FPR": 0.25, "segm/pmF1": 0.6, "segm/cgF1": 0.3})
    results = RunResults({"base": m, "lora": dict(m, **{"segm/pmF1": -1.0})}, heldout_split="test")
    text = results_table(results, tmp_path)
    header, base, lora = text.splitlines()[:3]
    assert "segm cgF1" in header and "IL_MCC" in header and "IL_FPR" in header and "segm pmF1" in header
    assert "threshold" in header
    assert base.split()[-5:] == ["0.300", "0.500", "0.250", "0.600", "0.45"]
    assert lora.split()[-2:] == ["-", "0.45"]


def test_a_toy_split_own_annotations_as_detections_score_one(toy_root):
    # Real polygons rasterised at the images' own sizes, three categories, every pair asked.
    ann_file = toy_root / "test" / "_annotations.coco.json"
    coco = COCO(str(ann_file))
    detections = [
        {k: a[k] for k in ("image_id", "category_id", "bbox")} | {"score": 0.8, "segmentation": coco.annToRLE(a)}
        for a in coco.dataset["annotations"]
    ]
    result = saco_evaluate(str(ann_file), detections)
    for key in SCORE_KEYS:
        assert result.metrics[key] == pytest.approx(1.0, abs=EPS), key
    assert result.metrics["saco/IL_FPR"] == 0.0  # no prompt of an absent concept answered
    # Every threshold up to 0.80 ties at ~1: the lowest is chosen.
    assert result.threshold == 0.05
    assert saco_evaluate(str(ann_file), detections, score_threshold=0.85).metrics["segm/cgF1"] == 0.0


# ------------------------------------------------------------------ integration
# The tiny random-weight model's detections score 0 at every threshold, so every threshold ties
# and the lowest would be chosen on any split. To see which split each threshold is chosen on,
# the chooser answers by the split it is shown: valid (3 images) 0.35, test (5 images) 0.85.
SPLIT_THRESHOLDS = {3: 0.35, 5: 0.85}


def _threshold_by_split(self, grid=THRESHOLDS):
    (num_images,) = {len(pairs) for pairs in self.pairs_by_category.values()}
    return SPLIT_THRESHOLDS[num_images]


@pytest.fixture(scope="module")
def split_toy(tmp_path_factory):
    from sam3_lora.data import toy

    return toy.generate(
        tmp_path_factory.mktemp("toy_saco"), domain="shifted", seed=0, splits={"train": 4, "valid": 3, "test": 5}
    )


@pytest.fixture
def threshold_by_split(monkeypatch):
    monkeypatch.setattr(SacoEvaluation, "choose_threshold", _threshold_by_split)


@pytest.fixture(scope="module")
def run_with_tensorboard(split_toy, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("saco_run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SacoEvaluation, "choose_threshold", _threshold_by_split)
        summary = train_in_process(
            tiny_run_overrides(split_toy, "logger=tensorboard", "final_eval.compare_base=true"), run_dir
        )
    return run_dir, summary


def test_training_records_and_logs_the_sa_co_metrics(run_with_tensorboard):
    run_dir, summary = run_with_tensorboard
    history = json.loads((run_dir / "metrics.json").read_text())
    assert len(history) == 2 and all(set(METRIC_KEYS) <= set(entry) for entry in history)
    assert [entry["saco/threshold"] for entry in history] == [0.35, 0.35]  # chosen on valid
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    logged = {e.step: e.value for e in acc.Scalars("val/segm/cgF1")}
    assert logged[history[-1]["step"]] == pytest.approx(history[-1]["segm/cgF1"], abs=1e-6)
    assert {"val/saco/IL_MCC", "val/saco/threshold", "val/bbox/cgF1", "val/segm/pmF1"} <= set(acc.Tags()["scalars"])

    results = json.loads((run_dir / "results.json").read_text())
    assert results["heldout_split"] == "test"
    for key in ("base", "lora"):
        assert set(METRIC_KEYS) <= set(results["results"][key])
    # Both models are scored on test at the threshold chosen on valid, not on test (0.85).
    assert results["results"]["base"]["saco/threshold"] == 0.35
    assert results["results"]["lora"]["saco/threshold"] == 0.35
    base_note, tuned_note = results["notes"]
    assert base_note.startswith("frozen base: ") and "chosen on 'valid'" in base_note
    assert tuned_note.startswith("LoRA (best): ")
    assert "chosen on 'valid'" in tuned_note and "recorded at its best validation evaluation" in tuned_note


def test_tuned_threshold_is_the_one_recorded_at_the_best_validation(split_toy, tmp_path, monkeypatch):
    # Each validation chooses anew: 0.4 at the first, 0.7 at the second; a third choice (re-choosing
    # on valid after training) would raise StopIteration. The held-out score uses the threshold of
    # the best validation: the first with the highest bbox/AP (only a strictly better score replaces
    # the best; with the tiny random model both score 0, so it is the first).
    chosen = iter([0.4, 0.7])
    monkeypatch.setattr(SacoEvaluation, "choose_threshold", lambda self, grid=THRESHOLDS: next(chosen))
    summary = train_in_process(tiny_run_overrides(split_toy), tmp_path)
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert [e["saco/threshold"] for e in history] == [0.4, 0.7]
    best = next(e for e in history if e["bbox/AP"] == max(h["bbox/AP"] for h in history))
    assert summary["results"]["lora"]["saco/threshold"] == best["saco/threshold"]


def test_without_a_valid_split_the_threshold_is_chosen_on_the_held_out_split(split_toy, tmp_path, threshold_by_split):
    summary = train_in_process(
        tiny_run_overrides(
            split_toy, "final_eval.compare_base=true", f"dataset.valid.ann_file={tmp_path / 'absent.json'}"
        ),
        tmp_path / "run",
    )
    assert summary["heldout_split"] == "test"
    for key in ("base", "lora"):
        assert summary["results"][key]["saco/threshold"] == 0.85
    for note in summary["notes"]:  # the base's and the tuned model's
        assert "no valid split" in note and "'test' split itself" in note
    assert len(summary["notes"]) == 2
    assert "0.85" in results_table(RunResults.read(tmp_path / "run"), tmp_path / "run")


def test_evaluate_reports_sa_co_metrics_with_the_threshold_chosen_on_valid(run_with_tensorboard, threshold_by_split):
    run_dir, _ = run_with_tensorboard
    results = json.loads((run_dir / "results.json").read_text())["results"]
    out = evaluate_cmd.evaluate(compose_command("evaluate", run_dir=run_dir, num_workers=0))
    assert out["score_threshold"] == {"value": 0.35, "chosen_on": "valid"}
    # The same best adapter, the threshold chosen on valid again: training's final figures.
    for key in METRIC_KEYS:
        assert out["metrics"][key] == pytest.approx(results["lora"][key], abs=1e-9), key
    for iou_type in ("bbox", "segm"):
        assert set(out["per_category_saco"][iou_type]) == set(toy.CATEGORIES)
        assert set(out["per_category_saco"][iou_type]["circle"]) == {"IL_MCC", "IL_FPR", "pmF1", "cgF1"}
    text = (run_dir / "eval_test.txt").read_text()
    assert "cgF1" in text and "IL_MCC" in text and f"{out['metrics']['saco/threshold']:.2f}" in text

    # The base: scored on valid first for its threshold, as training scored it before training.
    base = evaluate_cmd.evaluate(compose_command("evaluate", run_dir=run_dir, base=True, num_workers=0))
    for key in METRIC_KEYS:
        assert base["metrics"][key] == pytest.approx(results["base"][key], abs=1e-9), key

    # A given threshold is used as given; on split=valid a chosen one is chosen on valid itself.
    given = evaluate_cmd.evaluate(compose_command("evaluate", run_dir=run_dir, score_threshold=0.95, num_workers=0))
    assert given["metrics"]["saco/threshold"] == 0.95 and given["score_threshold"]["chosen_on"] is None
    on_valid = evaluate_cmd.evaluate(compose_command("evaluate", run_dir=run_dir, split="valid", num_workers=0))
    assert on_valid["score_threshold"] == {"value": 0.35, "chosen_on": "valid"}
    assert any("chosen on the split it scores" in n for n in on_valid["notes"])


def test_evaluate_refuses_a_threshold_outside_zero_one(tmp_path):
    with pytest.raises(ConfigError, match=r"score_threshold=1.5: a detection score in \[0, 1\]"):
        evaluate_cmd.evaluate(compose_command("evaluate", run_dir=tmp_path, score_threshold=1.5))
