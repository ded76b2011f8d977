//! The known failure modes of the anchors (vllm-omni, sglang, diffusers) that
//! must be impossible here.

mod runtime_support;

use cfg_core::branch::BranchSpec;
use cfg_core::lower::{lower, Overrides};
use cfg_core::schedule::StepContext;
use cfg_core::state::GuidanceState;
use cfg_runtime::scheduler::Sampler;
use cfg_runtime::{plan_step, Call, Collective, Mode, Model, ModelError, OutputInfo, SampleOptions};
use runtime_support::*;

fn opts(steps: usize) -> SampleOptions {
    SampleOptions { steps, sampler: Sampler::default(), seed: 3, fingerprint_every: 1, ..SampleOptions::default() }
}

#[test]
fn more_ranks_than_branches_leaves_idle_ranks_that_join_and_agree() {
    let policy = policy("cfg");
    let model = small_tokens(&policy);
    let one = hex(&run_ok(&model, &policy, 1, &opts(6))[0].fingerprint());
    let ranks = run_ok(&model, &policy, 5, &opts(6));
    let plan = &ranks[0].reports[0].plan;
    assert_eq!(plan.active, ["cond", "uncond"]);
    assert_eq!(plan.idle, [2, 3, 4]);
    assert!(plan.groups[3].is_empty());
    for s in &ranks {
        assert_eq!(hex(&s.fingerprint()), one);
    }
}

#[test]
fn fewer_ranks_than_branches_batches_several_branches_per_rank() {
    let policy = policy("pix2pix");
    let model = small_tokens(&policy);
    let ranks = run_ok(&model, &policy, 2, &opts(4));
    let plan = &ranks[1].reports[0].plan;
    assert_eq!(plan.active.len(), 3);
    // Three plain branches on two ranks: one rank makes a single batched call of two.
    let sizes: Vec<Vec<usize>> = plan.groups.iter().map(|g| g.iter().map(Vec::len).collect()).collect();
    assert_eq!(sizes, vec![vec![2], vec![1]]);
    assert!(plan.idle.is_empty());
    let one = hex(&run_ok(&model, &policy, 1, &opts(4))[0].fingerprint());
    assert!(ranks.iter().all(|s| hex(&s.fingerprint()) == one));
}

#[test]
fn branches_that_cannot_share_a_forward_get_their_own_call() {
    let policy = policy("ltx2");
    let model = small_tokens(&policy);
    let ranks = run_ok(&model, &policy, 1, &opts(2));
    let plan = &ranks[0].reports[0].plan;
    // cond and uncond share a forward; the perturbed and isolated ones do not.
    let mut sizes: Vec<usize> = plan.groups[0].iter().map(Vec::len).collect();
    sizes.sort();
    assert_eq!(sizes, [1, 1, 2]);
}

#[test]
fn a_windowed_branch_drops_out_of_the_plan_mid_sampling() {
    let policy = policy("skip_layer");
    let model = small_tokens(&policy);
    let steps = 20;
    for world in [1, 2, 3] {
        let ranks = run_ok(&model, &policy, world, &opts(steps));
        let on: Vec<usize> =
            (0..steps).filter(|&i| ranks[0].reports[i].plan.active.iter().any(|b| b == "skip")).collect();
        // DiffusersStrict window 0.01..0.2 of 20 steps: int(0.2) = 0 < i < int(4.0) = 4.
        assert_eq!(on, [1, 2, 3]);
        let off = &ranks[0].reports[10].plan;
        assert_eq!(off.skipped, ["skip"]);
        assert_eq!(off.calls(), 2);
        for s in &ranks[1..] {
            for (a, b) in s.reports.iter().zip(&ranks[0].reports) {
                assert_eq!(a.plan, b.plan);
            }
        }
    }
}

#[test]
fn adaptive_guidance_drops_uncond_on_every_rank_at_the_same_step() {
    let policy = policy("adaptive");
    let model = planar(&policy, 64);
    let steps = 24;
    let single = run_ok(&model, &policy, 1, &opts(steps)).remove(0);
    let dropped = single.reports.iter().position(|r| !r.plan.active.iter().any(|b| b == "uncond"));
    let dropped = dropped.expect("cos(cond, uncond) should pass 0.99 as the samples settle");
    assert!(dropped > 0);
    assert!(single.reports[dropped..].iter().all(|r| r.plan.active == ["cond"]), "the latch holds to the end");
    for world in [2, 3, 4] {
        let ranks = run_ok(&model, &policy, world, &opts(steps));
        for s in &ranks {
            let d = s.reports.iter().position(|r| !r.plan.active.iter().any(|b| b == "uncond"));
            assert_eq!(d, Some(dropped), "{world} ranks");
            assert_eq!(s.fingerprint(), single.fingerprint());
        }
    }
}

/// A model that reports branch costs.
struct Costly(cfg_gmm::GmmModel);

impl Model for Costly {
    fn outputs(&self) -> Vec<OutputInfo> {
        self.0.outputs()
    }
    fn cost(&self, name: &str, _: &BranchSpec) -> f64 {
        if name == "perturbed" {
            3.0
        } else {
            1.0
        }
    }
    fn predict(&self, call: &Call<'_>) -> Result<Vec<Vec<cfg_core::Tensor>>, ModelError> {
        self.0.predict(call)
    }
}

