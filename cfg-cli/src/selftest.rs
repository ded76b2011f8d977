//! `cfg selftest`: runs every kernel path of a backend on random data for
//! every dtype and compares it with the CPU backend (`--device cuda`: f32
//! bit-identical, f16/bf16 within one ulp of the output dtype), or the CPU
//! backend with the f64 reference (`--device cpu`, so CI exercises the command).
//! Prints a table; exits 1 on any failure.

use crate::error::{CliError, CliResult};
use crate::programs::hand_built;
use cfg_core::layout::{Axis, Grid, Layout};
use cfg_core::program::{FdgBand, Form, Op, Program, Value};
use cfg_core::reduce::Reduce;
use cfg_core::reference::{evaluate_f64, relative_error, ReferenceState};
use cfg_core::state::GuidanceState;
use cfg_core::{DType, Shape, Tensor};
use cfg_runtime::backend::Backend;
use cfg_runtime::cuda::{run_nccl_threads, CudaBackend, ExecOptions, NcclOptions};
use cfg_runtime::Communicator;
use cfg_runtime::DeviceTensor;
use std::process::ExitCode;

/// Arguments of `cfg selftest`.
#[derive(clap::Args)]
pub struct Args {
    /// `cuda` (GPU against the CPU backend) or `cpu` (CPU against the f64 reference).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    ordinal: usize,
    /// `full` or `small`: small replaces the two large cases (4.2M elements,
    /// 655k tokens) by 131k elements and 16k tokens, which take the same
    /// kernel branches on a device with few multiprocessors (the CUDA
    /// stand-in with `CFG_EMU_SMS=2`) and run in seconds there.
    #[arg(long, default_value = "full", value_parser = ["full", "small"])]
    size: String,
}

/// One checked program on one shape.
struct Case {
    name: &'static str,
    program: Program,
    shape: Shape,
    /// Steps evaluated in a row (stateful operators).
    steps: usize,
}

fn form(terms: &[(usize, f32)]) -> Form {
    Form { terms: terms.to_vec() }
}

/// cfg over (cond = b0, uncond = b1) as form 0, cond as form 1.
fn cfg_forms() -> Vec<Form> {
    vec![form(&[(0, 4.5), (1, -3.5)]), form(&[(0, 1.0)])]
}

