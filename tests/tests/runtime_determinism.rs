//! Deterministic mode: the final latents are bit-identical for every world
//! size and every library policy, and every rank holds the same latents after
//! every step.

mod runtime_support;

use cfg_runtime::scheduler::{Sampler, SamplerKind};
use cfg_runtime::{Mode, SampleOptions};
use runtime_support::*;

fn options(kind: SamplerKind, mode: Mode) -> SampleOptions {
    SampleOptions {
        steps: 10,
        sampler: Sampler::new(kind),
        seed: 11,
        mode,
        fingerprint_every: 1,
        ..SampleOptions::default()
    }
}

#[test]
fn every_policy_is_bit_identical_for_every_world_size() {
    let names = cfg_policies::library::names();
    assert!(!names.is_empty());
    for name in names {
        let policy = policy(name);
        let model = small_tokens(&policy);
        let opts = options(SamplerKind::Euler, Mode::Deterministic);
        let mut reference: Option<(String, Vec<[u8; 32]>)> = None;
        for world in WORLDS {
            let ranks = run_ok(&model, &policy, world, &opts);
            for (r, s) in ranks.iter().enumerate() {
                let steps: Vec<[u8; 32]> = s.reports.iter().map(|rep| rep.fingerprint).collect();
                let fp = hex(&s.fingerprint());
                match &reference {
                    None => reference = Some((fp, steps)),
                    Some((want, want_steps)) => {
                        assert_eq!(&fp, want, "{name}: rank {r} of {world} differs from 1 rank");
                        assert_eq!(&steps, want_steps, "{name}: rank {r} of {world}: per-step latents differ");
                    }
                }
            }
        }
    }
}

#[test]
fn stochastic_and_ddim_samplers_are_bit_identical_too() {
    for kind in [SamplerKind::Ancestral, SamplerKind::Ddim] {
        for name in ["cfg", "ltx2", "apg"] {
            let policy = policy(name);
            let model = small_tokens(&policy);
            let opts = options(kind, Mode::Deterministic);
            let want = hex(&run_ok(&model, &policy, 1, &opts)[0].fingerprint());
            for world in [2, 3, 5] {
                for s in run_ok(&model, &policy, world, &opts) {
                    assert_eq!(hex(&s.fingerprint()), want, "{name} {kind} on {world} ranks");
                }
            }
        }
    }
}

