//! FDG on the device: the stages of `cfg_core::fdg` as kernels (`kernels/fdg.cu`),
//! launched in the CPU evaluator's order on f32 buffers, so the result is the
//! CPU's bit for bit.

use super::device::{Buffer, Device};
use super::error::CudaError;
use super::kernels;
use super::launch::{self, param};
use super::params::{kind, src, FactorArgs, Groups};
use cfg_core::fdg::Pyramid;
use cfg_core::program::FdgBand;
use cfg_core::reduce::Reduce;
use cfg_core::{DType, Shape};
use cudarc::driver::DeviceRepr;

/// `struct FdgSpatial` (fdg.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct FdgSpatial {
    batch_stride: i64,
    planes: i64,
    size: [i64; 3],
    stride: [i64; 3],
    height: i64,
    row_stride: i64,
    width: i64,
    col_stride: i64,
}

// SAFETY: plain old data laid out as its C twin.
unsafe impl DeviceRepr for FdgSpatial {}

/// The kernels of one FDG evaluation.
struct Stages<'a> {
    dev: &'a Device,
}

impl Stages<'_> {
    fn alloc(&self, n: usize) -> Result<Buffer, CudaError> {
        self.dev.alloc(DType::F32, n)
    }

    /// `name(src, dst, h, w, n)`: n outputs from images of h × w.
    fn image(&self, name: &str, src: &Buffer, h: usize, w: usize, n: usize) -> Result<Buffer, CudaError> {
        let dev = self.dev;
        let out = self.alloc(n)?;
        let (s, o, h, w, n64) = (src.addr(dev), out.addr(dev), h as i64, w as i64, n as i64);
        let k = dev.function(&kernels::FDG, name)?;
        // SAFETY: matches `fdg_*(const float* src, float* dst, i64 h, i64 w, i64 n)`; dst holds n
        // floats and src the images the n outputs read.
        unsafe {
            launch::launch(dev, &k, dev.grid(n), &mut [param(&s), param(&o), param(&h), param(&w), param(&n64)])
        }?;
        Ok(out)
    }

    /// `name(a, b, out, n)`.
    fn pair(&self, name: &str, a: &Buffer, b: &Buffer) -> Result<Buffer, CudaError> {
        let dev = self.dev;
        let n = a.len;
        let out = self.alloc(n)?;
        let (a, b, o, n64) = (a.addr(dev), b.addr(dev), out.addr(dev), n as i64);
        let k = dev.function(&kernels::FDG, name)?;
        // SAFETY: matches `fdg_sub`/`fdg_add(const float*, const float*, float*, i64)`, all n floats.
        unsafe { launch::launch(dev, &k, dev.grid(n), &mut [param(&a), param(&b), param(&o), param(&n64)]) }?;
        Ok(out)
    }

    /// `blur(x)` on images of h × w.
    fn blur(&self, x: &Buffer, h: usize, w: usize) -> Result<Buffer, CudaError> {
        let a = self.image("fdg_blur_rows", x, h, w, x.len)?;
        self.image("fdg_blur_cols", &a, h, w, x.len)
    }

    /// `up(x)` from images of h × w.
    fn up(&self, x: &Buffer, h: usize, w: usize) -> Result<Buffer, CudaError> {
        let a = self.image("fdg_upsample", x, h, w, 4 * x.len)?;
        self.blur(&a, 2 * h, 2 * w)
    }

    fn laplacian(&self, p: &Pyramid, x: Buffer) -> Result<Vec<Buffer>, CudaError> {
        let mut gauss = vec![x];
        for k in 0..p.levels - 1 {
            let (h, w) = p.dims(k);
            let b = self.blur(&gauss[k], h, w)?;
            gauss.push(self.image("fdg_down", &b, h, w, gauss[k].len / 4)?);
        }
        let mut out = Vec::with_capacity(p.levels);
        for k in 0..p.levels - 1 {
            let (h, w) = p.dims(k + 1);
            let u = self.up(&gauss[k + 1], h, w)?;
            out.push(self.pair("fdg_sub", &gauss[k], &u)?);
        }
        out.extend(gauss.pop());
        Ok(out)
    }

    /// One guided level (`cfg_core::fdg::guide_level`).
    fn guide(&self, c: Buffer, u: &Buffer, len: usize, band: &FdgBand, original: bool) -> Result<Buffer, CudaError> {
        if !band.on {
            return Ok(c);
        }
        let dev = self.dev;
        let n = c.len;
        let groups = Groups::new(Reduce::Sample, &Shape::new([n / len.max(1), len]));
        let g = self.alloc(n)?;
        let (ca, ua, o, s) = (c.addr(dev), u.addr(dev), g.addr(dev), band.scale);
        match band.parallel {
            None => launch::cfg_delta(dev, (ca, ua), s, original, o, n)?,
            Some(eta) => {
                let d = self.pair("fdg_sub", &c, u)?;
                launch::apg_combine(dev, (ca, ua, d.addr(dev)), &groups, eta, s, original, o, n)?;
            }
        }
        if band.rescale <= 0.0 {
            return Ok(g);
        }
        let f = FactorArgs { p0: band.rescale, kind: kind::STD, ..Default::default() };
        let dots = [(src::Y, src::ONE), (src::Y, src::Y), (src::X, src::ONE), (src::X, src::X)];
        let fac = launch::group_factors(dev, o, ca, &groups, &dots, false, f)?;
        let rescaled = self.alloc(n)?;
        launch::scale_groups(dev, o, &fac, &groups, &rescaled)?;
        dev.sync()?;
        Ok(rescaled)
    }
}

