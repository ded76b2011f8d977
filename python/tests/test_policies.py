"""Policies from Python: load, check, list, graph, plan."""

import pathlib

import pytest

import cfg_guidance as cg

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_list_holds_the_library():
    names = cg.list_policies()
    assert names == sorted(names)
    assert {"cfg", "apg", "ltx2", "zero_star", "skip_layer"} <= set(names)


def test_load_by_name_and_by_path_give_the_same_policy():
    by_name = cg.load("apg")
    by_path = cg.load(str(ROOT / "policies" / "apg.ron"))
    assert by_name.origin == "builtin:apg"
    assert by_path.origin.endswith("policies/apg.ron")
    assert by_name.text == by_path.text
    assert by_name.branches == ["cond", "uncond"]
    assert by_name.outputs == ["sample"]


def test_check_every_library_policy():
    for name in cg.list_policies():
        assert isinstance(cg.check(name), list)


def test_errors_carry_file_line_col(tmp_path):
    bad = tmp_path / "bad.ron"
    bad.write_text('Policy(\n    name: "x",\n    brnches: {},\n)\n')
    with pytest.raises(cg.PolicyError) as e:
        cg.check(str(bad))
    assert str(e.value).startswith(f"{bad}:3:5: ")
    assert "brnches" in str(e.value)
    assert (e.value.origin, e.value.line, e.value.col) == (str(bad), 3, 5)
    assert isinstance(e.value, ValueError)


def test_the_bad_corpus_errors_with_positions():
    corpus = sorted((ROOT / "tests" / "corpus" / "bad").glob("*.ron"))
    assert corpus
    for path in corpus:
        with pytest.raises(cg.PolicyError) as e:
            cg.load(str(path))
        assert e.value.line is not None and e.value.col is not None, path
        assert str(e.value).startswith(f"{path}:{e.value.line}:{e.value.col}: "), str(e.value)


def test_unknown_names_and_missing_files():
    with pytest.raises(cg.PolicyError, match="not a built-in policy"):
        cg.load("no_such_policy")
    with pytest.raises(cg.PolicyError, match="cannot read"):
        cg.load("./missing.ron")


def test_from_text_and_params():
    p = cg.Policy.from_text(cg.load("cfg").text.replace("7.5", "3.0"), "mine.ron")
    assert dict(p.params())["scale"] == 3.0
    assert dict(p.with_params({"scale": 5.0}).params())["scale"] == 5.0
    with pytest.raises(ValueError):
        p.with_params({"no.such.path": 1.0})


def test_graph_is_dot():
    dot = cg.load("ltx2").graph()
    assert dot.startswith("digraph")
    for b in ["cond", "uncond", "perturbed", "isolated"]:
        assert b in dot
    assert "cond" in cg.load("cfg").graph("text")


def test_plan_spreads_branches_and_leaves_idle_ranks():
    policy = cg.load("ltx2")
    for world in range(1, 7):
        plans = policy.plan(world, num_steps=4, mode="deterministic")
        assert len(plans) == 4
        for p in plans:
            assert p.world_size == world
            assert sorted(b for r in p.ranks for b in r) == sorted(p.active) == sorted(policy.branches)
            assert p.idle == [r for r in range(world) if not p.ranks[r]]
            assert len(p.idle) == max(0, world - 4)
            assert p.collective == ("none" if world == 1 else "all-gather")
            assert p.bytes == (0 if world == 1 else p.gather_bytes)
            for b, r in p.owner.items():
                assert b in p.branches_for(r)


def test_fast_mode_all_reduces_when_it_moves_fewer_bytes():
    (p,) = cg.load("ltx2").plan(4, sigmas=[0.5], dtype="float32", mode="fast")
    assert p.collective == "all-reduce"
    assert p.reduce_bytes < p.gather_bytes


def test_a_guider_plan_gives_the_gather_layout():
    g = cg.Guider("ltx2", world_size=3, rank=1)
    shapes = {"video": [1, 64, 16], "audio": [1, 32, 8]}
    p = g.plan(0, 10, None, shapes, "bfloat16")
    assert p.branches_for(1) and p.idle == []
    for r in range(3):
        parts = p.payload[r]
        assert [b for b, _ in parts] == [b for b in p.ranks[r] for _ in g.outputs]
        assert sum(2 * (1024 if o == "video" else 256) for _, o in parts) == p.gather_sizes[r]
    assert g.forms_len(0, 10, None, shapes) * 4 == p.reduce_bytes
