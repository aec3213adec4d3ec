"""transfer and score: resume by class, label issues, the global probe, the sample flags."""

from __future__ import annotations

import numpy as np
import pytest

import unhans.pipeline.method.probes as probes
from tests.helpers import make_runner

SMALL = ["train.epochs=1", "dataset.limit_per_class=20", "distances.metric=euclidean"]


def test_interrupted_transfer_resumes_by_class_to_the_same_tables(tmp_path, monkeypatch):
    full = make_runner(tmp_path / "full", overrides=SMALL)
    full.run_all(until="score")

    part = make_runner(tmp_path / "part", overrides=SMALL)
    part.run_all(until="cluster")
    real, calls = probes.transfer, []  # transfer(model, normalise, images, hosts, c, ...)

    def dying(*args, **kw):
        if args[4] not in calls and len(calls) == 4:
            raise KeyboardInterrupt  # stopped during the fifth class
        calls.append(args[4]) if args[4] not in calls else None
        return real(*args, **kw)

    monkeypatch.setattr(probes, "transfer", dying)
    with pytest.raises(KeyboardInterrupt):
        part.run("transfer")
    assert part.state("transfer") == "partial"

    redone = set()
    monkeypatch.setattr(probes, "transfer", lambda *a, **kw: redone.add(a[4]) or real(*a, **kw))
    rec = part.run("transfer")
    assert rec["counts"]["classes_resumed"] == 4
    assert redone == set(range(10)) - set(calls)
    part.run("score")
    for name in ("class_scores", "sample_scores"):
        assert full.store.read_table(name).equals(part.store.read_table(name)), name


def test_unlearned_backdoor_images_are_label_issues(tmp_path):
    """A backdoor the model does not learn (a faint text stamp on few images) leaves relabelled images:
    the score stage reports them as label issues (cleanlab-style self-confidence), apart from shortcuts."""
    import torch
    from sklearn.metrics import roc_auc_score

    from unhans.pipeline.data import build_dataset, iter_batches
    from unhans.pipeline.data.models import model_for_run, model_spec

    sets = ["dataset.poison={kind: text, regime: backdoor, target: 1, fraction: 0.2, strength: 0.3, seed: 2}",
            "train.epochs=8", "dataset.limit_per_class=60", "distances.metric=euclidean"]  # fmt: skip
    r = make_runner(tmp_path, overrides=sets)
    r.run_all(until="score")
    ss = r.store.read_table("sample_scores").set_index("index")
    samples = r.store.read_table("samples")
    relabelled = (samples["label"] != samples["original_label"]).to_numpy()
    target = ss[ss["class_id"] == 1]
    truth = relabelled[target.index.to_numpy()]
    assert truth.sum() >= 5
    auroc = roc_auc_score(truth, target["label_issue_score"])
    assert auroc > 0.8
    assert np.allclose(ss["label_issue_score"], 1 - ss["self_confidence"])
    pred = r.store.array("attribution/prediction")[:][ss.index.to_numpy()]
    assert (pred[ss["is_label_issue"].to_numpy()] != ss["class_id"].to_numpy()[ss["is_label_issue"].to_numpy()]).all()
    # self-confidence is the model's probability of the label (stored by the attribute stage), measured directly here
    cfg = r.cfg
    ds = build_dataset(cfg.dataset)
    idx = target.index.to_numpy()[:20]
    [(_, x, _, _)] = list(iter_batches(ds, samples, [idx]))
    model = model_for_run(cfg, r.store, len(ds.classes), ds.channels)
    normalise = model_spec(cfg.model).normaliser(ds.channels)
    with torch.no_grad():
        p = torch.softmax(model(normalise(x)), 1)[:, 1].numpy()
    assert np.allclose(p, target["self_confidence"].to_numpy()[:20], atol=1e-5)
    cs = r.store.read_table("class_scores").set_index("class_id")
    assert cs["label_issue_fraction"].idxmax() == 1


def test_a_learned_global_tint_is_found_by_the_global_probe(tmp_path):
    """A tint backdoor (other digits, brightened, relabelled 2) has no small set of pixels to paste:
    the global probe carries it. The class ranks first, its group's transfer is global, and the
    tinted images score above the class's own."""
    from sklearn.metrics import roc_auc_score

    sets = ["dataset.poison={kind: tint, regime: backdoor, target: 2, fraction: 0.2, seed: 4}",
            "dataset.limit_per_class=80", "distances.metric=euclidean"]  # fmt: skip
    r = make_runner(tmp_path, overrides=sets)
    r.run_all(until="score")
    cs = r.store.read_table("class_scores").set_index("class_id")
    ss = r.store.read_table("sample_scores")
    samples = r.store.read_table("samples")
    target = ss[ss["class_id"] == 2]
    truth = samples["artifact"].to_numpy(bool)[target["index"].to_numpy()]
    assert cs.index[0] == 2 and cs.at[2, "group_probe"] == "global", cs[["clever_hans_score", "group_probe"]]
    assert roc_auc_score(truth, target["global_transfer"]) > 0.95
    assert roc_auc_score(truth, target["clever_hans_score"]) > 0.95
    assert (ss["transfer"] == ss[["evidence_transfer", "global_transfer"]].max(axis=1)).all()