/// FDG of the f32 values at `c` and `u` (native layout) into `out` (f32).
pub(crate) fn fdg(
    dev: &Device,
    p: &Pyramid,
    c: u64,
    u: u64,
    bands: &[FdgBand],
    original: bool,
    out: &Buffer,
) -> Result<(), CudaError> {
    let s = &p.spatial;
    let spatial = FdgSpatial {
        batch_stride: s.batch_stride as i64,
        planes: s.planes as i64,
        size: s.others.map(|(n, _)| n as i64),
        stride: s.others.map(|(_, st)| st as i64),
        height: s.height as i64,
        row_stride: s.row_stride as i64,
        width: s.width as i64,
        col_stride: s.col_stride as i64,
    };
    let n = out.len;
    let n64 = n as i64;
    let st = Stages { dev };
    let gather = |x: u64| -> Result<Buffer, CudaError> {
        let b = st.alloc(n)?;
        let o = b.addr(dev);
        let k = dev.function(&kernels::FDG, "fdg_gather")?;
        // SAFETY: matches `fdg_gather(const float*, FdgSpatial, float*, i64)`; both hold n floats
        // and the layout maps 0..n onto 0..n.
        unsafe { launch::launch(dev, &k, dev.grid(n), &mut [param(&x), param(&spatial), param(&o), param(&n64)]) }?;
        Ok(b)
    };
    let lc = st.laplacian(p, gather(c)?)?;
    let mut lu = st.laplacian(p, gather(u)?)?;
    let mut guided = Vec::with_capacity(p.levels);
    for (k, (ck, band)) in lc.into_iter().zip(bands).enumerate() {
        guided.push(st.guide(ck, &lu[k], p.sample_len(k), band, original)?);
    }
    lu.clear();
    let mut r = guided.pop().ok_or_else(|| CudaError::Unsupported("FDG without levels".into()))?;
    for k in (0..p.levels - 1).rev() {
        let (h, w) = p.dims(k + 1);
        let up = st.up(&r, h, w)?;
        r = st.pair("fdg_add", &up, &guided[k])?;
    }
    let (ra, o) = (r.addr(dev), out.addr(dev));
    let k = dev.function(&kernels::FDG, "fdg_scatter")?;
    // SAFETY: matches `fdg_scatter(const float*, FdgSpatial, float*, i64)`, as the gather.
    unsafe { launch::launch(dev, &k, dev.grid(n), &mut [param(&ra), param(&spatial), param(&o), param(&n64)]) }?;
    dev.sync()
}