#[test]
fn fast_mode_ranks_agree_and_stay_close_to_deterministic() {
    for name in ["cfg", "ltx2", "pix2pix", "dreamid"] {
        let policy = policy(name);
        // f32 predictions, so that the all-reduce moves fewer bytes and is chosen.
        let names: Vec<&str> = policy.outputs.names().collect();
        let model = cfg_gmm::GmmModel::tokens(&names, 3, 4, 3, cfg_core::DType::F32);
        let exact = run_ok(&model, &policy, 1, &options(SamplerKind::Euler, Mode::Deterministic)).remove(0);
        for world in [2, 3, 4, 8] {
            // The fingerprint check every step already fails the run if ranks disagree.
            let ranks = run_ok(&model, &policy, world, &options(SamplerKind::Euler, Mode::Fast));
            let reduced = ranks[0].reports.iter().filter(|r| r.plan.collective == cfg_runtime::Collective::AllReduce);
            assert!(reduced.count() > 0, "{name} on {world} ranks never chose the all-reduce");
            for (o, (_, t)) in ranks[0].outputs.iter().enumerate() {
                let (a, b) = (t.to_f32(), exact.outputs[o].1.to_f32());
                let num: f64 = a.iter().zip(&b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
                let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
                // Only the f32 summation order differs: seen ≤ 7.3e-6 after a whole run.
                assert!((num / den).sqrt() < 1e-4, "{name} on {world} ranks: relative error {}", (num / den).sqrt());
            }
        }
    }
}

/// The video model with MAGI-1's staggered chunks: chunk k (of two) is at
/// time 1 − t + 0.15·k, so the two chunks take different scales at some steps.
struct Staggered(cfg_gmm::GmmModel);

impl cfg_runtime::Model for Staggered {
    fn outputs(&self) -> Vec<cfg_runtime::model::OutputInfo> {
        self.0.outputs()
    }

    fn chunk_times(&self, _step: usize, t: f64) -> cfg_core::schedule::ChunkTimes {
        cfg_core::schedule::ChunkTimes::new(&[1.0 - t + 0.15, 1.0 - t]).expect("two chunks")
    }

    fn predict(
        &self,
        call: &cfg_runtime::model::Call<'_>,
    ) -> Result<Vec<Vec<cfg_core::Tensor>>, cfg_runtime::ModelError> {
        self.0.predict(call)
    }
}

#[test]
fn magi1_chunks_at_their_own_times_are_bit_identical_for_every_world_size() {
    let policy = policy("magi1");
    let model = Staggered(small_tokens(&policy));
    let opts = options(SamplerKind::Euler, Mode::Deterministic);
    let want = hex(&run_ok(&model, &policy, 1, &opts)[0].fingerprint());
    // The chunks' own times change the result (the op path, not one form).
    let plain = hex(&run_ok(&small_tokens(&policy), &policy, 1, &opts)[0].fingerprint());
    assert_ne!(want, plain, "staggered chunk times made no difference");
    for world in WORLDS {
        for (r, s) in run_ok(&model, &policy, world, &opts).iter().enumerate() {
            assert_eq!(hex(&s.fingerprint()), want, "rank {r} of {world}");
        }
    }
}

/// The CFG++ policy (`renoise: Ref("uncond")`) with the policy's outputs
/// spaces replaced by `space`.
fn cfg_pp_in(space: cfg_core::expr::Space) -> cfg_core::expr::Policy {
    let mut p = policy("cfg_pp");
    for (_, o) in p.outputs.0.iter_mut() {
        o.space = space;
    }
    p
}

#[test]
fn cfg_pp_is_bit_identical_for_every_world_size_sampler_and_space() {
    use cfg_core::expr::Space;
    for space in [Space::X0, Space::Eps, Space::V] {
        let policy = cfg_pp_in(space);
        let model = small_tokens(&policy);
        // Without `renoise` the same guidance gives other latents: the sampler uses it.
        let mut plain = policy.clone();
        plain.outputs.0[0].1.renoise = None;
        for kind in [SamplerKind::Euler, SamplerKind::Ddim, SamplerKind::Ancestral] {
            let opts = options(kind, Mode::Deterministic);
            let want = hex(&run_ok(&model, &policy, 1, &opts)[0].fingerprint());
            let without = hex(&run_ok(&model, &plain, 1, &opts)[0].fingerprint());
            assert_ne!(want, without, "{space:?} {kind}: renoise made no difference");
            for world in 1..=4 {
                for (r, s) in run_ok(&model, &policy, world, &opts).iter().enumerate() {
                    assert_eq!(hex(&s.fingerprint()), want, "{space:?} {kind}: rank {r} of {world}");
                }
            }
        }
    }
}

#[test]
fn cfg_pp_fast_mode_ranks_agree_and_stay_close_to_deterministic() {
    // Four branches, two forms (the guided one and `renoise`): the all-reduce
    // moves fewer bytes than the gather, and the renoise rides on its forms.
    let mut policy = policy("dreamid");
    for (_, o) in policy.outputs.0.iter_mut() {
        o.renoise = Some(cfg_core::expr::Expr::Ref("neg".into()));
    }
    let names: Vec<&str> = policy.outputs.names().collect();
    // f32 predictions, so that the all-reduce is chosen; the renoise rides on its forms.
    let model = cfg_gmm::GmmModel::tokens(&names, 3, 4, 3, cfg_core::DType::F32);
    let exact = run_ok(&model, &policy, 1, &options(SamplerKind::Euler, Mode::Deterministic)).remove(0);
    for world in [2, 3, 4] {
        let ranks = run_ok(&model, &policy, world, &options(SamplerKind::Euler, Mode::Fast));
        let reduced = ranks[0].reports.iter().filter(|r| r.plan.collective == cfg_runtime::Collective::AllReduce);
        assert!(reduced.count() > 0, "dreamid + renoise on {world} ranks never chose the all-reduce");
        for (o, (_, t)) in ranks[0].outputs.iter().enumerate() {
            let (a, b) = (t.to_f32(), exact.outputs[o].1.to_f32());
            let num: f64 = a.iter().zip(&b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
            let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
            assert!((num / den).sqrt() < 1e-4, "{world} ranks, output {o}: relative error {}", (num / den).sqrt());
        }
    }
}
