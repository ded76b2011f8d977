//! Frequency-decoupled guidance (FDG): the canonical order.
//!
//! c and u are split into Laplacian pyramids over the rows and columns of
//! the output's layout (kornia's `build_laplacian_pyramid`, which diffusers
//! uses): with `blur` the 5 × 5 binomial filter ([1, 4, 6, 4, 1]/16 along
//! rows, then along columns; borders reflected without repeating the edge,
//! torch's `reflect`), `down` the 2 × 2 mean (a bilinear half-size resize)
//! and `up` a bilinear double-size resize (align_corners false) then `blur`:
//!
//! ```text
//! G₀ = x,  G_{k+1} = down(blur(G_k)),  L_k = G_k − up(G_{k+1}),  L_{L−1} = G_{L−1}
//! ```
//!
//! Each level k is guided on its own (`u_k + s_k·shift_k`, the shift's part
//! parallel to c_k weighted as APG's η, an optional std rescale against c_k
//! per sample; a level that is off is c_k), and the result is rebuilt from
//! the coarsest level: `r = g_{L−1}; r = up(r) + g_k` for k = L−2, ..., 0.
//!
//! Every stage is an element-wise formula over f32 planar images (sample,
//! plane, row, column) with explicit fma, written once here and once in
//! `cfg-runtime/kernels/fdg.cu`; per-sample statistics use the canonical
//! reductions of [`crate::reduce`]. So the CPU and CUDA agree bit for bit.
//!
//! The CPU computes the same per-element formulas in fewer passes: on the
//! native arrangement when it is planar or planes-last (a token grid: the
//! planes are vector lanes, no transpose), one pass per Gaussian level and
//! one per rebuilt level, rows of the intermediate images cached per band
//! of output rows and column strip rather than stored (tested bit for bit
//! against an element-by-element evaluation in `tests/fast_paths.rs`). The
//! vertical blur makes two output rows per loop from the six rows they
//! read. The passes are bound by arithmetic (some 66 operations per output
//! element for two levels); past the last-level cache, reading c and u
//! twice (for their Gaussian level, then in the level pass) adds to it.
//! Inputs of bf16 or f16 are widened a row at a time where a pass reads
//! them, and an output of bf16 or f16 is rounded a row at a time by the
//! last pass.

use crate::cpu::{apg_projection, rescale_factor, round_into_slice, std_from_sums, Element};
use crate::fused::{put_scratch, take_scratch};
use crate::layout::{Layout, Spatial};
use crate::par;
use crate::program::FdgBand;
use crate::reduce::{dot_f32, dot_f64};
use crate::simd::{self, Task, Vector};
use crate::Shape;
use half::{bf16, f16};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The most levels a pyramid may have.
pub const MAX_LEVELS: usize = 8;

/// The binomial taps of the blur, along one axis (exact in f32).
pub const TAPS: [f32; 5] = [0.0625, 0.25, 0.375, 0.25, 0.0625];

/// The geometry of an FDG pyramid over a prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pyramid {
    /// Where rows, columns and planes live in the prediction.
    pub spatial: Spatial,
    /// Levels (≥ 1).
    pub levels: usize,
}

impl Pyramid {
    /// The pyramid of `levels` levels over `shape` under `layout`, or why it
    /// cannot be built.
    pub fn new(layout: &Layout, shape: &Shape, levels: usize) -> Result<Pyramid, String> {
        let spatial = layout.spatial(shape)?;
        if levels == 0 || levels > MAX_LEVELS {
            return Err(format!("FDG needs 1 to {MAX_LEVELS} levels, it has {levels}"));
        }
        let (h, w) = (spatial.height, spatial.width);
        let f = 1usize << (levels - 1);
        if h % f != 0 || w % f != 0 {
            return Err(format!(
                "FDG's {levels} levels halve the rows and columns {} times: {h}×{w} must be divisible by {f}",
                levels - 1
            ));
        }
        if levels >= 2 {
            let (hk, wk) = (h >> (levels - 2), w >> (levels - 2));
            if hk < 3 || wk < 3 {
                return Err(format!(
                    "FDG's blur (5 taps, reflected borders) needs at least 3 rows and columns at level {}, \
                     which has {hk}×{wk}",
                    levels - 2
                ));
            }
        }
        Ok(Pyramid { spatial, levels })
    }

    /// Images (sample × plane).
    pub fn images(&self) -> usize {
        self.spatial.batch * self.spatial.planes
    }

    /// Rows and columns of level k.
    pub fn dims(&self, k: usize) -> (usize, usize) {
        (self.spatial.height >> k, self.spatial.width >> k)
    }

    /// Elements of one sample at level k.
    pub fn sample_len(&self, k: usize) -> usize {
        let (h, w) = self.dims(k);
        self.spatial.planes * h * w
    }
}

/// Torch's `reflect` border: index `i` of an axis of `n` (n ≥ 3, |overhang| ≤ 2).
#[inline(always)]
pub fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    (if i < 0 {
        -i
    } else if i >= n {
        2 * (n - 1) - i
    } else {
        i
    }) as usize
}

/// Rows `y − 2 ..= y + 3` of an axis of `n`, reflected: the rows the blur
/// along the columns reads for rows y and y + 1.
#[inline(always)]
fn window6(y: usize, n: usize) -> [usize; 6] {
    let y = y as isize;
    [reflect(y - 2, n), reflect(y - 1, n), reflect(y, n), reflect(y + 1, n), reflect(y + 2, n), reflect(y + 3, n)]
}

/// The blur along one axis at position `i` of `n`: taps −2..=2 in order,
/// `acc = t₀·x₋₂`, then fma.
#[inline(always)]
pub fn blur5(x: impl Fn(usize) -> f32, i: usize, n: usize) -> f32 {
    let i = i as isize;
    let mut acc = TAPS[0] * x(reflect(i - 2, n));
    for (k, t) in TAPS.iter().enumerate().skip(1) {
        acc = t.mul_add(x(reflect(i + k as isize - 2, n)), acc);
    }
    acc
}

/// The 2 × 2 mean: `0.25·((a + b) + (c + d))`, (a, b) the upper pair.
#[inline(always)]
pub fn down2(a: f32, b: f32, c: f32, d: f32) -> f32 {
    0.25 * ((a + b) + (c + d))
}