def test_score_settings_rerun_without_the_model(tmp_path, monkeypatch):
    """Changing a score setting makes only score (and what reads it) stale: the transfers stay."""
    r = make_runner(tmp_path, overrides=SMALL)
    r.run_all(until="score")
    before = r.store.read_table("class_scores")
    monkeypatch.setattr(probes, "transfer", lambda *a, **kw: pytest.fail("the model was asked again"))
    again = make_runner(tmp_path, overrides=SMALL + ["score.min_spread=0.02"])
    assert again.state("transfer") == "done" and again.state("score") == "stale"
    again.run_all(until="score")
    after = again.store.read_table("class_scores")
    assert (after["clever_hans_score"].max() > before["clever_hans_score"].max()) or before["group_size"].eq(0).all()


def test_samples_are_flagged_when_their_score_stands_out_from_their_class():
    from unhans.pipeline.method.statistics import stands_out

    s = np.r_[np.full(5, 0.9), 0.05 + 0.01 * np.arange(20)]
    group = np.zeros(25, bool)
    group[[0, 1, 2, 5, 6]] = True  # the chosen cluster: 3 artifact samples and 2 look-alikes
    out = stands_out(s, ~group, threshold=1.5, min_spread=0.1)
    assert out[:5].all() and not out[5:].any()  # all five high scores, in the group or not; no look-alike
    assert stands_out(s, np.zeros(25, bool), 1.5, 0.1)[:5].all()  # no group: the whole class is the reference


def test_the_sample_score_is_the_relative_transfer_spread_over_the_class_graph(tmp_path):
    """clever_hans_score = spread(t / max(p, confidence_floor)) over the class's kNN graph, from the
    stored transfers and self-confidences; floor 1 gives the plain transfer, spread."""
    from unhans.pipeline.method.spectral import knn_affinity
    from unhans.pipeline.method.statistics import spread

    def expected(r, c, floor):
        W = knn_affinity(r.store.array(f"classes/{c}/knn_idx")[:], r.store.array(f"classes/{c}/knn_dist")[:])
        t = r.store.array(f"classes/{c}/transfer")[:].astype(np.float64)
        members = r.store.array(f"classes/{c}/members")[:]
        p = r.store.array("attribution/label_probability")[:][members].astype(np.float64)
        return spread(W, t / np.maximum(p, floor), 0.75)

    for floor in (0.5, 1.0):
        r = make_runner(tmp_path, overrides=SMALL + [f"score.confidence_floor={floor}"])
        r.run_all(until="score")
        ss = r.store.read_table("sample_scores")
        for c in (0, 7):
            members = r.store.array(f"classes/{c}/members")[:]
            got = ss.set_index("index").loc[members, "clever_hans_score"].to_numpy()
            assert np.allclose(got, expected(r, c, floor)), (floor, c)


def test_the_transfer_stage_costs_probes_plus_global_probes_forward_passes_a_sample(tmp_path, monkeypatch):
    """With transfer.probes = 2 and transfer.global_probes = 1, each member goes through the model 2 + 1
    times in composites and never alone (its self-confidence comes from the attribute stage); each
    class's 16 hosts once more; the place probe (transfer.place_hosts = 4), each drawn donor and each member
    along a confirmed place once on each of the first 4 hosts, and those hosts once more in a class with a
    probed group; the stage's record counts the same passes."""
    import torch

    r = make_runner(tmp_path, overrides=SMALL + ["transfer.probes=2", "transfer.global_probes=1",
                                                 "transfer.place_hosts=4"])  # fmt: skip
    r.run_all(until="cluster")
    seen: list[int] = []
    held: dict = {}
    real_forward = torch.nn.Module.__call__

    def counting(self, *args, **kwargs):
        if self is held.get("model"):  # the whole model, not its layers
            seen.append(len(args[0]))
        return real_forward(self, *args, **kwargs)

    import unhans.stages.transfer as stage

    real_model_and_data = stage._model_and_data

    def wrapped(cfg, url):
        model, ds, normalise = real_model_and_data(cfg, url)
        held["model"] = model
        return model, ds, normalise

    monkeypatch.setattr(stage, "_model_and_data", wrapped)
    monkeypatch.setattr(torch.nn.Module, "__call__", counting)
    rec = r.run("transfer")
    n = sum(len(r.store.array(f"classes/{c}/members")[:]) for c in range(10))
    places = [r.store.array(f"classes/{c}/place")[:] for c in range(10)]
    reach = sum(int(np.isfinite(r.store.array(f"classes/{c}/place_reach")[:]).sum()) for c in range(10))
    place_passes = sum((4 if len(p) else 0) + 4 * int(np.isfinite(p).sum()) for p in places) + 4 * reach
    assert sum(seen) == n * (2 + 1) + 10 * 16 + place_passes
    assert rec["counts"]["passes_per_sample"] == round(sum(seen) / n, 2)
    ev = np.concatenate([r.store.array(f"classes/{c}/transfer_evidence")[:] for c in range(10)])
    assert np.isfinite(ev).all() and (ev != 0).any()