fn cases(small_run: bool) -> Vec<Case> {
    let small = Shape::new([2, 96, 64]);
    let wide = Shape::new([1, 6, 3072]);
    let g = Value::Form(0);
    let c = Value::Form(1);
    let renorm = |over, min, max| Op::Renorm { input: g, reference: c, over, eps: 1e-8, min, max };
    let cu = || vec![form(&[(0, 1.0)]), form(&[(1, 1.0)])];
    vec![
        Case {
            name: "combine 2-way",
            program: hand_built(2, vec![form(&[(0, 4.5), (1, -3.5)])], vec![]),
            shape: small.clone(),
            steps: 1,
        },
        Case {
            name: "combine 8-way",
            program: hand_built(8, vec![form(&(0..8).map(|b| (b, 0.5 - b as f32 * 0.25)).collect::<Vec<_>>())], vec![]),
            shape: small.clone(),
            steps: 1,
        },
        Case {
            name: "renorm token (warp)",
            program: hand_built(2, cfg_forms(), vec![renorm(Reduce::Token, None, None)]),
            shape: small.clone(),
            steps: 1,
        },
        Case {
            name: "renorm token clamped",
            program: hand_built(2, cfg_forms(), vec![renorm(Reduce::Token, Some(0.0), Some(1.0))]),
            shape: small.clone(),
            steps: 1,
        },
        Case {
            name: "renorm token (block)",
            program: hand_built(2, cfg_forms(), vec![renorm(Reduce::Token, None, None)]),
            shape: wide.clone(),
            steps: 1,
        },
        Case {
            name: "renorm tensor clamped",
            program: hand_built(2, cfg_forms(), vec![renorm(Reduce::Tensor, Some(0.0), Some(1.0))]),
            shape: small.clone(),
            steps: 1,
        },
        Case {
            name: "renorm channel (generic)",
            program: hand_built(2, cfg_forms(), vec![renorm(Reduce::Channel, None, Some(1.0))]),
            shape: small.clone(),
            steps: 1,
        },
        Case {
            name: "std rescale sample",
            program: hand_built(
                2,
                cfg_forms(),
                vec![Op::StdRescale { input: g, reference: c, phi: 0.7, over: Reduce::Sample }],
            ),
            shape: small.clone(),
            steps: 1,
        },
        Case {
            name: "std rescale tensor",
            program: hand_built(
                2,
                cfg_forms(),
                vec![Op::StdRescale { input: g, reference: c, phi: 0.7, over: Reduce::Tensor }],
            ),
            shape: Shape::new([2, 160, 128]),
            steps: 1,
        },
        Case {
            name: "norm cap",
            program: hand_built(2, cfg_forms(), vec![Op::NormCap { input: g, reference: c, ratio: 1.5 }]),
            shape: small.clone(),
            steps: 1,
        },
        Case {
            name: "mix + std rescale (generic)",
            program: hand_built(
                2,
                cfg_forms(),
                vec![
                    Op::Mix { terms: vec![(g, 0.5), (c, 0.5)] },
                    Op::StdRescale { input: Value::Op(0), reference: c, phi: 0.7, over: Reduce::Sample },
                ],
            ),
            shape: small.clone(),
            steps: 1,
        },
        Case {
            name: "zero-star",
            program: hand_built(2, cu(), vec![Op::ZeroStar { cond: g, uncond: c, scale: 4.0, original: false }]),
            shape: small.clone(),
            steps: 1,
        },
        Case {
            name: "magnitude-aware",
            program: hand_built(2, cu(), vec![Op::MagnitudeAware { cond: g, uncond: c, scale: 5.0, alpha: 2.0 }]),
            shape: small.clone(),
            steps: 1,
        },
        Case {
            name: "TCFG",
            program: hand_built(2, cu(), vec![Op::Tcfg { cond: g, uncond: c, scale: 5.0, original: false }]),
            shape: small.clone(),
            steps: 1,
        },
        Case {
            name: "APG (3 steps, momentum)",
            program: hand_built(
                2,
                cu(),
                vec![Op::Apg {
                    cond: g,
                    uncond: c,
                    scale: 5.0,
                    momentum: -0.5,
                    norm_threshold: 20.0,
                    eta: 0.0,
                    original: false,
                    slot: "apg".into(),
                }],
            ),
            shape: small.clone(),
            steps: 3,
        },
        Case {
            // APG-Mix's CFG phase advances the buffer its APG phase reads.
            name: "APG-Mix (3 steps)",
            program: hand_built(
                2,
                cu(),
                vec![
                    Op::MomentumCfg {
                        cond: g,
                        uncond: c,
                        scale: 3.5,
                        momentum: -0.5,
                        original: false,
                        slot: "mix".into(),
                    },
                    Op::Apg {
                        cond: g,
                        uncond: c,
                        scale: 10.0,
                        momentum: -0.5,
                        norm_threshold: 10.0,
                        eta: 0.0,
                        original: false,
                        slot: "mix".into(),
                    },
                    Op::Mix { terms: vec![(Value::Op(0), 0.5), (Value::Op(1), 0.5)] },
                ],
            ),
            shape: small,
            steps: 3,
        },
        Case {
            name: "reject (Perp-Neg) per sample",
            program: hand_built(2, cu(), vec![Op::Reject { input: g, direction: c, over: Reduce::Sample }]),
            shape: Shape::new([2, 96, 64]),
            steps: 1,
        },
        Case {
            // ComfyUI CFGNorm on [B, C, H, W]: norms over the channels.
            name: "renorm Axis(1), [B,C,H,W]",
            program: hand_built(2, cfg_forms(), vec![renorm(Reduce::Axis(1), Some(0.0), Some(1.0))]),
            shape: Shape::new([2, 4, 12, 10]),
            steps: 1,
        },
        Case {
            // FDG on [B, C, H, W]: 3 levels, one with a parallel weight, one
            // rescaled, one off (c_k).
            name: "FDG 3 levels, [B,C,H,W]",
            program: hand_built(2, cu(), vec![fdg(&[Axis::B, Axis::C, Axis::H, Axis::W], None)]),
            shape: Shape::new([2, 4, 32, 24]),
            steps: 1,
        },
        Case {
            name: "FDG 3 levels, [B,T,C] grid",
            program: hand_built(
                2,
                cu(),
                vec![fdg(&[Axis::B, Axis::T, Axis::C], Some(Grid { frames: None, height: 16, width: 12 }))],
            ),
            shape: Shape::new([2, 192, 8]),
            steps: 1,
        },
        Case {
            // MAGI-1: three chunks of 2 frames at their own times, [B, C, F, H, W].
            name: "chunked (MAGI-1), 3 chunks",
            program: hand_built(
                3,
                vec![form(&[(0, 1.0)]), form(&[(1, 1.0)]), form(&[(2, 1.0)])],
                vec![Op::Chunked {
                    cond: Value::Form(0),
                    prefix: Value::Form(1),
                    uncond: Value::Form(2),
                    weights: vec![[7.5, -6.0, -0.5], [3.0, -2.0, 0.0], [0.0, 1.0, 0.0]],
                    chunk_frames: 2,
                    layout: Layout { axes: vec![Axis::B, Axis::C, Axis::F, Axis::H, Axis::W], grid: None },
                }],
            ),
            shape: Shape::new([2, 4, 6, 8, 12]),
            steps: 1,
        },
        Case {
            name: "combine 3-way, odd size",
            program: hand_built(3, vec![form(&[(0, 2.5), (1, -1.0), (2, -0.5)])], vec![]),
            shape: Shape::new([1, 7, 37]),
            steps: 1,
        },
        Case {
            // 4.2M elements: 512 segment blocks, more than an H100 holds at
            // once (2 per SM at 98 registers), so two passes even when allowed one.
            name: "std rescale tensor, large",
            program: hand_built(
                2,
                cfg_forms(),
                vec![Op::StdRescale { input: g, reference: c, phi: 0.7, over: Reduce::Tensor }],
            ),
            shape: if small_run { Shape::new([1, 16, 8192]) } else { Shape::new([1, 1024, 4096]) },
            steps: 1,
        },
        Case {
            // More token groups than one grid-stride launch has threads.
            name: "mix + renorm, many tokens",
            program: hand_built(
                2,
                cfg_forms(),
                vec![
                    Op::Mix { terms: vec![(g, 0.5), (c, 0.5)] },
                    Op::Renorm {
                        input: Value::Op(0),
                        reference: c,
                        over: Reduce::Token,
                        eps: 1e-8,
                        min: None,
                        max: Some(1.0),
                    },
                ],
            ),
            shape: if small_run { Shape::new([1, 16_384, 8]) } else { Shape::new([1, 655_360, 8]) },
            steps: 1,
        },
    ]
}