/// The source indices (near, far) of output `j` of a bilinear ×2 resize of
/// an axis of `n` (align_corners false: weights 3/4 and 1/4, clamped at the borders).
#[inline(always)]
pub fn up_taps(j: usize, n: usize) -> (usize, usize) {
    let i = j / 2;
    if j.is_multiple_of(2) {
        (i, i.saturating_sub(1))
    } else {
        (i, (i + 1).min(n - 1))
    }
}

/// `0.75·near + 0.25·far` as `fma(0.75, near, 0.25·far)`.
#[inline(always)]
pub fn lerp(near: f32, far: f32) -> f32 {
    0.75f32.mul_add(near, 0.25 * far)
}

/// How the pyramid's images lie in f32 memory: `n` images of h × w pixels,
/// each pixel `lanes` consecutive values. Planar images have one lane; a
/// token grid (channels last) is one image per sample with a lane per
/// channel, so every stage reads and writes whole rows of contiguous lanes
/// and vectorizes across them, with no transpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Grid {
    n: usize,
    h: usize,
    w: usize,
    lanes: usize,
}

impl Grid {
    fn row(&self) -> usize {
        self.w * self.lanes
    }
    fn len(&self) -> usize {
        self.n * self.h * self.row()
    }
    fn half(&self) -> Grid {
        Grid { h: self.h / 2, w: self.w / 2, ..*self }
    }
    fn double(&self) -> Grid {
        Grid { h: self.h * 2, w: self.w * 2, ..*self }
    }
    /// Row `y` of image `i` of `data`.
    #[inline(always)]
    fn at<'a>(&self, data: &'a [f32], i: usize, y: usize) -> &'a [f32] {
        let r = self.row();
        &data[(i * self.h + y) * r..(i * self.h + y + 1) * r]
    }
}

/// An input image of the pyramid: f32 values read in place, or bf16/f16
/// values widened a row at a time where a pass reads them (no f32 copy of
/// the whole input).
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// bf16 values.
    BF16(&'a [bf16]),
    /// f16 values.
    F16(&'a [f16]),
}

impl Source<'_> {
    /// Values `at`, read in place if they are f32, else widened into `buf`.
    #[inline(always)]
    fn values<'s>(&'s self, at: Range<usize>, buf: &'s mut [f32]) -> &'s [f32] {
        let buf = &mut buf[..at.len()];
        match *self {
            Source::F32(x) => return &x[at],
            Source::BF16(x) => bf16::load(&x[at], buf),
            Source::F16(x) => f16::load(&x[at], buf),
        }
        buf
    }

    /// Values `cols` of row `y` of image `i` on grid `g` ([`Source::values`]).
    #[inline(always)]
    fn strip<'s>(&'s self, g: Grid, i: usize, y: usize, cols: Range<usize>, buf: &'s mut [f32]) -> &'s [f32] {
        let base = (i * g.h + y) * g.row();
        self.values(base + cols.start..base + cols.end, buf)
    }

    /// All of its values as f32: read in place, or widened into `buf`.
    fn all<'s>(&'s self, buf: &'s mut Vec<f32>) -> &'s [f32] {
        let n = match *self {
            Source::F32(x) => return x,
            Source::BF16(x) => x.len(),
            Source::F16(x) => x.len(),
        };
        *buf = buffer(n);
        self.values(0..n, buf)
    }
}

/// The arrangement the native layout already has, if it is one of the two
/// the stages read directly (planar, or planes last); else none (gather).
fn native_grid(s: &Spatial) -> Option<Grid> {
    let (h, w, p) = (s.height, s.width, s.planes);
    let planar = s.col_stride == 1
        && s.row_stride == w
        && s.batch_stride == p * h * w
        && (0..p).all(|k| s.plane_offset(k) == k * h * w);
    if planar {
        return Some(Grid { n: s.batch * p, h, w, lanes: 1 });
    }
    let last = s.col_stride == p
        && s.row_stride == w * p
        && s.batch_stride == h * w * p
        && (0..p).all(|k| s.plane_offset(k) == k);
    last.then_some(Grid { n: s.batch, h, w, lanes: p })
}

/// Rows a band keeps of a derived image (the 6-row window of a stencil, reflected
/// borders included, never collides in a direct-mapped cache of 8).
const SLOTS: usize = 8;

/// Values a strip's row aims at on a grid whose pixels are vectors of
/// channels (at least 8 pixels, the halo being 4): the 43 rows a level pass
/// keeps ([`LEVEL_ROWS`], halos included) then take about 130 KB, in L2. Whole rows of a token
/// grid (hundreds of pixels of 64 channels) spilled from L2; strips of 8
/// pixels made FDG at 4.8M elements 1.5× faster, 4 or 16 no faster.
/// A strip keeps every channel of its pixels: strips of 16 channels (32
/// pixels wide, fewer halo pixels) made it 1.6-2× slower, their reads of c
/// and u a 64-byte line every 256 bytes, rows in sub-bands of 8 to 64 or not.
const STRIP_VALUES: usize = 512;

/// Pixels per strip set by [`set_strip_pixels`] (0: chosen from the grid).
static STRIP_PIXELS: AtomicUsize = AtomicUsize::new(0);

/// Makes the row passes on grids of channel vectors cut their rows into
/// strips of about `pixels` columns (0 chooses from the grid again), for
/// tests that make narrow strips on small images. The bits do not depend
/// on it.
pub fn set_strip_pixels(pixels: usize) {
    STRIP_PIXELS.store(pixels, Ordering::Relaxed);
}

/// The column strips `(first, end)` the row passes on grid `g` run one
/// after the other, of nearly equal widths. Planar rows are short: whole.
fn strips(g: Grid) -> impl Iterator<Item = (usize, usize)> {
    let want = match STRIP_PIXELS.load(Ordering::Relaxed) {
        _ if g.lanes == 1 => g.w,
        0 => (STRIP_VALUES / g.lanes).max(8),
        n => n,
    };
    let k = g.w.div_ceil(want.max(1)).max(1);
    (0..k).map(move |s| (s * g.w / k, (s + 1) * g.w / k))
}