#[test]
fn assignment_is_cost_aware_and_deterministic() {
    let policy = policy("ltx2");
    let model = Costly(small_tokens(&policy));
    let ctx = StepContext { step: 0, num_steps: 10, sigma: Some(0.9), chunks: cfg_core::schedule::ChunkTimes::NONE };
    let program = lower(&policy, &ctx, &GuidanceState::new(), &Overrides::none()).unwrap();
    let outputs = model.outputs();
    let plan = plan_step(&policy, &program, &outputs, &model, 2, Mode::Deterministic);
    // The costly branch gets a rank of its own; the three others share the other.
    let perturbed = plan.active.iter().position(|b| b == "perturbed").unwrap();
    let r = plan.owner[perturbed];
    assert_eq!(plan.owner.iter().filter(|&&o| o == r).count(), 1, "{plan:?}");
    assert_eq!(plan, plan_step(&policy, &program, &outputs, &model, 2, Mode::Deterministic));
    // With equal costs, branch i goes to rank i mod M.
    let plain = small_tokens(&policy);
    let plan = plan_step(&policy, &program, &outputs, &plain, 3, Mode::Deterministic);
    assert_eq!(plan.owner, [0, 1, 2, 0]);
}

#[test]
fn a_nag_branch_costs_its_negative_context_in_the_plan() {
    // CFG on a NAG branch: the NAG branch counts 1 + extra_cost forwards.
    let text = r#"Policy(
        name: "nag_cfg",
        branches: {
            "cond": (prompt: Positive, modify: Nag(negative: Empty, extra_cost: 1.0)),
            "uncond": (prompt: Negative),
            "weak": (prompt: Positive, modify: Model("weak")),
        },
        outputs: { "sample": (space: V, guidance: Sum([
            Cfg(cond: Ref("cond"), uncond: Ref("uncond"), scale: 4.0),
            Scaled(scale: 1.0, term: Diff(Ref("cond"), Ref("weak"))),
        ])) },
    )"#;
    let policy = cfg_policies::parse(text, "nag_cfg.ron").unwrap().policy;
    let model = small_tokens(&policy);
    let nag = &policy.branches.get("cond").unwrap();
    assert_eq!(model.cost("cond", nag), 2.0);
    let ctx = StepContext { step: 0, num_steps: 10, sigma: Some(0.9), chunks: cfg_core::schedule::ChunkTimes::NONE };
    let program = lower(&policy, &ctx, &GuidanceState::new(), &Overrides::none()).unwrap();
    let plan = plan_step(&policy, &program, &model.outputs(), &model, 2, Mode::Deterministic);
    // Equal costs would put `cond` (first) with `weak` (third) on rank 0; its
    // double cost gives it a rank of its own.
    let rank_of = |b: &str| plan.owner[plan.active.iter().position(|a| a == b).unwrap()];
    assert_ne!(rank_of("cond"), rank_of("uncond"), "{plan:?}");
    assert_ne!(rank_of("cond"), rank_of("weak"), "{plan:?}");
}

#[test]
fn the_collective_is_chosen_by_bytes() {
    let policy = policy("cfg");
    let ctx = StepContext { step: 0, num_steps: 10, sigma: Some(0.9), chunks: cfg_core::schedule::ChunkTimes::NONE };
    let program = lower(&policy, &ctx, &GuidanceState::new(), &Overrides::none()).unwrap();
    let names: Vec<&str> = policy.outputs.names().collect();
    let f32_model = cfg_gmm::GmmModel::tokens(&names, 2, 8, 4, cfg_core::DType::F32);
    let bf16_model = cfg_gmm::GmmModel::tokens(&names, 2, 8, 4, cfg_core::DType::BF16);
    let n = 2 * 8 * 4;
    let plan = |m: &cfg_gmm::GmmModel, mode, world| plan_step(&policy, &program, &m.outputs(), m, world, mode);
    // f32: gather 2·4n bytes, all-reduce of one form 4n bytes.
    let p = plan(&f32_model, Mode::Fast, 2);
    assert_eq!((p.gather_bytes, p.reduce_bytes, p.collective), (8 * n, 4 * n, Collective::AllReduce));
    assert_eq!(plan(&f32_model, Mode::Deterministic, 2).collective, Collective::Gather);
    // bf16: a tie (2·2n against 4n) keeps the gather.
    assert_eq!(plan(&bf16_model, Mode::Fast, 2).collective, Collective::Gather);
    assert_eq!(plan(&f32_model, Mode::Fast, 1).collective, Collective::None);
}

#[test]
fn zero_init_steps_call_no_model_and_output_zero() {
    let policy = policy("zero_star");
    let model = small_tokens(&policy);
    let ranks = run_ok(&model, &policy, 3, &opts(5));
    let first = &ranks[0].reports[0].plan;
    assert_eq!(first.calls(), 0);
    assert_eq!(first.collective, Collective::None);
    assert_eq!(ranks[0].reports[1].plan.calls(), 2);
}