/// FDG over cond `b0` and uncond `b1` with three bands under `axes`.
fn fdg(axes: &[Axis], grid: Option<Grid>) -> Op {
    let band = |scale, parallel, rescale| FdgBand { on: true, scale, parallel, rescale };
    Op::Fdg {
        cond: Value::Form(0),
        uncond: Value::Form(1),
        bands: vec![band(10.0, Some(0.5), 0.0), band(5.0, None, 0.7), FdgBand { on: false, ..band(3.0, None, 0.0) }],
        original: false,
        layout: Layout { axes: axes.to_vec(), grid },
    }
}

/// Whether a case's fused path has a one-pass (cooperative) and a two-pass form.
fn has_two_pass_form(case: &Case) -> bool {
    matches!(
        case.program.ops.as_slice(),
        [Op::StdRescale { .. } | Op::NormCap { .. } | Op::Renorm { over: Reduce::Sample | Reduce::Tensor, .. }]
    )
}

fn inputs(case: &Case, dtype: DType, step: usize) -> Vec<Tensor> {
    let n = case.shape.numel();
    (0..case.program.branches.len())
        .map(|b| {
            let v = cfg_runtime::philox::normal_vec(17, step as u32, b as u32, n);
            Tensor::from_f32(dtype, case.shape.clone(), &v)
        })
        .collect()
}