/// One pass over the output rows of a pyramid level. Each is an element-wise
/// composition of the canonical stages, so the bits are those of the stages
/// run one at a time; rows of the intermediate images (blurred within rows,
/// or doubled and blurred within rows) are computed per band and column
/// strip, kept in a small cache while the column blur still needs them,
/// never stored whole.
#[derive(Clone, Copy)]
enum Pass<'a> {
    /// `down(blur(src))` (src on the grid twice the output's): the next Gaussian level.
    Reduce(Source<'a>),
    /// `g − up(src)` (src on the half grid): a Laplacian level.
    Detail { src: &'a [f32], g: Source<'a> },
    /// `up(r) + g` (r on the half grid): one step of the rebuild.
    Rebuild { r: &'a [f32], g: Source<'a> },
    /// The rebuild with the level's guidance fused: see [`Level`].
    Level(Level<'a>),
}

/// The rebuild with the level's guidance fused (c, u, r on the half grid):
/// `up(r) + guide(gc − up(c), gu − up(u))`.
#[derive(Clone, Copy)]
struct Level<'a> {
    c: &'a [f32],
    u: &'a [f32],
    r: &'a [f32],
    gc: Source<'a>,
    gu: Source<'a>,
    band: &'a FdgBand,
    original: bool,
}

/// Runs `pass` over every row of `out` (grid `g`), in parallel bands of rows.
fn pass(p: Pass<'_>, g: Grid, out: &mut [f32]) {
    in_bands(g, out, |first, out| simd::run(Band { p, g, first, out }));
}

/// [`pass`] into an output of any type: the rows of a [`Level`] pass
/// rounded as they are made, another pass's rounded afterwards.
fn pass_into<O: Element>(p: Pass<'_>, g: Grid, out: &mut [O]) {
    if let Some(out) = O::as_f32_mut(out) {
        return pass(p, g, out);
    }
    match p {
        Pass::Level(lvl) => in_bands(g, out, |first, out| simd::run(RoundedBand { lvl, g, first, out })),
        _ => via_f32(out, |values| pass(p, g, values)),
    }
}

/// `write` into `out` when it is f32, else into an f32 buffer then rounded into `out`.
fn via_f32<O: Element>(out: &mut [O], write: impl FnOnce(&mut [f32])) {
    if let Some(out) = O::as_f32_mut(out) {
        return write(out);
    }
    let mut values = buffer(out.len());
    write(&mut values);
    round_into_slice(&values, out);
    recycle(values);
}

/// `f(first row, rows)` over `out` (grid `g`) in parallel bands of whole rows.
fn in_bands<T: Send>(g: Grid, out: &mut [T], f: impl Fn(usize, &mut [T]) + Sync) {
    let row = g.row();
    if row == 0 || out.is_empty() {
        return;
    }
    // Two bands per thread: tall enough that the stencil's halo rows are a
    // small part, enough of them to balance the threads.
    let rows = out.len() / row;
    let per = rows.div_ceil(2 * par::threads()).max(1);
    par::for_each_chunk_mut(out, per * row, |t, out| f(t * per, out));
}

/// A band of output rows of a [`Pass`], as a [`Task`] (its loops compiled
/// in the AVX2+FMA region where the CPU has it, sixteen lanes wide in the
/// AVX-512 one).
struct Band<'a> {
    p: Pass<'a>,
    g: Grid,
    first: usize,
    out: &'a mut [f32],
}

/// A direct-mapped cache of [`SLOTS`] rows (or fewer) of one derived image, by row id.
struct Rows<'a> {
    buf: &'a mut [f32],
    tags: [usize; SLOTS],
    row: usize,
    slots: usize,
}

