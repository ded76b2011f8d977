//! Shared by the `ops` benches: every library operator as the program its
//! policy lowers to, on inputs both this bench and `scripts/bench_torch.py`
//! generate the same way, and the memcpy floor of the bytes each must move.

use cfg_core::cpu::{evaluate, evaluate_into};
use cfg_core::expr::Space;
use cfg_core::layout::{Axis, Grid, Layout};
use cfg_core::program::{FdgBand, Form, Op, Program, Value};
use cfg_core::reduce::Reduce;
use cfg_core::state::GuidanceState;
use cfg_core::{DType, Shape, Tensor};
use rayon::prelude::*;
use std::hint::black_box;
use std::io::BufRead;
use std::time::Instant;

/// Row names, in table order.
pub const OPS: &[&str] = &[
    "cfg",
    "renorm",
    "renorm_clamped",
    "std_sample",
    "std_tensor",
    "norm_cap",
    "zero_star",
    "magnitude",
    "apg",
    "ltx2",
    "tcfg",
    "perp_neg",
    "apg_mix_cfg",
    "fdg",
    "chunked",
];
/// Element counts.
pub const SIZES: &[usize] = &[262_144, 4_792_320, 33_554_432];
/// Last dim (Qwen-Image's packed latent channels: the shortest token in use).
pub const WIDTH: usize = 64;
/// Frames of the `chunked` row's video (its tokens are frames × a plane).
const CHUNKED_FRAMES: usize = 16;

fn two(form_a: Vec<(usize, f32)>, form_b: Vec<(usize, f32)>, op: Op) -> Program {
    Program {
        output: "sample".into(),
        space: Space::V,
        layout: None,
        branches: vec!["cond".into(), "uncond".into()],
        forms: vec![Form { terms: form_a }, Form { terms: form_b }],
        ops: vec![op],
        latches: vec![],
        counters: vec![],
        result: Value::Op(0),
        renoise: None,
    }
}

