//! Every library scheme against a direct f64 statement of its formula (`docs/architecture.md`, section 4):
//! load the RON file, lower it at a step, evaluate on the CPU on random inputs,
//! compare (f32: relative error ≤ 1e-6; f16/bf16: rounding of the f64 result + 1 ulp).

mod numerics;

use cfg_core::expr::{Expr, Policy};
use cfg_core::lower::Overrides;
use cfg_core::schedule::{ChunkTimes, StepContext};
use cfg_core::state::GuidanceState;
use cfg_core::{DType, Shape, Tensor};
use numerics::fdg::{fdg_direct, Level};
use numerics::{apg_reference, cfg, check, config, dot, library, norm, scale_groups, set_apg, std, Case, Group, Rng};
use proptest::prelude::*;

/// A random [B, T, D] shape with small sizes, a dtype and a seed for the values.
fn inputs() -> impl Strategy<Value = (Shape, DType, u64)> {
    (1usize..=3, 1usize..=6, 2usize..=8, 0usize..3, any::<u64>())
        .prop_map(|(b, t, d, k, seed)| (Shape::new([b, t, d]), DType::ALL[k], seed))
}

/// Evaluates `policy` at one step with fresh state; returns (output, result) pairs.
fn step(policy: &Policy, case: &Case, ctx: StepContext, overrides: &Overrides) -> Vec<(String, Tensor)> {
    let mut state = GuidanceState::new();
    state.start();
    case.run(policy, &ctx, &mut state, overrides).into_iter().map(|(name, out, _)| (name, out)).collect()
}

fn expect(out: &Tensor, reference: &[f64], what: &str) -> Result<(), TestCaseError> {
    check(out, reference).map_err(|e| TestCaseError::fail(format!("{what}: {e}")))
}

fn overrides(pairs: &[(&str, f64)]) -> Overrides {
    pairs.iter().fold(Overrides::none(), |o, (name, v)| o.with(name, *v))
}