impl<'a> Rows<'a> {
    fn new(buf: &'a mut [f32], row: usize) -> Rows<'a> {
        Rows::with_slots(buf, row, SLOTS)
    }
    fn with_slots(buf: &'a mut [f32], row: usize, slots: usize) -> Rows<'a> {
        Rows { buf: &mut buf[..slots * row], tags: [usize::MAX; SLOTS], row, slots }
    }
    /// The slot to compute row `id` into, when it is not present. (No
    /// closure: one would be compiled outside the AVX2 region, fma a libm call.)
    #[inline(always)]
    fn missing(&mut self, id: usize) -> Option<&mut [f32]> {
        let k = id % self.slots;
        if self.tags[k] == id {
            return None;
        }
        self.tags[k] = id;
        Some(&mut self.buf[k * self.row..(k + 1) * self.row])
    }
    #[inline(always)]
    fn get(&self, id: usize) -> &[f32] {
        let k = id % self.slots;
        &self.buf[k * self.row..(k + 1) * self.row]
    }
}

/// Fills the pixels of `t` past a border: `t` holds columns `first − 2 ..
/// first + n + 2` of a row of `w` pixels of `l` lanes, those in `0..w`
/// already written; each one past a border is copied from the column it
/// reflects, so the blur within the row reads five shifted slices everywhere.
#[inline(always)]
fn reflect_halo(t: &mut [f32], first: usize, n: usize, w: usize, l: usize) {
    for k in [0, 1, n + 2, n + 3] {
        let col = (first + k) as isize - 2;
        if col < 0 || col >= w as isize {
            let from = reflect(col, w) + 2 - first;
            t.copy_within(from * l..(from + 1) * l, k * l);
        }
    }
}

/// The span `lo..hi` of columns `first − 2 .. first + n + 2` that lie within
/// a row of `w` (those past a border are [`reflect_halo`]'s).
#[inline(always)]
fn halo_span(first: usize, n: usize, w: usize) -> (usize, usize) {
    (first.saturating_sub(2), (first + n + 2).min(w))
}

/// The blur within a row: `o`'s pixels from `t` holding two more on each side.
#[inline(always)]
fn taps5_row(t: &[f32], o: &mut [f32], l: usize) {
    taps5(t, &t[l..], &t[2 * l..], &t[3 * l..], &t[4 * l..], o);
}

/// Columns `first .. first + o.len()/l` of row `y` of the source image `i`
/// (grid `sg`) blurred within the row, into `o`; `t` and `wide` are scratch
/// of two more pixels on each side.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the image, the strip and the scratch
fn blur_source(
    src: Source<'_>,
    sg: Grid,
    i: usize,
    y: usize,
    first: usize,
    o: &mut [f32],
    t: &mut [f32],
    wide: &mut [f32],
) {
    let (l, n) = (sg.lanes, o.len() / sg.lanes);
    let (lo, hi) = halo_span(first, n, sg.w);
    let base = (i * sg.h + y) * sg.row();
    let values = src.values(base + lo * l..base + hi * l, wide);
    if lo + 2 == first && hi == first + n + 2 {
        return taps5_row(values, o, l);
    }
    let at = lo + 2 - first;
    t[at * l..(at + hi - lo) * l].copy_from_slice(values);
    reflect_halo(t, first, n, sg.w, l);
    taps5_row(t, o, l);
}

/// Slots of the cache of source rows doubled within the row: a row of the
/// doubled image reads two adjacent ones.
const DOUBLED_SLOTS: usize = 4;

/// Rows of a strip with its halo that one [`Up`] takes.
const UP_ROWS: usize = SLOTS + DOUBLED_SLOTS;

/// The rows of `up(src)` one strip keeps: source rows doubled within the
/// row (each serves four rows of the doubled image) and rows of the doubled
/// image blurred within the row (each serves five output rows).
struct Up<'s> {
    doubled: Rows<'s>,
    blurred: Rows<'s>,
}

impl<'s> Up<'s> {
    /// Over `scratch` ([`UP_ROWS`] rows of `n` pixels and their halo, `l` lanes).
    #[inline(always)]
    fn new(scratch: &'s mut [f32], n: usize, l: usize) -> Self {
        let (blurred, doubled) = scratch.split_at_mut(SLOTS * (n + 4) * l);
        Up { doubled: Rows::with_slots(doubled, (n + 4) * l, DOUBLED_SLOTS), blurred: Rows::new(blurred, n * l) }
    }
}

/// Columns `first .. first + o.len()/l` of row `y` of the doubled image of
/// `src` (grid `cg`, image `i`) blurred within the row, into `o`, the
/// source rows it reads doubled within the row in `doubled`, with `t`
/// scratch of two more pixels on each side.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the image, the strip, the cache and the scratch
fn expand_row(
    cg: Grid,
    src: &[f32],
    i: usize,
    y: usize,
    first: usize,
    doubled: &mut Rows<'_>,
    o: &mut [f32],
    t: &mut [f32],
) {
    let (l, w, n) = (cg.lanes, 2 * cg.w, o.len() / cg.lanes);
    let (ya, yb) = up_taps(y, cg.h);
    let (lo, hi) = halo_span(first, n, w);
    let cols = (lo + 2 - first) * l..(hi + 2 - first) * l;
    for m in [ya, yb] {
        if let Some(d) = doubled.missing(i * cg.h + m) {
            double_row(cg.at(src, i, m), &mut d[cols.clone()], lo, l);
        }
    }
    let (a, b) = (&doubled.get(i * cg.h + ya)[cols.clone()], &doubled.get(i * cg.h + yb)[cols.clone()]);
    for ((t, &a), &b) in t[cols].iter_mut().zip(a).zip(b) {
        *t = lerp(a, b);
    }
    reflect_halo(t, first, n, w, l);
    taps5_row(t, o, l);
}

/// Row `y` of `up(src)` (src on the half grid `cg`, image `i`) from column
/// `first` into `o`, and row `y + 1` into `next` when given, the rows it
/// derives kept in `up`.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the image, the strip, the cache and the scratch
fn up_rows(
    cg: Grid,
    src: &[f32],
    i: usize,
    y: usize,
    first: usize,
    up: &mut Up<'_>,
    t: &mut [f32],
    o: &mut [f32],
    next: Option<&mut [f32]>,
) {
    let h = 2 * cg.h;
    let ids = window6(y, h);
    let used = if next.is_some() { 6 } else { 5 };
    let Up { doubled, blurred } = up;
    for &yy in &ids[..used] {
        if let Some(r) = blurred.missing(i * h + yy) {
            expand_row(cg, src, i, yy, first, doubled, r, t);
        }
    }
    let r = |k: usize| blurred.get(i * h + ids[k]);
    match next {
        Some(next) => taps5_twice([r(0), r(1), r(2), r(3), r(4), r(5)], o, next),
        None => taps5(r(0), r(1), r(2), r(3), r(4), o),
    }
}

/// The output rows of a band (`out`, rows of `row` values from row `first`
/// of the whole grid, images of `h` rows) as (image, row, its values, the
/// next row's when it is in the band and the same image): the vertical blur
/// makes two rows from the six it reads.
#[allow(clippy::type_complexity)] // a row and the optional next one
fn row_pairs<T>(
    out: &mut [T],
    row: usize,
    first: usize,
    h: usize,
) -> impl Iterator<Item = (usize, usize, &mut [T], Option<&mut [T]>)> {
    let mut rows = out.chunks_mut(row).enumerate();
    std::iter::from_fn(move || {
        let (j, o) = rows.next()?;
        let (i, y) = ((first + j) / h, (first + j) % h);
        let next = if y + 1 < h { rows.next().map(|(_, o)| o) } else { None };
        Some((i, y, o, next))
    })
}

impl Task for Band<'_> {
    const AVX512: bool = true;
    type Out = ();
    #[inline(always)]
    fn run<V: Vector>(self) {
        let Band { p, g, first, out } = self;
        let (row, l) = (g.row(), g.lanes);
        for (x0, x1) in strips(g) {
            let (n, cols) = (x1 - x0, x0 * l..x1 * l);
            // A strip's rows, and with two more pixels on each side.
            let (sr, hr) = (n * l, (n + 4) * l);
            match p {
                Pass::Reduce(src) => {
                    let sg = g.double();
                    // The source's rows are twice as wide: 8 cached, 2 blurred
                    // down the columns, 2 with halos.
                    let mut scratch = take_scratch((SLOTS + 2) * 2 * sr + 2 * (2 * n + 4) * l);
                    let (cache, rest) = scratch.split_at_mut(SLOTS * 2 * sr);
                    let (v0, rest) = rest.split_at_mut(2 * sr);
                    let (v1, rest) = rest.split_at_mut(2 * sr);
                    let (t, rest) = rest.split_at_mut((2 * n + 4) * l);
                    let wide = &mut rest[..(2 * n + 4) * l];
                    let mut cache = Rows::new(cache, 2 * sr);
                    for (j, o) in out.chunks_mut(row).enumerate() {
                        let (i, y) = ((first + j) / g.h, (first + j) % g.h);
                        // Rows 2y − 2 ..= 2y + 3 blurred within rows, then along the rows.
                        let h = sg.h;
                        let ids = window6(2 * y, h);
                        for &yy in &ids {
                            if let Some(r) = cache.missing(i * h + yy) {
                                blur_source(src, sg, i, yy, 2 * x0, r, t, wide);
                            }
                        }
                        let r = |k: usize| cache.get(i * h + ids[k]);
                        taps5_twice([r(0), r(1), r(2), r(3), r(4), r(5)], v0, v1);
                        down_row(v0, v1, &mut o[cols.clone()], l);
                    }
                    put_scratch(scratch);
                }
                Pass::Detail { src, g: gk } | Pass::Rebuild { r: src, g: gk } => {
                    // up(src), then g − it (Detail) or it + g (Rebuild).
                    let detail = matches!(p, Pass::Detail { .. });
                    let mut scratch = take_scratch((UP_ROWS + 2) * hr);
                    let (up, rest) = scratch.split_at_mut(UP_ROWS * hr);
                    let (t, rest) = rest.split_at_mut(hr);
                    let wide = &mut rest[..hr];
                    let mut up = Up::new(up, n, l);
                    for (i, y, o, next) in row_pairs(out, row, first, g.h) {
                        let mut next = next.map(|o| &mut o[cols.clone()]);
                        let o = &mut o[cols.clone()];
                        up_rows(g.half(), src, i, y, x0, &mut up, t, o, next.as_deref_mut());
                        for (k, o) in std::iter::once(o).chain(next).enumerate() {
                            let x = gk.strip(g, i, y + k, cols.clone(), wide);
                            if detail {
                                for (o, &x) in o.iter_mut().zip(x) {
                                    *o = x - *o;
                                }
                            } else {
                                for (o, &x) in o.iter_mut().zip(x) {
                                    *o += x;
                                }
                            }
                        }
                    }
                    put_scratch(scratch);
                }
                Pass::Level(lvl) => {
                    let mut scratch = take_scratch(LEVEL_ROWS * hr);
                    let mut level = LevelRows::new(lvl, g, x0, n, &mut scratch);
                    for (i, y, o, next) in row_pairs(out, row, first, g.h) {
                        level.pair(i, y, &mut o[cols.clone()], next.map(|o| &mut o[cols.clone()]));
                    }
                    put_scratch(scratch);
                }
            }
        }
    }
}