/// The program of row `op` and whether it is a one-pass operator.
pub fn program(op: &str) -> (Program, bool) {
    let (f0, f1) = (Value::Form(0), Value::Form(1));
    let cfg = |s: f32| vec![(0, s), (1, 1.0 - s)];
    let cond = vec![(0, 1.0)];
    let uncond = vec![(1, 1.0)];
    let renorm = |min, max, eps| Op::Renorm { input: f0, reference: f1, over: Reduce::Token, eps, min, max };
    let std = |over| Op::StdRescale { input: f0, reference: f1, phi: 0.7, over };
    match op {
        "cfg" => {
            // Plain 2-branch CFG: one linear form, no operator.
            let mut p = two(cfg(7.5), cond, renorm(None, None, 0.0));
            p.forms.truncate(1);
            p.ops.clear();
            p.result = f0;
            (p, true)
        }
        "renorm" => (two(cfg(4.0), cond, renorm(None, None, 0.0)), true),
        "renorm_clamped" => (two(cfg(4.5), cond, renorm(Some(0.0), Some(1.0), 1e-8)), true),
        "std_sample" => (two(cfg(7.5), cond, std(Reduce::Sample)), false),
        "std_tensor" => (two(cfg(7.5), cond, std(Reduce::Tensor)), false),
        "norm_cap" => {
            (two(vec![(0, 4.0), (1, -3.0)], cond, Op::NormCap { input: f0, reference: f1, ratio: 1.0 }), false)
        }
        "zero_star" => (two(cond, uncond, Op::ZeroStar { cond: f0, uncond: f1, scale: 7.5, original: false }), false),
        "magnitude" => (two(cond, uncond, Op::MagnitudeAware { cond: f0, uncond: f1, scale: 10.0, alpha: 8.0 }), false),
        "apg" => {
            let op = Op::Apg {
                cond: f0,
                uncond: f1,
                scale: 7.5,
                momentum: -0.5,
                norm_threshold: 15.0,
                eta: 0.0,
                original: false,
                slot: "apg".into(),
            };
            (two(cond, uncond, op), false)
        }
        "fdg" => {
            // fdg.ron's two levels (10, 5) over a token grid ([1, T, 64]); `Row::new`
            // sets the grid for the size. The floor counts each byte once.
            let band = |scale| FdgBand { on: true, scale, parallel: None, rescale: 0.0 };
            let grid = Some(Grid { frames: None, height: 2, width: 2 });
            let layout = Layout { axes: vec![Axis::B, Axis::T, Axis::C], grid };
            let op = Op::Fdg { cond: f0, uncond: f1, bands: vec![band(10.0), band(5.0)], original: false, layout };
            (two(cond, uncond, op), true)
        }
        "chunked" => {
            // MAGI-1's chunked guidance: 16 frames in 4 chunks, the two older ones past
            // magi1.ron's 0.3 threshold (p 1, t 0), the newer ones at (p 1.5, t 7.5);
            // `Row::new` sets the frame grid for the size.
            let weights = vec![[7.5, -6.0, -0.5], [7.5, -6.0, -0.5], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]];
            let grid = Some(Grid { frames: Some(CHUNKED_FRAMES), height: 1, width: 1 });
            let layout = Layout { axes: vec![Axis::B, Axis::T, Axis::C], grid };
            let op = Op::Chunked { cond: f0, prefix: f1, uncond: Value::Form(2), weights, chunk_frames: 4, layout };
            let mut p = two(cond, vec![(1, 1.0)], op);
            p.branches = vec!["cond".into(), "prefix".into(), "uncond".into()];
            p.forms.push(Form { terms: vec![(2, 1.0)] });
            (p, true)
        }
        "tcfg" => (two(cond, uncond, Op::Tcfg { cond: f0, uncond: f1, scale: 7.5, original: false }), false),
        "apg_mix_cfg" => {
            // APG-Mix before its switch step: CFG, the momentum advanced.
            let op = Op::MomentumCfg {
                cond: f0,
                uncond: f1,
                scale: 3.5,
                momentum: -0.5,
                original: false,
                slot: "apg_mix".into(),
            };
            (two(cond, uncond, op), true)
        }
        "perp_neg" => {
            // perp_neg.ron's program (branches empty, neg, pos): N = neg − e, P = pos − e,
            // N⊥ = reject(N, P) per sample, out = (e + 8·P) − 8·N⊥.
            let mut p = two(
                vec![(0, -1.0), (1, 1.0)],
                vec![(0, -1.0), (2, 1.0)],
                Op::Reject { input: f0, direction: f1, over: Reduce::Sample },
            );
            p.branches = vec!["empty".into(), "neg".into(), "pos".into()];
            p.forms.push(Form { terms: vec![(0, -7.0), (2, 8.0)] });
            p.ops.push(Op::Mix { terms: vec![(Value::Form(2), 1.0), (Value::Op(0), -8.0)] });
            p.result = Value::Op(1);
            (p, false)
        }
        _ => {
            // LTX-2 video: c + 2(c−u) + (c−c_ptb) + 2(c−c_iso), std rescale over the tensor.
            let mut p = two(vec![(0, 6.0), (1, -2.0), (2, -1.0), (3, -2.0)], cond, std(Reduce::Tensor));
            p.branches = vec!["cond".into(), "isolated".into(), "perturbed".into(), "uncond".into()];
            (p, false)
        }
    }
}

/// Branch `b` of `n` elements: the same formula as `scripts/bench_torch.py`.
pub fn input(dtype: DType, n: usize, b: usize) -> Tensor {
    let v: Vec<f32> = (0..n).map(|i| ((i * 7 + b * 13) % 1000) as f32 / 500.0 - 1.0).collect();
    Tensor::from_f32(dtype, Shape::new([1, n / WIDTH, WIDTH]), &v)
}

/// Bytes the floor copies for `op`: inputs read once (one pass) or twice
/// (two passes), the output written once; APG also reads and writes its f32 momentum.
pub fn floor_bytes(op: &str, branches: usize, n: usize, size: usize) -> usize {
    let (_, one_pass) = program(op);
    let reads = if one_pass { 1 } else { 2 };
    let momentum = if op == "apg" || op == "apg_mix_cfg" { 8 * n } else { 0 };
    (reads * branches + 1) * n * size + momentum
}

/// The most square grid of `tokens` with even sides (FDG's pyramid halves them).
fn token_grid(tokens: usize) -> Grid {
    let root = (tokens as f64).sqrt() as usize;
    let height = (2..=root)
        .rev()
        .find(|h| h.is_multiple_of(2) && tokens.is_multiple_of(*h) && (tokens / h).is_multiple_of(2))
        .unwrap_or(2);
    Grid { frames: None, height, width: tokens / height }
}