/// Largest difference in units of the dtype's ulp (at the reference value).
fn max_ulps(dtype: DType, got: &Tensor, want: &Tensor) -> f64 {
    let (a, b) = (got.to_f32(), want.to_f32());
    a.iter()
        .zip(&b)
        .map(|(&x, &y)| {
            if x.to_bits() == y.to_bits() {
                0.0
            } else if x.is_nan() || y.is_nan() {
                f64::INFINITY
            } else {
                (x as f64 - y as f64).abs() / dtype.ulp(y as f64)
            }
        })
        .fold(0.0, f64::max)
}

/// Runs `case` on `gpu` and on the CPU backend, step after step with their
/// own state: f32 must match bit for bit, f16/bf16 within one ulp.
fn compare_with_cpu(case: &Case, dtype: DType, gpu: &mut CudaBackend) -> Result<(String, bool), CliError> {
    let (mut s_cpu, mut s_gpu) = (GuidanceState::new(), GuidanceState::new());
    let (mut worst, mut same_bits) = (0.0f64, true);
    for step in 0..case.steps {
        let ins = inputs(case, dtype, step);
        let refs: Vec<&Tensor> = ins.iter().collect();
        let want = cfg_core::cpu::evaluate(&case.program, &refs, dtype, &case.shape, &mut s_cpu)?;
        let on_gpu = ins.iter().map(|t| gpu.upload(t.clone())).collect::<Result<Vec<_>, _>>()?;
        let gpu_refs: Vec<&DeviceTensor> = on_gpu.iter().collect();
        match gpu.evaluate(&case.program, &gpu_refs, dtype, &case.shape, &mut s_gpu).and_then(|t| gpu.download(&t)) {
            Ok(got) => {
                worst = worst.max(max_ulps(dtype, &got, &want));
                same_bits &= got.as_bytes() == want.as_bytes();
            }
            Err(e) => return Ok((e.to_string(), false)),
        }
    }
    Ok(match dtype {
        DType::F32 if same_bits => ("bit-identical".into(), true),
        DType::F32 => (format!("bits differ, max {worst} ulp"), false),
        _ => (format!("max {worst} ulp"), worst <= 1.0),
    })
}