/// A band of output rows of a [`Level`] pass into an output of another type
/// than f32: each row made in f32, then rounded.
struct RoundedBand<'a, O> {
    lvl: Level<'a>,
    g: Grid,
    first: usize,
    out: &'a mut [O],
}

impl<O: Element> Task for RoundedBand<'_, O> {
    const AVX512: bool = true;
    type Out = ();
    #[inline(always)]
    fn run<V: Vector>(self) {
        let RoundedBand { lvl, g, first, out } = self;
        let (row, l) = (g.row(), g.lanes);
        for (x0, x1) in strips(g) {
            let (n, cols) = (x1 - x0, x0 * l..x1 * l);
            // The level pass's rows, and two to make the output rows in.
            let mut scratch = take_scratch((LEVEL_ROWS + 2) * (n + 4) * l);
            let (level_rows, rest) = scratch.split_at_mut(LEVEL_ROWS * (n + 4) * l);
            let (made, rest) = rest.split_at_mut(n * l);
            let made_next = &mut rest[..n * l];
            let mut level = LevelRows::new(lvl, g, x0, n, level_rows);
            for (i, y, o, next) in row_pairs(out, row, first, g.h) {
                level.pair(i, y, made, next.is_some().then_some(&mut *made_next));
                round_row::<V, O>(made, &mut o[cols.clone()]);
                if let Some(next) = next {
                    round_row::<V, O>(made_next, &mut next[cols.clone()]);
                }
            }
            put_scratch(scratch);
        }
    }
}

/// One row of f32 values rounded into `o`, sixteen lanes per store.
#[inline(always)]
fn round_row<V: Vector, O: Element>(x: &[f32], o: &mut [O]) {
    let (xs, xt) = x[..o.len()].as_chunks::<16>();
    let (os, ot) = o.as_chunks_mut::<16>();
    for (x, o) in xs.iter().zip(os) {
        let halves = x.as_chunks::<8>().0;
        O::put16(V::load(&halves[0]), V::load(&halves[1]), o);
    }
    O::store(xt, ot);
}

/// Rows of scratch a [`Level`] pass takes, each of a strip and its halo:
/// three [`Up`]s, one to expand in, two each for up(c) and up(u), one each
/// to widen gc and gu.
const LEVEL_ROWS: usize = 3 * UP_ROWS + 7;

