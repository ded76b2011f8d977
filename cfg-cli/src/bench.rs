//! `cfg bench --device cuda`: per kernel path and size (bf16), the median time
//! (CUDA events, GPU time only), minimum bytes moved, achieved GB/s, and the
//! fraction of the copy bandwidth measured in the same run (the faster of the
//! driver's memcpy and a copy kernel). `--json` prints one JSON document.

use crate::error::{CliError, CliResult};
use crate::programs::hand_built;
use cfg_core::program::{Form, Op, Program, Value};
use cfg_core::reduce::Reduce;
use cfg_core::state::GuidanceState;
use cfg_core::{DType, Shape, Tensor};
use cfg_runtime::cuda::launch::{copy_u16, rescale_passes};
use cfg_runtime::cuda::{evaluate, Buffer, Device, ExecOptions};
use std::process::ExitCode;

/// Arguments of `cfg bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Only `cuda` is measured.
    #[arg(long, default_value = "cuda")]
    device: String,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    ordinal: usize,
    /// Timed repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 50)]
    reps: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Element counts measured (bf16), each rounded down to whole rows of 4096
    /// (token renorm then uses the block-per-token kernel).
    #[arg(long, value_delimiter = ',', default_value = "262144,2097152,4792320,33554432,67108864")]
    sizes: Vec<usize>,
}

fn paths() -> Vec<(&'static str, Program)> {
    let cfg = || vec![Form { terms: vec![(0, 4.5), (1, -3.5)] }, Form { terms: vec![(0, 1.0)] }];
    let ltx = vec![
        // c + (3-1)(c-u) + 1(c-c_ptb) + (3-1)(c-c_iso): LTX-2 video scales.
        Form { terms: vec![(0, 6.0), (1, -2.0), (2, -1.0), (3, -2.0)] },
        Form { terms: vec![(0, 1.0)] },
    ];
    let (g, c) = (Value::Form(0), Value::Form(1));
    vec![
        ("cfg 2-branch", hand_built(2, cfg()[..1].to_vec(), vec![])),
        (
            "cfg + token renorm",
            hand_built(
                2,
                cfg(),
                vec![Op::Renorm { input: g, reference: c, over: Reduce::Token, eps: 1e-8, min: None, max: None }],
            ),
        ),
        (
            "cfg + std rescale",
            hand_built(2, cfg(), vec![Op::StdRescale { input: g, reference: c, phi: 0.7, over: Reduce::Tensor }]),
        ),
        (
            "LTX 4-branch + rescale",
            hand_built(4, ltx, vec![Op::StdRescale { input: g, reference: c, phi: 0.7, over: Reduce::Tensor }]),
        ),
    ]
}

struct Row {
    path: String,
    elements: usize,
    median_us: f64,
    bytes: usize,
    gbps: f64,
    copy_gbps: f64,
    /// Passes over memory (kernels touching the whole tensor).
    passes: usize,
}

pub fn run(args: Args) -> CliResult {
    if args.device != "cuda" {
        return Err(CliError(format!("`cfg bench` measures the CUDA kernels; got --device {}", args.device)));
    }
    let dev = Device::new(args.ordinal)?;
    let mut rows = Vec::new();
    if let Some(&n) = args.sizes.iter().find(|&&n| n < 4096) {
        return Err(CliError(format!("--sizes: {n} is under one row of 4096 elements")));
    }
    for &n in &args.sizes {
        let shape = Shape::new([1, n / 4096, 4096]);
        let n = shape.numel();
        let a = dev.zeros(DType::BF16, n)?;
        let mut b = dev.alloc(DType::BF16, n)?;
        // Two baselines, each reading and writing every byte once: the driver's
        // memcpy and a copy kernel with the combine's access pattern. The
        // faster of the two is the copy bandwidth every kernel is held to.
        let memcpy_ms = dev.median_ms(args.reps, || dev.memcpy(&a, &mut b))?;
        let kernel_ms = dev.median_ms(args.reps, || copy_u16(&dev, &a, &b))?;
        let gbps_of = |ms: f64| (2 * n * 2) as f64 / (ms * 1e-3) / 1e9;
        let copy_gbps = gbps_of(memcpy_ms).max(gbps_of(kernel_ms));
        for (path, ms) in [("memcpy (driver)", memcpy_ms), ("copy kernel", kernel_ms)] {
            let gbps = gbps_of(ms);
            rows.push(Row {
                path: path.into(),
                elements: n,
                median_us: ms * 1e3,
                bytes: 4 * n,
                gbps,
                copy_gbps,
                passes: 1,
            });
        }
        for (name, p) in paths() {
            let inputs: Vec<Buffer> = (0..p.branches.len())
                .map(|k| {
                    let v = cfg_runtime::philox::normal_vec(1, 0, k as u32, n);
                    dev.upload(&Tensor::from_f32(DType::BF16, shape.clone(), &v))
                })
                .collect::<Result<_, _>>()?;
            let mut state = GuidanceState::new();
            let ms = dev.median_ms(args.reps, || {
                let refs: Vec<&Buffer> = inputs.iter().collect();
                evaluate(&dev, &p, &refs, DType::BF16, &shape, &mut state, ExecOptions::default()).map(drop)
            })?;
            // Minimum bytes: every branch read once, the result written once.
            let bytes = (p.branches.len() + 1) * n * 2;
            let gbps = bytes as f64 / (ms * 1e-3) / 1e9;
            let passes = match p.ops.first() {
                Some(Op::StdRescale { .. }) => rescale_passes(&dev, DType::BF16, 1, n)?,
                _ => 1,
            };
            rows.push(Row { path: name.into(), elements: n, median_us: ms * 1e3, bytes, gbps, copy_gbps, passes });
        }
    }
    if args.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "path": r.path, "elements": r.elements, "dtype": "bf16", "median_us": r.median_us,
                    "bytes": r.bytes, "gbps": r.gbps, "copy_gbps": r.copy_gbps, "fraction_of_copy": r.gbps / r.copy_gbps, "passes": r.passes,
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "device": dev.describe(), "rows": v }));
    } else {
        println!("device: {}", dev.describe());
        println!(
            "{:<24} {:>10} {:>11} {:>12} {:>9} {:>8} {:>7}",
            "path", "elements", "median µs", "bytes", "GB/s", "of copy", "passes"
        );
        for r in &rows {
            println!(
                "{:<24} {:>10} {:>11.2} {:>12} {:>9.1} {:>7.0}% {:>7}",
                r.path,
                r.elements,
                r.median_us,
                r.bytes,
                r.gbps,
                100.0 * r.gbps / r.copy_gbps,
                r.passes
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
