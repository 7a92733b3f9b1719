"""Core additions for the 2024-26 benchmarks: exact text-text scores, one-query items, fetch hints, the registry,
``--benchmark all``, headline summaries (table and heatmap) and ``--compare`` over files holding several models."""
import json

import pytest
import torch

from eval_fixtures import TableScorer, vector_image, vector_scorer, write_mmvp, write_sugarcrepe_pp
from open_clip_align.eval import benchmarks, cli, report
from open_clip_align.eval.items import EvalDataError, ImageRef, Item, query_candidates, require_file
from open_clip_align.eval.scoring import exact_cosines

CAPTIONS = [f"caption {k}" for k in range(6)]
SCPP = [{"id": 0, "filename": "1.jpg", "caption": "a cat on a mat", "caption2": "a mat under a cat",
         "negative_caption": "a mat on a cat"}]
MMVP = [(1, "Orientation", "left"), (2, "Orientation", "right")]


def test_text_pair_scores_are_exact_symmetric_and_tie_safe(tmp_path):
    image = ImageRef(vector_image(tmp_path / "0.png", 3))
    items = [Item("a", [image], [CAPTIONS[0], CAPTIONS[1], CAPTIONS[0]], [[True, True, False]]),
             Item("b", [image], [CAPTIONS[1], CAPTIONS[2], CAPTIONS[3], CAPTIONS[0]], [[True] * 4])]
    scorer, model = vector_scorer(CAPTIONS)
    matrices = scorer.score_text_pairs(items)
    assert [tuple(m.shape) for m in matrices] == [(3, 3), (4, 4)] and matrices[0].dtype == torch.float32
    features = scorer.text_features(CAPTIONS)
    for item, matrix in zip(items, matrices):
        for j, a in enumerate(item.captions):
            for k, b in enumerate(item.captions):  # each entry is the exact cosine of its two captions alone
                assert torch.equal(matrix[j, k], exact_cosines(features[a][None], features[b][None])[0, 0])
    first = matrices[0]
    assert torch.equal(first, first.T)
    assert torch.equal(first[0], first[2]) and first[0, 1] == first[2, 1]  # a repeated caption ties exactly
    assert torch.equal(matrices[1][3, 0], first[0, 1])  # the same pair in another item and position
    assert scorer.score_text_pairs([]) == []


def test_query_candidates_reads_the_query_side():
    i2t = Item("i", [ImageRef("q.png")], ["a", "b", "c"], [[False, False, True]], meta={"direction": "i2t"})
    t2i = Item("t", [ImageRef("x.png"), ImageRef("y.png")], ["a"], [[False], [True]], meta={"direction": "t2i"})
    scores, target = query_candidates(i2t, torch.tensor([[0.1, 0.2, 0.3]]))
    assert scores.tolist() == pytest.approx([0.1, 0.2, 0.3]) and target == 2
    scores, target = query_candidates(t2i, torch.tensor([[0.5], [0.7]]))
    assert scores.tolist() == pytest.approx([0.5, 0.7]) and target == 1
    with pytest.raises(ValueError, match="meta\\['direction'\\] must be one of"):
        query_candidates(Item("n", [ImageRef("q.png")], ["a"], [[True]]), torch.zeros(1, 1))
    with pytest.raises(ValueError, match="exactly one true candidate"):
        query_candidates(Item("m", [ImageRef("q.png")], ["a", "b"], [[True, True]], meta={"direction": "i2t"}),
                         torch.zeros(1, 2))


def test_missing_file_names_the_fetch_command(tmp_path):
    with pytest.raises(EvalDataError, match=rf"^x: {tmp_path}/r/a.json not found; expected LAYOUT\. Nothing is "
                                            rf"downloaded implicitly: run `python -m open_clip_align\.eval\.fetch "
                                            rf"whatsup --dest {tmp_path}` \(it writes {tmp_path}/whatsup/\)"):
        require_file(tmp_path / "r" / "a.json", "x", "LAYOUT", fetch="whatsup", root=tmp_path / "r")
    with pytest.raises(EvalDataError, match="Nothing is downloaded: place the official files there"):
        require_file(tmp_path / "a.json", "x", "LAYOUT")  # benchmarks the fetcher does not cover


def test_registry_is_a_decorator_and_keeps_order():
    names = list(benchmarks.BENCHMARKS)
    assert names[:7] == ["sugarcrepe", "aro", "valse", "winoground", "retrieval", "zeroshot", "synthetic"]
    assert names[7:12] == ["sugarcrepe_pp", "whatsup", "mmvp_vlm", "eqben", "spec"]
    assert set(benchmarks.LAYOUTS) == set(names) and benchmarks.FETCH["spec"] == "spec"
    try:
        @benchmarks.register("user_bench", "<root>/x.json", fetch=None)
        def run(scorer, root, options):
            return []
        assert benchmarks.BENCHMARKS["user_bench"] is run and "user_bench" not in benchmarks.FETCH
    finally:
        benchmarks.BENCHMARKS.pop("user_bench", None)
        benchmarks.LAYOUTS.pop("user_bench", None)


def _data(root):
    write_sugarcrepe_pp(root / "sugarcrepe_pp", "swap_obj", SCPP)
    write_mmvp(root / "mmvp_vlm", MMVP)
    return root


def _args(*argv):
    return cli._parser().parse_args(["--model", "hardneg-tiny-ViT", "--quiet", *argv])