def test_a_screened_run_probes_its_candidates_on_every_host_and_takes_p_values_on_the_screening(tmp_path, monkeypatch):
    """transfer.candidates = 2 with 2 + 1 probes a sample: every class is screened at those probes, the two
    classes with the highest class scores on the screening are probed on every host (their transfers are
    those of a run at the full budget, same hosts), the others keep the screening's (those of a run at 2 + 1
    without candidates); p-values are taken on every class's screening score, and the choice depends on the
    score settings, so they enter the transfer stage's fingerprint only in a screened run. A run killed in
    the candidates' probes resumes to the same store."""
    import torch

    import unhans.stages.transfer as stage
    from unhans.pipeline.method.statistics import flag_classes

    def at(*extra):
        return make_runner(tmp_path, overrides=SMALL + list(extra))

    def transfers(r):
        return {c: r.store.array(f"classes/{c}/transfer")[:] for c in range(10)}

    budget = ["transfer.probes=2", "transfer.global_probes=1"]
    cheap = at(*budget)
    cheap.run_all(until="score")
    screening, cheap_scores = transfers(cheap), cheap.store.read_table("class_scores").set_index("class_id")
    full = at()
    full.run("transfer")
    everywhere = transfers(full)
    r = at(*budget, "transfer.candidates=2", "transfer.place_reference=3")
    assert r.state("transfer") == "stale"
    real = stage.class_transfer

    def dying(*args, **kw):  # killed in the first candidate's full probe, after every class's screening
        if kw.get("full"):
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(stage, "class_transfer", dying)
    with pytest.raises(KeyboardInterrupt):
        r.run("transfer")
    assert r.state("transfer") == "partial"
    monkeypatch.setattr(stage, "class_transfer", real)
    rec = r.run("transfer")  # resumed: the screening kept, the candidates probed, as uninterrupted (below)
    assert rec["counts"]["classes_resumed"] == 10
    r.run("score")
    chosen = rec["counts"]["candidates"]
    assert chosen == list(cheap_scores["clever_hans_score"].sort_values(ascending=False, kind="stable").index[:2])
    got = transfers(r)
    for c in range(10):
        want = everywhere[c] if c in chosen else screening[c]
        assert np.array_equal(got[c], want), c
        assert r.store.array(f"classes/{c}/transfer").attrs["in_full"] == (c in chosen)
    scores = r.store.read_table("class_scores")
    # the place probe: on the candidates and on 3 classes drawn before any score, as a run probing every class's
    # place probes them; the others' stored as not probed, with no place score
    reference = stage.place_reference(r.cfg, list(range(10)))
    assert len(reference) == 3
    place_scores = scores.set_index("class_id")["place_score"]
    for c in range(10):
        probed = c in chosen or c in reference
        assert r.store.array(f"classes/{c}/place").attrs["probed"] == probed, c
        assert np.isfinite(place_scores[c]) == probed, c
        if probed:
            for a in ("place", "place_reach"):
                want = full.store.array(f"classes/{c}/{a}")[:]
                assert np.array_equal(r.store.array(f"classes/{c}/{a}")[:], want, equal_nan=True), (c, a)
    assert np.allclose(scores["screening_score"], cheap_scores.loc[scores["class_id"], "clever_hans_score"])
    rest = ~scores["class_id"].isin(chosen)
    assert np.allclose(scores.loc[rest, "screening_score"], scores.loc[rest, "clever_hans_score"])
    p, _, _ = flag_classes(scores["clever_hans_score"], r.cfg.score, r.cfg.seed, reference=scores["screening_score"])
    assert np.allclose(scores["p_value"], p)
    # verify's re-audit under the audited model probes a candidate as the audit did: the stage's class score
    from unhans.pipeline.data.models import model_for_run
    from unhans.pipeline.harness.verify import reaudit

    other = int(scores.loc[rest, "class_id"].iloc[0])
    again = reaudit(r.cfg, r.store, model_for_run(r.cfg, r.store, 10, 1), [chosen[0], other], torch.device("cpu"))
    for c, v in again.items():
        assert v == pytest.approx(scores.set_index("class_id").at[c, "clever_hans_score"], rel=1e-6, abs=1e-9), c
    other_score = at(*budget, "transfer.candidates=2", "transfer.place_reference=3", "score.min_spread=0.5")
    assert other_score.fingerprint("transfer") != r.fingerprint("transfer")
    assert at(*budget, "score.min_spread=0.5").fingerprint("transfer") == cheap.fingerprint("transfer")
    assert cheap_scores["screening_score"].isna().all()  # not screened: no screening score