/// The rows of a [`Level`] pass over one column strip, a pair at a time:
/// the rows of `up()` of c, u and r, and rows of scratch.
struct LevelRows<'a, 's> {
    lvl: Level<'a>,
    g: Grid,
    first: usize,
    ups: [Up<'s>; 3],
    t: &'s mut [f32],
    tc: [&'s mut [f32]; 2],
    tu: [&'s mut [f32]; 2],
    wc: &'s mut [f32],
    wu: &'s mut [f32],
}

impl<'a, 's> LevelRows<'a, 's> {
    /// The pass's rows for the `n` columns from `first`, over `scratch`
    /// ([`LEVEL_ROWS`] rows of n + 4 pixels at least).
    #[inline(always)]
    fn new(lvl: Level<'a>, g: Grid, first: usize, n: usize, scratch: &'s mut [f32]) -> Self {
        let (l, sr, hr) = (g.lanes, n * g.lanes, (n + 4) * g.lanes);
        let (s0, rest) = scratch.split_at_mut(UP_ROWS * hr);
        let (s1, rest) = rest.split_at_mut(UP_ROWS * hr);
        let (s2, rest) = rest.split_at_mut(UP_ROWS * hr);
        let (t, rest) = rest.split_at_mut(hr);
        let (tc0, rest) = rest.split_at_mut(sr);
        let (tc1, rest) = rest.split_at_mut(sr);
        let (tu0, rest) = rest.split_at_mut(sr);
        let (tu1, rest) = rest.split_at_mut(sr);
        let (wc, rest) = rest.split_at_mut(sr);
        let wu = &mut rest[..sr];
        let ups = [Up::new(s0, n, l), Up::new(s1, n, l), Up::new(s2, n, l)];
        LevelRows { lvl, g, first, ups, t, tc: [tc0, tc1], tu: [tu0, tu1], wc, wu }
    }

    /// The strip of output row `y` of image `i` into `o`, and of row `y + 1`
    /// into `next` when given.
    #[inline(always)]
    fn pair(&mut self, i: usize, y: usize, o: &mut [f32], mut next: Option<&mut [f32]>) {
        let Level { c, u, r, gc, gu, band, original } = self.lvl;
        let (g, cg, x0, two) = (self.g, self.g.half(), self.first, next.is_some());
        let cols = x0 * g.lanes..x0 * g.lanes + o.len();
        let [cc, cu, cr] = &mut self.ups;
        let [tc0, tc1] = &mut self.tc;
        let [tu0, tu1] = &mut self.tu;
        up_rows(cg, c, i, y, x0, cc, self.t, tc0, two.then_some(&mut **tc1));
        up_rows(cg, u, i, y, x0, cu, self.t, tu0, two.then_some(&mut **tu1));
        up_rows(cg, r, i, y, x0, cr, self.t, o, next.as_deref_mut());
        for (k, o) in std::iter::once(o).chain(next).enumerate() {
            let (tc, tu) = if k == 0 { (&**tc0, &**tu0) } else { (&**tc1, &**tu1) };
            let (gc, gu) = (gc.strip(g, i, y + k, cols.clone(), self.wc), gu.strip(g, i, y + k, cols.clone(), self.wu));
            guide_row(gc, tc, gu, tu, band, original, o);
        }
    }
}

/// `o += guide(gc − tc, gu − tu)` over one row of a level (`gc − tc` where
/// the band is off): one loop per case, each vectorized without masks.
#[inline(always)]
fn guide_row(gc: &[f32], tc: &[f32], gu: &[f32], tu: &[f32], band: &FdgBand, original: bool, o: &mut [f32]) {
    let n = o.len();
    let (gc, tc, gu, tu) = (&gc[..n], &tc[..n], &gu[..n], &tu[..n]);
    let s = band.scale;
    if !band.on {
        for ((o, &gc), &tc) in o.iter_mut().zip(gc).zip(tc) {
            *o += gc - tc;
        }
    } else if original {
        for k in 0..n {
            let (lc, lu) = (gc[k] - tc[k], gu[k] - tu[k]);
            o[k] += s.mul_add(lc - lu, lc);
        }
    } else {
        for k in 0..n {
            let (lc, lu) = (gc[k] - tc[k], gu[k] - tu[k]);
            o[k] += s.mul_add(lc - lu, lu);
        }
    }
}

/// `acc = t₀·x₀; acc = fma(t_k, x_k, acc)`: one output of the blur from its five values.
#[inline(always)]
fn tap_chain(x0: f32, x1: f32, x2: f32, x3: f32, x4: f32) -> f32 {
    let mut acc = TAPS[0] * x0;
    acc = TAPS[1].mul_add(x1, acc);
    acc = TAPS[2].mul_add(x2, acc);
    acc = TAPS[3].mul_add(x3, acc);
    TAPS[4].mul_add(x4, acc)
}

/// [`tap_chain`] over five aligned slices.
#[inline(always)]
fn taps5(r0: &[f32], r1: &[f32], r2: &[f32], r3: &[f32], r4: &[f32], o: &mut [f32]) {
    let n = o.len();
    let (r0, r1, r2, r3, r4) = (&r0[..n], &r1[..n], &r2[..n], &r3[..n], &r4[..n]);
    for i in 0..n {
        o[i] = tap_chain(r0[i], r1[i], r2[i], r3[i], r4[i]);
    }
}

/// [`taps5`] over rows 0..=4 into `o0` and over rows 1..=5 into `o1`, in one
/// loop: six rows loaded for two outputs, not ten.
#[inline(always)]
fn taps5_twice(r: [&[f32]; 6], o0: &mut [f32], o1: &mut [f32]) {
    let n = o0.len();
    let [r0, r1, r2, r3, r4, r5] = r;
    let (o1, r0, r1, r2, r3, r4, r5) = (&mut o1[..n], &r0[..n], &r1[..n], &r2[..n], &r3[..n], &r4[..n], &r5[..n]);
    for i in 0..n {
        o0[i] = tap_chain(r0[i], r1[i], r2[i], r3[i], r4[i]);
        o1[i] = tap_chain(r1[i], r2[i], r3[i], r4[i], r5[i]);
    }
}

/// One output row of the 2 × 2 mean from source rows `a` (upper) and `b`.
#[inline(always)]
fn down_row(a: &[f32], b: &[f32], o: &mut [f32], l: usize) {
    if l == 1 {
        for ((o, a), b) in o.iter_mut().zip(a.chunks_exact(2)).zip(b.chunks_exact(2)) {
            *o = down2(a[0], a[1], b[0], b[1]);
        }
        return;
    }
    for ((o, a), b) in o.chunks_exact_mut(l).zip(a.chunks_exact(2 * l)).zip(b.chunks_exact(2 * l)) {
        let (a0, a1) = a.split_at(l);
        let (b0, b1) = b.split_at(l);
        // Zipped, not indexed: the indexed loop stayed scalar.
        for ((((o, &a0), &a1), &b0), &b1) in o.iter_mut().zip(a0).zip(a1).zip(b0).zip(b1) {
            *o = down2(a0, a1, b0, b1);
        }
    }
}

/// Columns `first ..` (as many as `d` holds) of the bilinear doubling of
/// the half-size row `a` within the row: `d[x] = lerp(a[near], a[far])`
/// ([`up_taps`]).
#[inline(always)]
fn double_row(a: &[f32], d: &mut [f32], first: usize, l: usize) {
    let w = a.len() / l;
    if l == 1 && first.is_multiple_of(2) && d.len().is_multiple_of(2) {
        // A planar row: two columns per source pixel.
        for (k, pair) in d.chunks_exact_mut(2).enumerate() {
            let i = first / 2 + k;
            let (left, right) = (i.saturating_sub(1), (i + 1).min(w - 1));
            pair[0] = lerp(a[i], a[left]);
            pair[1] = lerp(a[i], a[right]);
        }
        return;
    }
    for (k, px) in d.chunks_exact_mut(l).enumerate() {
        let (near, far) = up_taps(first + k, w);
        let (an, af) = (&a[near * l..(near + 1) * l], &a[far * l..(far + 1) * l]);
        for m in 0..l {
            px[m] = lerp(an[m], af[m]);
        }
    }
}

thread_local! {
    /// The last call's level buffers, reused by the next call on this thread:
    /// fresh pages cost a fault and a clear each, more than the passes themselves.
    static POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A buffer of `n` values (contents unspecified: every pass writes all of its output).
pub(crate) fn buffer(n: usize) -> Vec<f32> {
    let found = POOL.with(|p| {
        let mut p = p.borrow_mut();
        let best = (0..p.len()).filter(|&i| p[i].capacity() >= n).min_by_key(|&i| p[i].capacity());
        best.map(|i| p.swap_remove(i))
    });
    // A new buffer comes untouched, on huge pages where it is large.
    let mut v = found.unwrap_or_else(|| crate::zeroed::zeroed_vec(n));
    if v.len() < n {
        v.resize(n, 0.0);
    }
    v.truncate(n);
    v
}

/// Hands a buffer back for the next call (a few are kept).
pub(crate) fn recycle(v: Vec<f32>) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < 16 && v.capacity() > 0 {
            p.push(v);
        }
    });
}

/// The prediction `x` (native layout) as planar images (sample, plane, row, column).
pub fn gather(s: &Spatial, x: &[f32]) -> Vec<f32> {
    let (h, w) = (s.height, s.width);
    let mut out = vec![0.0; x.len()];
    par::for_each_chunk_mut(&mut out, h * w, |i, o| {
        let (b, p) = (i / s.planes, i % s.planes);
        let base = b * s.batch_stride + s.plane_offset(p);
        for y in 0..h {
            for (xx, o) in o[y * w..(y + 1) * w].iter_mut().enumerate() {
                *o = x[base + y * s.row_stride + xx * s.col_stride];
            }
        }
    });
    out
}

/// Planar images back into the native layout.
pub fn scatter(s: &Spatial, planar: &[f32], out: &mut [f32]) {
    let (h, w) = (s.height, s.width);
    // Each sample of the output is written by one task.
    let per = s.batch_stride;
    par::for_each_chunk_mut(out, per, |b, o| {
        for (p, img) in planar[b * per..(b + 1) * per].chunks(h * w).enumerate() {
            let base = s.plane_offset(p);
            for y in 0..h {
                for x in 0..w {
                    o[base + y * s.row_stride + x * s.col_stride] = img[y * w + x];
                }
            }
        }
    });
}

/// The Gaussian levels G₁.. of `g0` (grid `g`): `down(blur(G_k))`.
fn gaussians(levels: usize, g: Grid, g0: Source<'_>) -> Vec<Vec<f32>> {
    let mut out: Vec<Vec<f32>> = Vec::with_capacity(levels.saturating_sub(1));
    let mut grid = g;
    for _ in 1..levels {
        let src = out.last().map_or(g0, |v| Source::F32(v));
        grid = grid.half();
        let mut next = buffer(grid.len());
        pass(Pass::Reduce(src), grid, &mut next);
        out.push(next);
    }
    out
}

/// Whether a band needs per-sample statistics (a parallel weight or a rescale).
fn has_stats(band: &FdgBand) -> bool {
    band.on && (band.parallel.is_some() || band.rescale > 0.0)
}

/// FDG of c and u as images on grid `g` (planar when a band takes
/// statistics) into `out` on the same grid.
fn fdg_grid<O: Element>(p: &Pyramid, g: Grid, c: Source, u: Source, bands: &[FdgBand], original: bool, out: &mut [O]) {
    let levels = p.levels;
    if levels == 1 {
        // One level is guided whole: its values as f32 slices.
        let (mut cb, mut ub) = (Vec::new(), Vec::new());
        let r = guide_level(c.all(&mut cb), u.all(&mut ub), p.sample_len(0), &bands[0], original);
        round_into_slice(&r, out);
        [r, cb, ub].into_iter().for_each(recycle);
        return;
    }
    let (gc, gu) = (gaussians(levels, g, c), gaussians(levels, g, u));
    let level = |k: usize| -> (Source, Source) {
        if k == 0 {
            (c, u)
        } else {
            (Source::F32(&gc[k - 1]), Source::F32(&gu[k - 1]))
        }
    };
    // Gaussian level k ≥ 1 (computed above, f32).
    let gaussian = |k: usize| (&gc[k - 1][..], &gu[k - 1][..]);
    let (cl, ul) = gaussian(levels - 1);
    let mut r = guide_level(cl, ul, p.sample_len(levels - 1), &bands[levels - 1], original);
    let mut grid = g;
    for _ in 1..levels {
        grid = grid.half();
    }
    for k in (0..levels - 1).rev() {
        grid = grid.double();
        let ((ck, uk), (ec, eu)) = (level(k), gaussian(k + 1));
        let mut next = if k == 0 { Vec::new() } else { buffer(grid.len()) };
        // A band with statistics guides the level whole, then rebuilds; one
        // without fuses its guidance into the rebuild.
        let guided = has_stats(&bands[k]).then(|| {
            let (mut lc, mut lu) = (buffer(grid.len()), buffer(grid.len()));
            pass(Pass::Detail { src: ec, g: ck }, grid, &mut lc);
            pass(Pass::Detail { src: eu, g: uk }, grid, &mut lu);
            let gk = guide_level(&lc, &lu, p.sample_len(k), &bands[k], original);
            [lc, lu].into_iter().for_each(recycle);
            gk
        });
        let step = match &guided {
            Some(gk) => Pass::Rebuild { r: &r, g: Source::F32(gk) },
            None => Pass::Level(Level { c: ec, u: eu, r: &r, gc: ck, gu: uk, band: &bands[k], original }),
        };
        if k == 0 {
            pass_into(step, grid, out);
        } else {
            pass(step, grid, &mut next);
        }
        guided.into_iter().for_each(recycle);
        recycle(std::mem::replace(&mut r, next));
    }
    recycle(r);
    gc.into_iter().chain(gu).for_each(recycle);
}

/// One guided level from c_k and u_k (planar, `len` elements per sample).
pub fn guide_level(c: &[f32], u: &[f32], len: usize, band: &FdgBand, original: bool) -> Vec<f32> {
    let mut g = buffer(c.len());
    if !band.on {
        g.copy_from_slice(c);
        return g;
    }
    par::for_each_chunk_mut(&mut g, len, |b, g| {
        let (c, u) = (&c[b * len..(b + 1) * len], &u[b * len..(b + 1) * len]);
        simd::run(Guide { c, u, g, band, original })
    });
    g
}

/// One sample of one guided level, as a [`Task`].
struct Guide<'a> {
    c: &'a [f32],
    u: &'a [f32],
    g: &'a mut [f32],
    band: &'a FdgBand,
    original: bool,
}