/// Prepared inputs and reusable output of one row.
pub struct Row {
    program: Program,
    inputs: Vec<Tensor>,
    out: Tensor,
    state: GuidanceState,
    dtype: DType,
    shape: Shape,
    src: Vec<u8>,
    dst: Vec<u8>,
}

impl Row {
    /// Row `op` at `n` elements of `dtype`.
    pub fn new(op: &str, dtype: DType, n: usize) -> Row {
        let (mut program, _) = program(op);
        match program.ops.first_mut() {
            Some(Op::Fdg { layout, .. }) => layout.grid = Some(token_grid(n / WIDTH)),
            Some(Op::Chunked { layout, .. }) => {
                let plane = n / WIDTH / CHUNKED_FRAMES;
                layout.grid = Some(Grid { frames: Some(CHUNKED_FRAMES), height: 1, width: plane });
            }
            _ => {}
        }
        let inputs: Vec<Tensor> = (0..program.branches.len()).map(|b| input(dtype, n, b)).collect();
        let shape = inputs[0].shape.clone();
        let half = floor_bytes(op, inputs.len(), n, dtype.size()) / 2;
        // Written, not zeroed: a zeroed allocation maps one shared page and reads from cache.
        let src: Vec<u8> = (0..half).map(|i| (i * 31) as u8).collect();
        Row {
            out: Tensor::zeros(dtype, shape.clone()),
            program,
            inputs,
            state: GuidanceState::new(),
            dtype,
            shape,
            src,
            dst: vec![1u8; half],
        }
    }

    /// One evaluation into the kept output.
    pub fn run_into(&mut self) {
        let refs: Vec<&Tensor> = self.inputs.iter().collect();
        evaluate_into(&self.program, &refs, self.dtype, &self.shape, &mut self.state, &mut self.out)
            .expect("bench inputs match");
        black_box(&self.out);
    }

    /// One evaluation returning a new tensor (what `evaluate` callers get).
    pub fn run_alloc(&mut self) {
        let refs: Vec<&Tensor> = self.inputs.iter().collect();
        black_box(
            evaluate(&self.program, &refs, self.dtype, &self.shape, &mut self.state).expect("bench inputs match"),
        );
    }

    /// The floor: the fastest copy (one thread or all) of half the bytes, read and written.
    pub fn copy(&mut self, parallel: bool) {
        if parallel {
            self.dst.par_chunks_mut(1 << 20).zip(self.src.par_chunks(1 << 20)).for_each(|(d, s)| d.copy_from_slice(s));
        } else {
            self.dst.copy_from_slice(&self.src);
        }
        black_box(&self.dst);
    }
}

/// Median of `reps` timed calls, after calls for at least [`WARM_UP`] (the
/// same warm-up `scripts/bench_torch.py` gives torch): caches, page tables
/// and the thread pool settle, and the other side's spinning threads stop.
fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    let warm = Instant::now();
    f();
    while warm.elapsed() < WARM_UP {
        f();
    }
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Warm-up before each measured column.
const WARM_UP: std::time::Duration = std::time::Duration::from_millis(100);

/// Serve mode for the interleaved comparison: reads `op dtype n reps` lines,
/// answers `into_ms alloc_ms floor_ms` (medians) per line. `CFG_BENCH_SIMD`
/// (`portable` or `avx2`) caps the instruction set, to compare the paths.
pub fn serve() {
    use cfg_core::simd::{set_limit, Level};
    match std::env::var("CFG_BENCH_SIMD").as_deref() {
        Ok("portable") => set_limit(Level::Portable),
        Ok("avx2") => set_limit(Level::Avx2),
        _ => {}
    }
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() != 4 {
            break;
        }
        let dtype: DType = w[1].parse().expect("dtype");
        let (n, reps): (usize, usize) = (w[2].parse().expect("n"), w[3].parse().expect("reps"));
        let mut row = Row::new(w[0], dtype, n);
        let into = median_ms(reps, || row.run_into());
        let alloc = median_ms(reps, || row.run_alloc());
        let floor = median_ms(reps, || row.copy(true)).min(median_ms(reps, || row.copy(false)));
        println!("{into:.4} {alloc:.4} {floor:.4}");
    }
}
