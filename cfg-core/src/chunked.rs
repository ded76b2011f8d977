//! MAGI-1's chunked guidance: frame chunks at different noise levels, each
//! guided with the scales of its own time.
//!
//! MAGI-1 denoises a video autoregressively, a window of chunks of
//! `chunk_frames` latent frames at once, each chunk at its own time
//! (t = 0 pure noise, 1 clean). With three branches (text and prefix, prefix
//! only, neither) a chunk at time t is guided as
//! `u + p·(prefix − u) + t_s·(c − prefix)`, (p, t_s) from a piecewise-constant
//! lookup on t (`cfg_t_range`, `prev_chunk_scales`, `text_scales`).

use crate::cpu::{combine_task, Element};
use crate::layout::Layout;
use crate::simd::{self, Task, Vector};
use crate::slot::{kept, Slot};
use crate::Shape;

/// The chunks of a prediction: which frame (and so which chunk) each element is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunks {
    /// Frames.
    pub frames: usize,
    /// Flat distance between frames.
    pub stride: usize,
    /// Frames per chunk.
    pub chunk_frames: usize,
}

impl Chunks {
    /// The chunks of `shape` under `layout`, which must have `count` of them.
    pub fn new(layout: &Layout, shape: &Shape, chunk_frames: usize, count: usize) -> Result<Chunks, String> {
        let (frames, stride) = layout.frames(shape)?;
        let have = frames.div_ceil(chunk_frames.max(1));
        if have != count {
            return Err(format!(
                "{frames} frames make {have} chunks of {chunk_frames}, and the step gives times for {count}"
            ));
        }
        Ok(Chunks { frames, stride, chunk_frames: chunk_frames.max(1) })
    }

    /// The chunk of flat index `i`.
    #[inline(always)]
    pub fn chunk_of(&self, i: usize) -> usize {
        (i / self.stride) % self.frames / self.chunk_frames
    }
}

/// The (p, t) of a chunk at time `time`: the values of the last threshold
/// with `threshold − 1e-7 < time` (MAGI-1's `searchsorted(range − 1e-7, t) − 1`),
/// the first's where none.
pub fn lookup(thresholds: &[f64], prefix_scales: &[f64], text_scales: &[f64], time: f64) -> (f64, f64) {
    let k = thresholds.iter().filter(|&&th| th - 1e-7 < time).count().saturating_sub(1);
    (prefix_scales[k], text_scales[k])
}

/// The chunk's weights [w_c, w_p, w_u] = [t, p − t, 1 − p], folded in f64, rounded to f32.
pub fn weights(p: f64, t: f64) -> [f32; 3] {
    [t as f32, (p - t) as f32, (1.0 - p) as f32]
}

/// One element: `acc = w_c·c; acc = fma(w_p, prefix, acc); fma(w_u, u, acc)`.
#[inline(always)]
pub fn apply(w: &[f32; 3], c: f32, prefix: f32, u: f32) -> f32 {
    w[2].mul_add(u, w[1].mul_add(prefix, w[0] * c))
}

/// The chunked combination of dense f32 values into `out`.
pub fn chunked_into(chunks: &Chunks, weights: &[[f32; 3]], c: &[f32], prefix: &[f32], u: &[f32], out: &mut [f32]) {
    chunked_direct(chunks, weights, [c, prefix, u], out);
}

/// [`chunked_into`] read straight from the inputs' dtype and rounded into
/// `out`'s, each element [`apply`]'s bits: within a run of `chunks.stride` elements the
/// chunk, and so the weights, are fixed, so each run is a 3-term combine in
/// the linear path's order (`w_c·c`, then fma with prefix, then with u) and
/// takes its vector code. Parallel over tasks of whole runs.
pub fn chunked_direct<I: Element, O: Element>(chunks: &Chunks, weights: &[[f32; 3]], src: [&[I]; 3], out: &mut [O]) {
    chunked_slots(chunks, weights, src, kept(out))
}

/// [`chunked_direct`] into slots (fresh memory, or kept values).
pub(crate) fn chunked_slots<I: Element, S: Slot>(chunks: &Chunks, weights: &[[f32; 3]], src: [&[I]; 3], out: &mut [S]) {
    if out.is_empty() {
        return;
    }
    let run = chunks.stride.max(1);
    let per_task = run * (RUNS_TASK / run).max(1);
    crate::par::for_each_chunk_mut(out, per_task, |task, out| {
        simd::run(Runs { chunks, weights, src, run, first: task * per_task, out });
    });
}

/// Elements per parallel task of [`chunked_direct`] (rounded to whole runs).
const RUNS_TASK: usize = 1 << 16;

/// One task of [`chunked_direct`]: whole runs from flat index `first`.
struct Runs<'a, I, S> {
    chunks: &'a Chunks,
    weights: &'a [[f32; 3]],
    src: [&'a [I]; 3],
    run: usize,
    first: usize,
    out: &'a mut [S],
}

impl<I: Element, S: Slot> Task for Runs<'_, I, S> {
    const AVX512: bool = S::Elem::BF16;
    type Out = ();
    #[inline(always)]
    fn run<V: Vector>(self) {
        for (k, out) in self.out.chunks_mut(self.run).enumerate() {
            let offset = self.first + k * self.run;
            let w = &self.weights[self.chunks.chunk_of(offset)];
            let terms = [(self.src[0], w[0]), (self.src[1], w[1]), (self.src[2], w[2])];
            combine_task::<V, I, S>(&terms, offset, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lookup_is_magis_searchsorted() {
        let (th, p, t) = ([0.0, 0.0217, 0.1, 0.3, 0.999], [1.5, 1.5, 1.5, 1.0, 1.0], [7.5, 7.5, 7.5, 0.0, 0.0]);
        assert_eq!(lookup(&th, &p, &t, 0.0), (1.5, 7.5));
        assert_eq!(lookup(&th, &p, &t, 0.29), (1.5, 7.5));
        // 0.3 − 1e-7 < 0.3: the threshold itself is in its own bin.
        assert_eq!(lookup(&th, &p, &t, 0.3), (1.0, 0.0));
        assert_eq!(lookup(&th, &p, &t, 1.0), (1.0, 0.0));
        assert_eq!(lookup(&[0.5], &[2.0], &[3.0], 0.1), (2.0, 3.0));
    }

    #[test]
    fn frames_map_to_their_chunks() {
        use crate::layout::Axis;
        let l = Layout { axes: vec![Axis::B, Axis::C, Axis::F, Axis::H, Axis::W], grid: None };
        let c = Chunks::new(&l, &Shape::new([1, 2, 5, 2, 2]), 2, 3).unwrap();
        // Element (c=1, f=4, h=0, w=1): frame 4, chunk 2.
        assert_eq!(c.chunk_of(20 + 16 + 1), 2);
        assert_eq!(c.chunk_of(5), 0);
        let e = Chunks::new(&l, &Shape::new([1, 2, 5, 2, 2]), 2, 2).unwrap_err();
        assert!(e.contains("3 chunks of 2") && e.contains("times for 2"), "{e}");
    }
}