impl Task for Guide<'_> {
    type Out = ();
    #[inline(always)]
    fn run<V: Vector>(self) {
        let Guide { c, u, g, band, original } = self;
        let (s, len) = (band.scale, c.len());
        match band.parallel {
            None => {
                for ((g, &c), &u) in g.iter_mut().zip(c).zip(u) {
                    *g = s.mul_add(c - u, if original { c } else { u });
                }
            }
            Some(eta) => {
                let dc = dot_f64(len, |i| ((c[i] - u[i]) as f64, c[i] as f64));
                let cc = dot_f64(len, |i| (c[i] as f64, c[i] as f64));
                let coef = apg_projection(dc, cc);
                for ((g, &c), &u) in g.iter_mut().zip(c).zip(u) {
                    let par = coef * c as f64;
                    let perp = (c - u) as f64 - par;
                    *g = s.mul_add(eta.mul_add(par as f32, perp as f32), if original { c } else { u });
                }
            }
        }
        if band.rescale > 0.0 {
            let sc = std_from_sums(dot_f32(len, |i| (c[i], 1.0)), dot_f32(len, |i| (c[i], c[i])), len);
            let sg = std_from_sums(dot_f32(len, |i| (g[i], 1.0)), dot_f32(len, |i| (g[i], g[i])), len);
            let f = rescale_factor(sc, sg, band.rescale);
            for g in g.iter_mut() {
                *g *= f;
            }
        }
    }
}