def test_benchmark_all_runs_what_is_present_and_names_the_rest(tmp_path):
    root = _data(tmp_path / "data")
    args = _args("--benchmark", "all", "--data-root", str(root))
    roots, missing = cli.resolve_benchmarks(args)
    assert list(roots) == ["sugarcrepe_pp", "mmvp_vlm"]
    assert set(missing) == set(benchmarks.BENCHMARKS) - set(roots)
    assert missing["spec"] == (f"spec: no data at {root / 'spec'}; fetch it with "
                               f"`python -m open_clip_align.eval.fetch spec --dest {root}`")
    assert "the fetcher does not cover it" in missing["aro"]
    scores = {("1.jpg", "a cat on a mat"): .5, ("1.jpg", "a mat under a cat"): .4, ("1.jpg", "a mat on a cat"): .3,
              ("1.jpg", "a photo of left"): .9, ("2.jpg", "a photo of right"): .9}
    records = cli.evaluate(args, scorer=TableScorer(scores))
    assert [r["dataset"] for r in records] == ["sugarcrepe_pp", "mmvp_vlm"]
    text = cli.summary_text(records, missing, tmp_path / "summary.png")
    assert "| SugarCrepe++ ITT | 100.00 |" in text and "| MMVP-VLM | 100.00 |" in text
    assert "| SugarCrepe++ TOT | 0.00 |" in text  # TableScorer's unknown text pairs score 0: t(p1,p2) ties
    assert f"- whatsup: no data at {root / 'whatsup'}; fetch it with" in text
    assert (tmp_path / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_benchmark_all_refusals(tmp_path):
    root = _data(tmp_path / "data")
    with pytest.raises(EvalDataError, match="'all' runs every benchmark with data; give it alone"):
        cli.resolve_benchmarks(_args("--benchmark", "all", "spec", "--data-root", str(root)))
    with pytest.raises(EvalDataError, match="--eqben-annotation applies to --benchmark eqben, which has no data here"):
        cli.resolve_benchmarks(_args("--benchmark", "all", "--data-root", str(root), "--eqben-annotation", "a.json"))
    with pytest.raises(EvalDataError, match="--eqben-annotation applies to --benchmark eqben, which is not among"):
        cli.check_flags(_args("--benchmark", "spec", "--eqben-annotation", "a.json"))
    with pytest.raises(EvalDataError, match="needs --data-root DIR"):
        cli.resolve_benchmarks(_args("--benchmark", "all"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalDataError, match=r"no benchmark folder under .*fetch NAME --dest"):
        cli.resolve_benchmarks(_args("--benchmark", "all", "--data-root", str(tmp_path / "empty")))
    with pytest.raises(EvalDataError, match="--data-root spec=.*nowhere: not a directory"):
        cli.resolve_benchmarks(_args("--benchmark", "all", "--data-root", str(root), f"spec={tmp_path / 'nowhere'}"))


def test_cli_main_all_with_a_real_model_writes_records_summary_and_heatmap(tmp_path, capsys):
    root = _data(tmp_path / "data")
    out, png = tmp_path / "r.json", tmp_path / "s.png"
    cli.main(["--model", "hardneg-tiny-ViT", "--benchmark", "all", "--data-root", str(root), "--out", str(out),
              "--summary-png", str(png), "--quiet"])
    stdout = capsys.readouterr().out
    records = json.loads(out.read_text())
    assert [r["dataset"] for r in records] == ["sugarcrepe_pp", "mmvp_vlm"]
    assert records[0]["headline"] == {"SugarCrepe++ ITT": "micro/itt", "SugarCrepe++ TOT": "micro/tot"}
    assert isinstance(records[0]["metrics"]["micro"]["tot"], float)  # the real scorer has text-text cosines
    assert "## Summary: headline metrics" in stdout and "| SugarCrepe++ TOT |" in stdout
    assert "fetch it with `python -m open_clip_align.eval.fetch bivlc" in stdout
    assert png.read_bytes()[:4] == b"\x89PNG"


def _record(model, dataset, metrics, headline=None):
    return report.result_record(dataset, model, None, "compositionality", metrics, {}, headline=headline)


def test_summary_labels_fallbacks_and_compare_of_several_models(tmp_path, capsys):
    a = [_record("clip", "sugarcrepe_pp", {"micro": {"itt": 40.0, "tot": 50.0}},
                 {"SugarCrepe++ ITT": "micro/itt", "SugarCrepe++ TOT": "micro/tot"}),
         _record("clip", "x/one", {"acc": 10.0}, {"acc": "acc"}),
         _record("clip", "x/two", {"acc": 20.0}, {"acc": "acc"}),
         _record("clip", "old", {"n_items": 4, "top1": 70.0, "n_classes": 3})]  # a record from before headlines
    b = [_record("degla", "sugarcrepe_pp", {"micro": {"itt": 60.0, "tot": None}},
                 {"SugarCrepe++ ITT": "micro/itt", "SugarCrepe++ TOT": "micro/tot"})]
    rows = report.summary([a, b])
    assert rows == [("SugarCrepe++ ITT", [40.0, 60.0]), ("SugarCrepe++ TOT", [50.0, None]),
                    ("x/one acc", [10.0, None]), ("x/two acc", [20.0, None]), ("top1", [70.0, None])]
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    report.write_results(one, a + b)  # one file, two models: two columns
    report.write_results(two, [_record("negclip", "sugarcrepe_pp", {"micro": {"itt": 55.0, "tot": 45.0}},
                                       {"SugarCrepe++ ITT": "micro/itt", "SugarCrepe++ TOT": "micro/tot"})])
    cli.main(["--compare", str(one), str(two), "--summary-png", str(tmp_path / "h.png")])
    stdout = capsys.readouterr().out
    assert "| dataset/metric | clip | degla | negclip |" in stdout
    assert "| headline metric | clip | degla | negclip |" in stdout
    assert "| SugarCrepe++ TOT | 50.00 | – | 45.00 |" in stdout
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