/// NCCL with world size 1 on device `ordinal`: an all-reduce (NCCL's and the
/// fixed-order one) and an all-gather of known buffers, compared bit for bit
/// with what one rank must get back (its own data).
fn nccl_checks(ordinal: usize) -> Vec<(&'static str, String, bool)> {
    let values: Vec<f32> = (0..4099).map(|i| (i as f32 - 2049.5) * 0.37).collect();
    let bytes: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let run = |fixed_order_reduce| {
        let timeout = std::time::Duration::from_secs(60);
        let options = NcclOptions { timeout, init_timeout: timeout, fixed_order_reduce };
        let out = run_nccl_threads(&[ordinal], options, |comm| {
            let mut sum = values.clone();
            comm.all_reduce_sum(0, &mut sum)?;
            let gathered = comm.all_gather(1, &bytes, &[bytes.len()])?;
            Ok((sum, gathered))
        });
        match out {
            Ok(mut ranks) => ranks.remove(0).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    };
    let same_bits =
        |a: &[f32]| a.len() == values.len() && a.iter().zip(&values).all(|(x, y)| x.to_bits() == y.to_bits());
    let row = |name, ok: bool| (name, if ok { "bit-identical".to_string() } else { "wrong result".to_string() }, ok);
    let mut rows = Vec::new();
    match run(false) {
        Ok((sum, gathered)) => {
            rows.push(row("nccl all-reduce (world 1)", same_bits(&sum)));
            rows.push(row("nccl all-gather (world 1)", gathered == [bytes.clone()]));
        }
        Err(e) => {
            rows.push(("nccl all-reduce (world 1)", e.clone(), false));
            rows.push(("nccl all-gather (world 1)", e, false));
        }
    }
    match run(true) {
        Ok((sum, _)) => rows.push(row("nccl all-reduce fixed order", same_bits(&sum))),
        Err(e) => rows.push(("nccl all-reduce fixed order", e, false)),
    }
    rows
}

pub fn run(args: Args) -> CliResult {
    let mut rows = Vec::new();
    let mut failures = 0;
    let small = args.size == "small";
    match args.device.as_str() {
        "cuda" => {
            let one_pass = ExecOptions { cooperative: true, poison: true };
            let mut gpu = CudaBackend::new(args.ordinal)?.with_options(one_pass);
            let mut two_pass =
                CudaBackend::new(args.ordinal)?.with_options(ExecOptions { cooperative: false, ..one_pass });
            println!("device: {}", gpu.device().describe());
            for case in cases(small) {
                let mut runs = vec![(case.name.to_string(), &mut gpu)];
                if has_two_pass_form(&case) {
                    runs.push((format!("{} (2-pass)", case.name), &mut two_pass));
                }
                for (name, backend) in runs {
                    for dtype in DType::ALL {
                        let (measure, ok) = compare_with_cpu(&case, dtype, backend)?;
                        failures += usize::from(!ok);
                        rows.push((name.clone(), dtype, measure, ok));
                    }
                }
            }
            let dev = gpu.device();
            let words = cfg_runtime::cuda::philox_words(dev, 42, 3, 1, 4099)?;
            let ok = (0..4099).all(|i| {
                let x = cfg_runtime::philox::philox4x32_10([(i / 4) as u32, 0, 3, 1], [42, 0]);
                x[i % 4] == words[i]
            });
            failures += usize::from(!ok);
            rows.push(("philox words".into(), DType::F32, "bit-identical to the CPU".into(), ok));
            // End to end: the GMM kernel against the CPU model, then whole samples.
            let sample_checks = crate::selftest_sample::compare_predictions(dev).and_then(|first| {
                let mut all = vec![first];
                all.extend(crate::selftest_sample::compare_samples(&gpu.shared_device())?);
                Ok(all)
            });
            match sample_checks {
                Ok(checks) => {
                    for c in checks {
                        failures += usize::from(!c.ok);
                        rows.push(c.row());
                    }
                }
                Err(e) => {
                    failures += 1;
                    rows.push(("sample on the GPU".into(), DType::F32, e.0, false));
                }
            }
            for (name, measure, ok) in nccl_checks(args.ordinal) {
                failures += usize::from(!ok);
                rows.push((name.into(), DType::F32, measure, ok));
            }
        }
        "cpu" => {
            for case in cases(small) {
                for dtype in DType::ALL {
                    let (mut state, mut rstate) = (GuidanceState::new(), ReferenceState::new());
                    let mut worst = 0.0f64;
                    for step in 0..case.steps {
                        let ins = inputs(&case, dtype, step);
                        let refs: Vec<&Tensor> = ins.iter().collect();
                        let got = cfg_core::cpu::evaluate(&case.program, &refs, dtype, &case.shape, &mut state)?;
                        let want = evaluate_f64(&case.program, &refs, &case.shape, &mut rstate);
                        let got: Vec<f64> = got.to_f32().iter().map(|&x| x as f64).collect();
                        worst = worst.max(relative_error(&got, &want));
                    }
                    // Rounding to the dtype bounds the error by a few of its epsilons (APG amplifies).
                    let ok = worst <= 16.0 * dtype.ulp(1.0);
                    failures += usize::from(!ok);
                    rows.push((case.name.to_string(), dtype, format!("rel. error {worst:.2e}"), ok));
                }
            }
        }
        other => return Err(CliError(format!("unknown device `{other}`: expected cuda or cpu"))),
    }
    println!("{:<30} {:<5} {:<28} result", "kernel path", "dtype", "measure");
    for (name, dtype, measure, ok) in &rows {
        println!("{name:<30} {:<5} {measure:<28} {}", dtype.name(), if *ok { "ok" } else { "FAIL" });
    }
    println!("{} checks, {failures} failed", rows.len());
    Ok(if failures == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