/// FDG of c and u (native layout, f32) into `out`.
pub fn fdg_into(p: &Pyramid, c: &[f32], u: &[f32], bands: &[FdgBand], original: bool, out: &mut [f32]) {
    fdg_sources(p, Source::F32(c), Source::F32(u), bands, original, out)
}

/// FDG of c and u (native layout, f32, bf16 or f16: the same bits as their
/// f32 values through [`fdg_into`]) into `out`: f32, or the f32 result
/// rounded to `out`'s type as [`Element::store`] rounds it (on the common
/// layouts, in the last pass, with no f32 copy of the result).
pub fn fdg_sources<O: Element>(p: &Pyramid, c: Source, u: Source, bands: &[FdgBand], original: bool, out: &mut [O]) {
    let s = &p.spatial;
    // Statistics reduce each sample in planar order: lanes would change that order.
    let native = native_grid(s).filter(|g| g.lanes == 1 || !bands.iter().any(has_stats));
    match native {
        Some(g) => fdg_grid(p, g, c, u, bands, original, out),
        None => {
            let g = Grid { n: s.batch * s.planes, h: s.height, w: s.width, lanes: 1 };
            let (mut cb, mut ub) = (Vec::new(), Vec::new());
            let (c, u) = (gather(s, c.all(&mut cb)), gather(s, u.all(&mut ub)));
            let mut r = vec![0.0; out.len()];
            fdg_grid(p, g, Source::F32(&c), Source::F32(&u), bands, original, &mut r);
            via_f32(out, |out| scatter(s, &r, out));
            [cb, ub].into_iter().for_each(recycle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Axis;

    fn bchw() -> Layout {
        Layout { axes: vec![Axis::B, Axis::C, Axis::H, Axis::W], grid: None }
    }

    /// Pseudo-random values from a seed (an LCG: no dependency).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn the_pyramid_rebuilds_its_input() {
        let shape = Shape::new([2, 3, 8, 12]);
        let p = Pyramid::new(&bchw(), &shape, 3).unwrap();
        let x = values(shape.numel(), 7);
        let band = FdgBand { on: false, scale: 1.0, parallel: None, rescale: 0.0 };
        let mut out = vec![0.0; x.len()];
        fdg_into(&p, &x, &x, &[band; 3], false, &mut out);
        for (a, b) in out.iter().zip(&x) {
            assert!((a - b).abs() < 1e-5, "{a} {b}");
        }
    }

    #[test]
    fn the_canonical_order_is_the_f64_formula_in_f32() {
        let shape = Shape::new([2, 3, 16, 8]);
        let p = Pyramid::new(&bchw(), &shape, 3).unwrap();
        let (c, u) = (values(shape.numel(), 1), values(shape.numel(), 2));
        let bands = [
            FdgBand { on: true, scale: 10.0, parallel: Some(0.3), rescale: 0.0 },
            FdgBand { on: true, scale: 5.0, parallel: None, rescale: 0.7 },
            FdgBand { on: false, scale: 2.0, parallel: None, rescale: 0.0 },
        ];
        for original in [false, true] {
            let mut out = vec![0.0; c.len()];
            fdg_into(&p, &c, &u, &bands, original, &mut out);
            let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
            let want = crate::fdg_reference::fdg_f64(&p, &f(&c), &f(&u), &bands, original);
            let err = crate::reference::relative_error(&f(&out), &want);
            assert!(err < 1e-6, "{err}");
        }
    }

    #[test]
    fn gather_and_scatter_are_inverse() {
        let l = Layout {
            axes: vec![Axis::B, Axis::T, Axis::C],
            grid: Some(crate::layout::Grid { frames: None, height: 2, width: 4 }),
        };
        let shape = Shape::new([2, 8, 3]);
        let s = l.spatial(&shape).unwrap();
        let x = values(shape.numel(), 3);
        let mut back = vec![0.0; x.len()];
        scatter(&s, &gather(&s, &x), &mut back);
        assert_eq!(back, x);
    }

    #[test]
    fn shapes_the_pyramid_cannot_halve_are_explained() {
        let e = Pyramid::new(&bchw(), &Shape::new([1, 4, 6, 8]), 3).unwrap_err();
        assert!(e.contains("divisible by 4"), "{e}");
        let e = Pyramid::new(&bchw(), &Shape::new([1, 4, 8, 8]), 4).unwrap_err();
        assert!(e.contains("at least 3 rows"), "{e}");
        assert!(Pyramid::new(&bchw(), &Shape::new([1, 4, 8, 8]), 3).is_ok());
    }

    #[test]
    fn borders_reflect_and_bilinear_taps_clamp() {
        assert_eq!([reflect(-2, 5), reflect(-1, 5), reflect(5, 5), reflect(6, 5)], [2, 1, 3, 2]);
        assert_eq!([up_taps(0, 4), up_taps(1, 4), up_taps(2, 4), up_taps(7, 4)], [(0, 0), (0, 1), (1, 0), (3, 3)]);
    }
}