proptest! {
    #![proptest_config(config(32))]

    #[test]
    fn cfg_is_u_plus_s_delta((shape, dtype, seed) in inputs(), s in 0.0f64..12.0) {
        let p = library("cfg");
        let case = Case::random(&p, dtype, shape, seed);
        let out = step(&p, &case, StepContext::new(0, 50), &overrides(&[("scale", s)]));
        expect(&out[0].1, &cfg(&case.get("cond"), &case.get("uncond"), s), "cfg")?;
    }

    #[test]
    fn cfg_renorm_restores_the_token_norm((shape, dtype, seed) in inputs(), s in 0.5f64..10.0) {
        let p = library("cfg_renorm");
        let case = Case::random(&p, dtype, shape.clone(), seed);
        let out = step(&p, &case, StepContext::new(0, 50), &overrides(&[("scale", s)]));
        let c = case.get("cond");
        let g = cfg(&c, &case.get("uncond"), s);
        let reference = scale_groups(&g, &shape, Group::Token, |idx| norm(&c, idx) / norm(&g, idx));
        expect(&out[0].1, &reference, "cfg_renorm")?;
    }

    #[test]
    fn cfg_renorm_clamped_never_grows_the_token_norm((shape, dtype, seed) in inputs(), s in 0.5f64..10.0) {
        let p = library("cfg_renorm_clamped");
        let case = Case::random(&p, dtype, shape.clone(), seed);
        let out = step(&p, &case, StepContext::new(0, 50), &overrides(&[("scale", s)]));
        let c = case.get("cond");
        let g = cfg(&c, &case.get("uncond"), s);
        let reference =
            scale_groups(&g, &shape, Group::Token, |idx| (norm(&c, idx) / (norm(&g, idx) + 1e-8)).clamp(0.0, 1.0));
        expect(&out[0].1, &reference, "cfg_renorm_clamped")?;
    }

    #[test]
    fn norm_cap_caps_the_tensor_norm((shape, dtype, seed) in inputs(), s in 0.0f64..6.0) {
        let p = library("norm_cap");
        let case = Case::random(&p, dtype, shape.clone(), seed);
        let out = step(&p, &case, StepContext::new(0, 50), &overrides(&[("scale", s)]));
        let (c, u) = (case.get("cond"), case.get("uncond"));
        // Z-Image's original formulation: c + s·(c − u).
        let g: Vec<f64> = c.iter().zip(&u).map(|(c, u)| c + s * (c - u)).collect();
        let reference = scale_groups(&g, &shape, Group::Tensor, |idx| {
            let (nc, ng) = (norm(&c, idx), norm(&g, idx));
            if ng > nc { nc / ng } else { 1.0 }
        });
        expect(&out[0].1, &reference, "norm_cap")?;
    }

    #[test]
    fn std_rescale_uses_unbiased_std_per_sample((shape, dtype, seed) in inputs(), s in 0.5f64..10.0) {
        let p = library("std_rescale");
        let case = Case::random(&p, dtype, shape.clone(), seed);
        let out = step(&p, &case, StepContext::new(0, 50), &overrides(&[("scale", s)]));
        let c = case.get("cond");
        let g = cfg(&c, &case.get("uncond"), s);
        let reference = scale_groups(&g, &shape, Group::Sample, |idx| 0.7 * std(&c, idx) / std(&g, idx) + 0.3);
        expect(&out[0].1, &reference, "std_rescale")?;
    }

    #[test]
    fn magnitude_aware_damps_the_scale_per_sample(
        (shape, dtype, seed) in inputs(), s in 1.0f64..12.0, spread in 0.002f64..0.5,
    ) {
        let p = library("magnitude_aware");
        let mut case = Case::random(&p, dtype, shape.clone(), seed);
        // c close to u, so that exp(−α‖Δ‖/‖u‖) is neither 0 nor 1.
        let u = case.get("uncond");
        let mut rng = Rng::new(seed ^ 1);
        let c: Vec<f32> = u.iter().map(|&x| (x + spread * rng.uniform(-1.0, 1.0)) as f32).collect();
        case.set("cond", &c);
        let out = step(&p, &case, StepContext::new(0, 50), &overrides(&[("scale", s)]));
        let (c, u) = (case.get("cond"), case.get("uncond"));
        let delta: Vec<f64> = c.iter().zip(&u).map(|(c, u)| c - u).collect();
        let scaled = scale_groups(&delta, &shape, Group::Sample, |idx| {
            1.0 + (s - 1.0) * (-8.0 * norm(&delta, idx) / norm(&u, idx)).exp()
        });
        let reference: Vec<f64> = u.iter().zip(&scaled).map(|(u, d)| u + d).collect();
        expect(&out[0].1, &reference, "magnitude_aware")?;
    }

    #[test]
    fn skip_layer_adds_its_term_in_the_strict_window(
        (shape, dtype, seed) in inputs(), i in 0usize..28, s in 1.0f64..9.0, s2 in 0.0f64..4.0,
    ) {
        let p = library("skip_layer");
        let case = Case::random(&p, dtype, shape, seed);
        let out = step(&p, &case, StepContext::new(i, 28), &overrides(&[("scale", s), ("skip_scale", s2)]));
        let (c, u, skip) = (case.get("cond"), case.get("uncond"), case.get("skip"));
        // int(0.01·28) = 0 < i < int(0.2·28) = 5.
        let s2 = if 0 < i && i < 5 { s2 } else { 0.0 };
        let direct: Vec<f64> = (0..c.len()).map(|k| u[k] + s * (c[k] - u[k]) + s2 * (c[k] - skip[k])).collect();
        expect(&out[0].1, &direct, "skip_layer")?;
    }

    #[test]
    fn pag_adds_its_perturbed_term_in_the_strict_window(
        (shape, dtype, seed) in inputs(), i in 0usize..28, s in 1.0f64..9.0, s_pag in 0.0f64..4.0,
    ) {
        let p = library("pag");
        let case = Case::random(&p, dtype, shape, seed);
        let out = step(&p, &case, StepContext::new(i, 28), &overrides(&[("scale", s), ("pag_scale", s_pag)]));
        let (c, u, ptb) = (case.get("cond"), case.get("uncond"), case.get("perturbed"));
        // int(0.01·28) = 0 < i < int(0.2·28) = 5.
        let s_pag = if 0 < i && i < 5 { s_pag } else { 0.0 };
        let direct: Vec<f64> = (0..c.len()).map(|k| u[k] + s * (c[k] - u[k]) + s_pag * (c[k] - ptb[k])).collect();
        expect(&out[0].1, &direct, "pag")?;
    }

    #[test]
    fn pag_with_the_adaptive_scale_damps_its_term_as_t_falls(
        (shape, dtype, seed) in inputs(), i in 1usize..5, sigma in 0.0f64..=1.0, a in 0.0f64..0.02,
    ) {
        // pag.ron with diffusers' pipelines' adaptive PAG scale:
        // max(0, 3.0 − a·(1000 − t)), t = 1000·sigma.
        let text = cfg_policies::library::source("pag").expect("pag is in the library");
        let text = text.replace(
            r#""pag_scale": Const(2.8)"#,
            &format!(r#""pag_scale": TimestepDecay(start: 3.0, rate: {a:?})"#),
        );
        let p = cfg_policies::parse(&text, "pag_adaptive").unwrap_or_else(|e| panic!("{e}")).policy;
        let case = Case::random(&p, dtype, shape, seed);
        let ctx = StepContext { step: i, num_steps: 28, sigma: Some(sigma), chunks: cfg_core::schedule::ChunkTimes::NONE };
        let out = step(&p, &case, ctx, &Overrides::none());
        let (c, u, ptb) = (case.get("cond"), case.get("uncond"), case.get("perturbed"));
        let s_pag = (3.0 - a * (1000.0 - 1000.0 * sigma)).max(0.0);
        let direct: Vec<f64> = (0..c.len()).map(|k| u[k] + 7.5 * (c[k] - u[k]) + s_pag * (c[k] - ptb[k])).collect();
        expect(&out[0].1, &direct, "pag adaptive")?;
    }

    #[test]
    fn seg_adds_its_smoothed_term_after_the_first_step(
        (shape, dtype, seed) in inputs(), i in 0usize..28, s in 1.0f64..9.0, s_seg in 0.0f64..4.0,
    ) {
        let p = library("seg");
        let case = Case::random(&p, dtype, shape, seed);
        let out = step(&p, &case, StepContext::new(i, 28), &overrides(&[("scale", s), ("seg_scale", s_seg)]));
        let (c, u, blurred) = (case.get("cond"), case.get("uncond"), case.get("blurred"));
        // int(0.0·28) = 0 < i < int(1.0·28) = 28.
        let s_seg = if 0 < i && i < 28 { s_seg } else { 0.0 };
        let direct: Vec<f64> =
            (0..c.len()).map(|k| u[k] + s * (c[k] - u[k]) + s_seg * (c[k] - blurred[k])).collect();
        expect(&out[0].1, &direct, "seg")?;
    }

    #[test]
    fn ltx2_guides_each_output_then_rescales_the_whole_tensor(
        (shape, dtype, seed) in inputs(), scales in proptest::array::uniform6(0.0f64..8.0),
    ) {
        let p = library("ltx2");
        let case = Case::random(&p, dtype, shape.clone(), seed);
        let names = ["video_cfg", "video_stg", "video_modality", "audio_cfg", "audio_stg", "audio_modality"];
        let pairs: Vec<(&str, f64)> = names.iter().copied().zip(scales).collect();
        let out = step(&p, &case, StepContext::new(0, 40), &overrides(&pairs));
        let (c, u, ptb, iso) = (case.get("cond"), case.get("uncond"), case.get("perturbed"), case.get("isolated"));
        for (k, (name, got)) in out.iter().enumerate() {
            let (cfg_s, stg, m) = (scales[3 * k], scales[3 * k + 1], scales[3 * k + 2]);
            let g: Vec<f64> = (0..c.len())
                .map(|i| c[i] + (cfg_s - 1.0) * (c[i] - u[i]) + stg * (c[i] - ptb[i]) + (m - 1.0) * (c[i] - iso[i]))
                .collect();
            let reference = scale_groups(&g, &shape, Group::Tensor, |idx| 0.7 * std(&c, idx) / std(&g, idx) + 0.3);
            expect(got, &reference, name)?;
        }
        prop_assert_eq!(out.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), vec!["video", "audio"]);
    }

    #[test]
    fn pix2pix_separates_image_and_text_scales(
        (shape, dtype, seed) in inputs(), s_t in 0.0f64..10.0, s_i in 0.0f64..3.0,
    ) {
        let p = library("pix2pix");
        let case = Case::random(&p, dtype, shape, seed);
        let out = step(&p, &case, StepContext::new(0, 100), &overrides(&[("text_scale", s_t), ("image_scale", s_i)]));
        let (full, img, u) = (case.get("full"), case.get("image"), case.get("uncond"));
        let reference: Vec<f64> =
            (0..u.len()).map(|k| u[k] + s_i * (img[k] - u[k]) + s_t * (full[k] - img[k])).collect();
        expect(&out[0].1, &reference, "pix2pix")?;
    }

    #[test]
    fn bagel_nests_cfg_then_clamps_globally_inside_its_interval(
        (shape, dtype, seed) in inputs(), sigma in 0.01f64..1.0, s_t in 1.0f64..6.0, s_i in 1.0f64..3.0,
    ) {
        let p = library("bagel");
        let case = Case::random(&p, dtype, shape.clone(), seed);
        let ctx = StepContext { step: 0, num_steps: 50, sigma: Some(sigma), chunks: cfg_core::schedule::ChunkTimes::NONE };
        let out = step(&p, &case, ctx, &overrides(&[("text_scale", s_t), ("image_scale", s_i)]));
        let (v, v_txt, v_img) = (case.get("full"), case.get("no_text"), case.get("no_image"));
        let reference = if 0.4 < sigma && sigma <= 1.0 {
            let text = cfg(&v, &v_txt, s_t);
            let g = cfg(&text, &v_img, s_i);
            scale_groups(&g, &shape, Group::Tensor, |idx| (norm(&v, idx) / (norm(&g, idx) + 1e-8)).clamp(0.0, 1.0))
        } else {
            v.clone()
        };
        expect(&out[0].1, &reference, "bagel")?;
    }

    #[test]
    fn dreamid_adds_a_reference_term_per_modality(
        (shape, dtype, seed) in inputs(), scales in proptest::array::uniform4(0.0f64..5.0),
    ) {
        let p = library("dreamid");
        let case = Case::random(&p, dtype, shape, seed);
        let names = ["video_scale", "video_ref_scale", "audio_scale", "audio_ref_scale"];
        let pairs: Vec<(&str, f64)> = names.iter().copied().zip(scales).collect();
        let out = step(&p, &case, StepContext::new(0, 50), &overrides(&pairs));
        let (pos, neg) = (case.get("pos"), case.get("neg"));
        for (k, (name, got)) in out.iter().enumerate() {
            let no_ref = case.get(if k == 0 { "no_ref_image" } else { "no_ref_audio" });
            let (s, s_ref) = (scales[2 * k], scales[2 * k + 1]);
            let reference: Vec<f64> =
                (0..pos.len()).map(|i| neg[i] + s * (pos[i] - neg[i]) + s_ref * (pos[i] - no_ref[i])).collect();
            expect(got, &reference, name)?;
        }
    }

    #[test]
    fn autoguidance_guides_away_from_the_weak_model((shape, dtype, seed) in inputs(), w in 0.0f64..4.0) {
        let p = library("autoguidance");
        let case = Case::random(&p, dtype, shape, seed);
        let out = step(&p, &case, StepContext::new(0, 32), &overrides(&[("scale", w)]));
        expect(&out[0].1, &cfg(&case.get("main"), &case.get("weak"), w), "autoguidance")?;
    }

    #[test]
    fn guidance_interval_guides_only_inside_lo_hi(
        (shape, dtype, seed) in inputs(), sigma in 0.0f64..4.0, w in 0.0f64..4.0,
    ) {
        let p = library("guidance_interval");
        let case = Case::random(&p, dtype, shape, seed);
        let ctx = StepContext { step: 0, num_steps: 32, sigma: Some(sigma), chunks: cfg_core::schedule::ChunkTimes::NONE };
        let out = step(&p, &case, ctx, &overrides(&[("scale", w)]));
        let (c, u) = (case.get("cond"), case.get("uncond"));
        let reference = if 0.28 < sigma && sigma <= 2.9 { cfg(&c, &u, w) } else { c };
        expect(&out[0].1, &reference, "guidance_interval")?;
    }

    #[test]
    fn z_image_truncates_cfg_above_normalized_time((shape, dtype, seed) in inputs(), sigma in 0.0f64..=1.0) {
        let p = library("z_image");
        let case = Case::random(&p, dtype, shape, seed);
        let ctx = StepContext { step: 0, num_steps: 50, sigma: Some(sigma), chunks: cfg_core::schedule::ChunkTimes::NONE };
        let out = step(&p, &case, ctx, &Overrides::none());
        let (c, u) = (case.get("cond"), case.get("uncond"));
        // diffusers: t = 1 − sigma; scale 0 where t > 0.9; c + s·(c − u).
        let s = if 1.0 - sigma > 0.9 + 1e-12 { 0.0 } else if 1.0 - sigma < 0.9 - 1e-12 { 5.0 } else { return Ok(()) };
        let direct: Vec<f64> = (0..c.len()).map(|k| c[k] + s * (c[k] - u[k])).collect();
        expect(&out[0].1, &direct, "z_image")?;
        if s == 0.0 {
            prop_assert_eq!(out[0].1.bits(), case.branches["cond"].bits());
        }
    }

    #[test]
    fn cfg_pp_guides_x0_and_renoises_with_uncond((shape, dtype, seed) in inputs(), lambda in 0.0f64..2.0, i in 0usize..20) {
        let p = library("cfg_pp");
        let case = Case::random(&p, dtype, shape.clone(), seed);
        let o = overrides(&[("scale", lambda)]);
        let out = step(&p, &case, StepContext::new(i, 20), &o);
        let (c, u) = (case.get("cond"), case.get("uncond"));
        let direct: Vec<f64> = (0..c.len()).map(|k| u[k] + lambda * (c[k] - u[k])).collect();
        expect(&out[0].1, &direct, "cfg_pp")?;
        // The sampler's second tensor: the uncond prediction itself, bit for bit.
        let program = cfg_core::lower::lower(&p, &StepContext::new(i, 20), &GuidanceState::new(), &o).unwrap();
        let renoise = program.outputs[0].renoise_program().expect("cfg_pp declares renoise");
        let inputs: Vec<&Tensor> = renoise.branches.iter().map(|b| &case.branches[b]).collect();
        let r = cfg_core::cpu::evaluate(&renoise, &inputs, dtype, &shape, &mut GuidanceState::new()).unwrap();
        prop_assert_eq!(r.bits(), case.branches["uncond"].bits());
    }

    #[test]
    fn ideogram4_follows_its_per_step_list((shape, dtype, seed) in inputs(), i in 0usize..48) {
        let p = library("ideogram4");
        let case = Case::random(&p, dtype, shape, seed);
        let out = step(&p, &case, StepContext::new(i, 48), &Overrides::none());
        let g = if i < 45 { 7.0 } else { 3.0 };
        let (c, u) = (case.get("cond"), case.get("uncond"));
        let direct: Vec<f64> = (0..c.len()).map(|k| g * c[k] + (1.0 - g) * u[k]).collect();
        expect(&out[0].1, &direct, "ideogram4")?;
    }

    #[test]
    fn tcfg_projects_uncond_on_the_top_singular_direction(
        (shape, dtype, seed) in inputs(), s in 0.0f64..10.0, i in 0usize..50, stop in 0.05f64..1.0,
    ) {
        // diffusers' start/stop as a window with an else: TCFG on steps
        // int(0·50) ≤ i < int(stop·50), the cond prediction elsewhere.
        let mut p = library("tcfg");
        cfg_policies::params::set(&mut p, "Windowed.stop", stop).expect("a window stop");
        let case = Case::random(&p, dtype, shape.clone(), seed);
        let out = step(&p, &case, StepContext::new(i, 50), &overrides(&[("scale", s)]));
        let (c, u) = (case.get("cond"), case.get("uncond"));
        if i >= (stop * 50.0) as usize {
            prop_assert_eq!(out[0].1.bits(), case.branches["cond"].bits());
            return Ok(());
        }
        let mut direct = vec![0.0; c.len()];
        for (k, chunk) in direct.chunks_mut(shape.per_sample()).enumerate() {
            let idx: Vec<usize> = (k * chunk.len()..(k + 1) * chunk.len()).collect();
            // The SVD's definition: v₁ = Aᵀw/‖Aᵀw‖ for the top eigenvector w of AAᵀ.
            let (cc, cu, uu) = (dot(&c, &c, &idx), dot(&c, &u, &idx), dot(&u, &u, &idx));
            let (tr, det) = (cc + uu, cc * uu - cu * cu);
            let l1 = tr / 2.0 + (tr * tr / 4.0 - det).max(0.0).sqrt();
            let w = if (l1 - cc).abs() + cu.abs() > (l1 - uu).abs() + cu.abs() { (cu, l1 - cc) } else { (l1 - uu, cu) };
            let v: Vec<f64> = idx.iter().map(|&j| w.0 * c[j] + w.1 * u[j]).collect();
            let nv = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            let uv: f64 = if nv > 0.0 { idx.iter().zip(&v).map(|(&j, x)| u[j] * x / nv).sum() } else { 0.0 };
            for (o, (&j, x)) in chunk.iter_mut().zip(idx.iter().zip(&v)) {
                let up = if nv > 0.0 { uv * x / nv } else { 0.0 };
                *o = up + s * (c[j] - up);
            }
        }
        expect(&out[0].1, &direct, "tcfg")?;
    }

    #[test]
    fn perp_neg_removes_the_negatives_part_along_the_positive(
        (shape, dtype, seed) in inputs(), s in 0.0f64..10.0, sn in 0.0f64..2.0, whole in any::<bool>(),
    ) {
        let mut p = library("perp_neg");
        let group = if whole { Group::Tensor } else { Group::Sample };
        if whole {
            // ComfyUI's own reduction: the whole batch.
            let Expr::PerpNeg { over, .. } = &mut p.outputs.0[0].1.guidance else { panic!("a PerpNeg") };
            *over = cfg_core::reduce::Reduce::Tensor;
        }
        let case = Case::random(&p, dtype, shape.clone(), seed);
        let out = step(&p, &case, StepContext::new(0, 20), &overrides(&[("scale", s), ("neg_scale", sn)]));
        let (pos, neg, e) = (case.get("pos"), case.get("neg"), case.get("empty"));
        let pd: Vec<f64> = pos.iter().zip(&e).map(|(p, e)| p - e).collect();
        let nd: Vec<f64> = neg.iter().zip(&e).map(|(n, e)| n - e).collect();
        // perp = N − (⟨N,P⟩/‖P‖²)·P: k per group, then N − k·P.
        let k = scale_groups(&vec![1.0; pd.len()], &shape, group, |idx| dot(&nd, &pd, idx) / dot(&pd, &pd, idx));
        let direct: Vec<f64> =
            (0..pd.len()).map(|i| e[i] + s * (pd[i] - sn * (nd[i] - k[i] * pd[i]))).collect();
        expect(&out[0].1, &direct, "perp_neg")?;
    }

    #[test]
    fn cfg_norm_clamps_the_channel_norm_of_bchw_latents(
        (b, c, h, w) in (1usize..=2, 1usize..=5, 1usize..=3, 1usize..=4),
        k in 0usize..3, seed in any::<u64>(), s in 0.5f64..10.0,
    ) {
        // A [B, C, H, W] latent: norms over C (torch.norm(dim=1)), per (b, h, w).
        let (shape, dtype) = (Shape::new([b, c, h, w]), DType::ALL[k]);
        let p = library("cfg_norm");
        let case = Case::random(&p, dtype, shape.clone(), seed);
        let out = step(&p, &case, StepContext::new(0, 20), &overrides(&[("scale", s)]));
        let (cond, uncond) = (case.get("cond"), case.get("uncond"));
        let g = cfg(&cond, &uncond, s);
        let mut direct = g.clone();
        for (bi, hi, wi) in (0..b).flat_map(|bi| (0..h).flat_map(move |hi| (0..w).map(move |wi| (bi, hi, wi)))) {
            let idx: Vec<usize> = (0..c).map(|ci| ((bi * c + ci) * h + hi) * w + wi).collect();
            let f = (norm(&cond, &idx) / (norm(&g, &idx) + 1e-8)).clamp(0.0, 1.0);
            for &i in &idx {
                direct[i] = g[i] * f;
            }
        }
        expect(&out[0].1, &direct, "cfg_norm")?;
    }

    #[test]
    fn fdg_guides_each_pyramid_level_with_its_own_scale(
        (b, c, h, w) in (1usize..=2, 1usize..=3, 2usize..=5, 2usize..=5),
        k in 0usize..3, seed in any::<u64>(), high in 0.0f64..12.0, low in 0.0f64..8.0,
    ) {
        // The library file: [B, C, H, W], two levels (10, 5 by default), both always on.
        let (shape, dtype) = (Shape::new([b, c, 2 * h, 2 * w]), DType::ALL[k]);
        let p = library("fdg");
        let case = Case::random(&p, dtype, shape.clone(), seed);
        let out = step(&p, &case, StepContext::new(0, 50), &overrides(&[("high", high), ("low", low)]));
        let lv = |scale| Level { on: true, scale, parallel: 1.0, rescale: 0.0 };
        let direct = fdg_direct(&case.get("cond"), &case.get("uncond"), [b, c, 2 * h, 2 * w], &[lv(high), lv(low)]);
        expect(&out[0].1, &direct, "fdg")?;
    }

    #[test]
    fn fdg_weights_parallel_parts_rescales_and_windows_each_level(
        (b, c, h, w) in (1usize..=2, 1usize..=3, 2usize..=4, 2usize..=4),
        k in 0usize..3, seed in any::<u64>(), weight in 0.0f64..1.0, phi in 0.0f64..1.0, i in 0usize..10,
    ) {
        // Three levels: a parallel weight on the finest, a rescale on the middle one, the
        // coarsest on only for the first half of the run (Diffusers rule, 10 steps).
        let text = cfg_policies::library::source("fdg").expect("fdg is in the library");
        let text = text.replace(
            r#"(scale: "low", window: Progress(start: 0.0, stop: 1.0, rule: Diffusers)),"#,
            &format!(
                r#"(scale: "low", rescale: {phi:?}),
                   (scale: 3.0, window: Progress(start: 0.0, stop: 0.5, rule: Diffusers)),"#
            ),
        ).replace(r#"(scale: "high", "#, &format!(r#"(scale: "high", parallel_weight: {weight:?}, "#));
        let p = cfg_policies::parse(&text, "fdg3").expect("the edited policy loads").policy;
        let (dims, shape, dtype) = ([b, c, 4 * h, 4 * w], Shape::new([b, c, 4 * h, 4 * w]), DType::ALL[k]);
        let case = Case::random(&p, dtype, shape, seed);
        let out = step(&p, &case, StepContext::new(i, 10), &Overrides::none());
        let levels = [
            Level { on: true, scale: 10.0, parallel: weight, rescale: 0.0 },
            Level { on: true, scale: 5.0, parallel: 1.0, rescale: phi },
            Level { on: i < 5, scale: 3.0, parallel: 1.0, rescale: 0.0 },
        ];
        let direct = fdg_direct(&case.get("cond"), &case.get("uncond"), dims, &levels);
        expect(&out[0].1, &direct, &format!("fdg, 3 levels, step {i}"))?;
    }

    #[test]
    fn magi1_guides_each_frame_chunk_with_the_scales_of_its_own_time(
        (b, c, chunks, last, hw) in (1usize..=2, 1usize..=3, 1usize..=4, 1usize..=6, 1usize..=3),
        k in 0usize..3, seed in any::<u64>(), raw in proptest::collection::vec(0.0f64..1.0, 4),
    ) {
        // [B, C, F, H, W] with F = 6·(chunks − 1) + last (the last chunk may be short),
        // each chunk at its own time; some times on the thresholds themselves.
        let frames = 6 * (chunks - 1) + last;
        let (shape, dtype) = (Shape::new([b, c, frames, hw, 2]), DType::ALL[k]);
        let p = library("magi1");
        let case = Case::random(&p, dtype, shape.clone(), seed);
        let th = [0.0, 0.0217, 0.1, 0.3, 0.999];
        let times: Vec<f64> = raw[..chunks].iter().enumerate()
            .map(|(i, &t)| if i == 1 { th[(t * 5.0) as usize % 5] } else { t })
            .collect();
        let ctx = StepContext { chunks: ChunkTimes::new(&times).expect("≤ 16 chunks"), ..StepContext::new(3, 64) };
        let out = step(&p, &case, ctx, &Overrides::none());
        let (cd, pre, u) = (case.get("cond"), case.get("prefix"), case.get("uncond"));
        let scales = |t: f64| {
            // MAGI-1's get_cfg_scale: searchsorted(cfg_t_range − 1e-7, t) − 1.
            let k = th.iter().filter(|&&x| x - 1e-7 < t).count() - 1;
            ([1.5, 1.5, 1.5, 1.0, 1.0][k], [7.5, 7.5, 7.5, 0.0, 0.0][k])
        };
        let per_frame = hw * 2;
        let direct: Vec<f64> = (0..shape.numel()).map(|i| {
            let frame = (i / per_frame) % frames;
            let (ps, ts) = scales(times[frame / 6]);
            u[i] + ps * (pre[i] - u[i]) + ts * (cd[i] - pre[i])
        }).collect();
        expect(&out[0].1, &direct, "magi1")?;
        // Without per-chunk times, every chunk is at t = 1 − sigma.
        let sigma = raw[3];
        let ctx = StepContext { sigma: Some(sigma), ..StepContext::new(3, 64) };
        let out = step(&p, &case, ctx, &Overrides::none());
        let (ps, ts) = scales(1.0 - sigma);
        let direct: Vec<f64> = (0..shape.numel()).map(|i| u[i] + ps * (pre[i] - u[i]) + ts * (cd[i] - pre[i])).collect();
        expect(&out[0].1, &direct, "magi1, one time")?;
    }

    #[test]
    fn world_model_guides_video_and_passes_action_through((shape, dtype, seed) in inputs(), s in 0.0f64..8.0) {
        let p = library("world_model");
        let case = Case::random(&p, dtype, shape, seed);
        let out = step(&p, &case, StepContext::new(0, 30), &overrides(&[("scale", s)]));
        expect(&out[0].1, &cfg(&case.get("cond"), &case.get("uncond"), s), "video")?;
        prop_assert_eq!(&out[1].0, "action");
        prop_assert_eq!(out[1].1.bits(), case.branches["cond"].bits());
    }
}

proptest! {
    #![proptest_config(config(16))]

    #[test]
    fn zero_star_is_zero_then_scales_uncond_by_alpha((shape, dtype, seed) in inputs(), s in 0.0f64..10.0) {
        let p = library("zero_star");
        let mut state = GuidanceState::new();
        state.start();
        for i in 0..4 {
            let case = Case::random(&p, dtype, shape.clone(), seed.wrapping_add(i as u64));
            let out = case.run(&p, &StepContext::new(i, 50), &mut state, &overrides(&[("scale", s)]));
            let (c, u) = (case.get("cond"), case.get("uncond"));
            let reference = if i < 1 {
                vec![0.0; c.len()]
            } else {
                let alpha = scale_groups(&vec![1.0; c.len()], &shape, Group::Sample, |idx| {
                    dot(&c, &u, idx) / (dot(&u, &u, idx) + 1e-8)
                });
                (0..c.len()).map(|k| alpha[k] * u[k] + s * (c[k] - alpha[k] * u[k])).collect()
            };
            expect(&out[0].1, &reference, &format!("zero_star step {i}"))?;
        }
    }

    #[test]
    fn apg_matches_diffusers_order_over_several_steps(
        (shape, dtype, seed) in inputs(),
        s in 1.0f64..10.0,
        momentum in -0.9f64..0.9,
        threshold in prop_oneof![Just(0.0), 0.5f64..20.0],
        eta in 0.0f64..1.0,
        library_defaults in any::<bool>(),
    ) {
        let mut p = library("apg");
        let (momentum, threshold, eta) = if library_defaults {
            (-0.5, 15.0, 0.0)
        } else {
            set_apg(&mut p, momentum, threshold, eta);
            (f64::from(momentum as f32), threshold, f64::from(eta as f32))
        };
        let mut state = GuidanceState::new();
        state.start();
        let mut running: Option<Vec<f64>> = None;
        for i in 0..4 {
            let case = Case::random(&p, dtype, shape.clone(), seed.wrapping_add(i as u64));
            let out = case.run(&p, &StepContext::new(i, 50), &mut state, &overrides(&[("scale", s)]));
            let (c, u) = (case.get("cond"), case.get("uncond"));
            let reference = apg_reference(&c, &u, &shape, s, momentum, threshold, eta, &mut running);
            expect(&out[0].1, &reference, &format!("apg step {i}"))?;
        }
    }

    #[test]
    fn apg_mix_is_cfg_then_apg_with_momentum_from_every_step(
        (shape, dtype, seed) in inputs(), s1 in 1.0f64..6.0, s2 in 1.0f64..12.0, first in 3usize..7,
    ) {
        // Steps `first`..first+4 of 50 cross the switch (APG from step 6 on); the
        // momentum starts at the first evaluated step, whatever its index.
        let p = library("apg_mix");
        let mut state = GuidanceState::new();
        state.start();
        let mut running: Option<Vec<f64>> = None;
        for i in first..first + 4 {
            let case = Case::random(&p, dtype, shape.clone(), seed.wrapping_add(i as u64));
            let o = overrides(&[("cfg_scale", s1), ("scale", s2)]);
            let out = case.run(&p, &StepContext::new(i, 50), &mut state, &o);
            let (c, u) = (case.get("cond"), case.get("uncond"));
            let reference = if i <= 5 {
                // diffusers' update_momentum_buffer: r ← Δ + β·r, then plain CFG.
                let d: Vec<f64> = c.iter().zip(&u).map(|(c, u)| c - u).collect();
                running = Some(match running.take() {
                    Some(r) => d.iter().zip(&r).map(|(d, r)| d + (-0.5) * r).collect(),
                    None => d,
                });
                cfg(&c, &u, s1)
            } else {
                apg_reference(&c, &u, &shape, s2, -0.5, 10.0, 0.0, &mut running)
            };
            expect(&out[0].1, &reference, &format!("apg_mix step {i}"))?;
        }
    }

    #[test]
    fn adaptive_drops_uncond_for_good_once_cos_passes_gamma((shape, dtype, seed) in inputs(), s in 0.0f64..10.0) {
        let p = library("adaptive");
        let mut state = GuidanceState::new();
        state.start();
        for i in 0..5 {
            let mut case = Case::random(&p, dtype, shape.clone(), seed.wrapping_add(i as u64));
            if i >= 2 {
                // From step 2 on, u ≈ c: cos(c, u) ≈ 1 > 0.99.
                let mut rng = Rng::new(seed ^ i as u64);
                let u: Vec<f32> = case.get("cond").iter().map(|&x| (x + 1e-3 * rng.uniform(-1.0, 1.0)) as f32).collect();
                case.set("uncond", &u);
            }
            let out = case.run(&p, &StepContext::new(i, 50), &mut state, &overrides(&[("scale", s)]));
            let (c, u) = (case.get("cond"), case.get("uncond"));
            let (_, got, branches) = &out[0];
            if i <= 2 {
                // The latch is decided after the step that crosses γ.
                expect(got, &cfg(&c, &u, s), &format!("adaptive step {i}"))?;
                prop_assert_eq!(branches, &vec!["cond".to_string(), "uncond".to_string()]);
            } else {
                prop_assert_eq!(branches, &vec!["cond".to_string()]);
                prop_assert_eq!(got.bits(), case.branches["cond"].bits());
            }
        }
    }
}
