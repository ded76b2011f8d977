//! Kernel parameter structs, laid out exactly as their C twins in `kernels/*.cu`.

use cudarc::driver::DeviceRepr;

/// Most branches (terms) one launch reads.
pub const MAX_TERMS: usize = 8;
/// Most forms one launch evaluates.
pub const MAX_FORMS: usize = 4;

/// `struct Forms` (common.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Forms {
    pub x: [u64; MAX_TERMS],
    pub w: [[f32; MAX_TERMS]; MAX_FORMS],
    pub mask: [u32; MAX_FORMS],
    pub first: [i32; MAX_FORMS],
    pub branches: i32,
    pub forms: i32,
}

impl Forms {
    /// Forms over the branch pointers `x`; call [`Forms::push`] per form.
    pub fn new(x: &[u64]) -> Forms {
        let mut f = Forms { branches: x.len() as i32, first: [-1; MAX_FORMS], ..Default::default() };
        f.x[..x.len()].copy_from_slice(x);
        f
    }

    /// Adds a form from (branch slot, weight) terms sorted by slot.
    pub fn push(&mut self, terms: &[(usize, f32)]) {
        let k = self.forms as usize;
        for &(b, w) in terms {
            self.w[k][b] = w;
            self.mask[k] |= 1 << b;
        }
        self.first[k] = terms.first().map_or(-1, |t| t.0 as i32);
        self.forms += 1;
    }
}

/// `struct Outs` (common.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Outs {
    pub o: [u64; MAX_FORMS],
}

/// `struct Groups` (common.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Groups {
    pub count: i64,
    pub len: i64,
    pub width: i64,
    pub per_sample: i64,
    pub channel: i32,
    pub pad: i32,
}

impl Groups {
    pub fn new(reduce: cfg_core::reduce::Reduce, shape: &cfg_core::Shape) -> Groups {
        let g = cfg_core::reduce::Groups::new(reduce, shape);
        Groups {
            count: g.count as i64,
            len: g.len as i64,
            width: g.width as i64,
            per_sample: g.per_sample as i64,
            // Strided groups (channel, axis) share one index formula.
            channel: i32::from(!reduce.is_contiguous()),
            pad: 0,
        }
    }
}

/// `struct RenormArgs` (renorm_token.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RenormArgs {
    pub eps: f64,
    pub lo: f64,
    pub hi: f64,
    pub tokens: i64,
    pub width: i32,
    pub has_lo: i32,
    pub has_hi: i32,
    pub pad: i32,
}

/// Factor kinds of factors.cu.
pub(crate) mod kind {
    pub const RENORM: i32 = 0;
    pub const NORM_CAP: i32 = 1;
    pub const STD: i32 = 2;
    pub const ZERO_STAR: i32 = 3;
    pub const MAGNITUDE: i32 = 4;
    pub const APG_CLIP: i32 = 5;
    pub const APG_PROJ: i32 = 6;
    pub const COSINE: i32 = 7;
    pub const TCFG_ALPHA: i32 = 8;
    pub const TCFG_BETA: i32 = 9;
    pub const REJECT: i32 = 10;
}

/// `struct FactorArgs` (factors.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FactorArgs {
    pub p0: f64,
    pub p1: f64,
    pub p2: f64,
    pub len: i64,
    pub kind: i32,
    pub has_lo: i32,
    pub has_hi: i32,
    pub pad: i32,
}

/// `struct GroupArgs` (rescale.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GroupArgs {
    pub f: FactorArgs,
    pub groups: i64,
    pub len: i64,
    pub nseg: i64,
    pub n: i64,
}

/// Dot operand sources of stats.cu.
pub(crate) mod src {
    pub const X: i32 = 0;
    pub const Y: i32 = 1;
    pub const ONE: i32 = 2;
    pub const X_MINUS_Y: i32 = 3;
}

/// `struct Dots` (stats.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Dots {
    pub count: i32,
    pub a: [i32; 4],
    pub b: [i32; 4],
}

impl Dots {
    pub fn of(pairs: &[(i32, i32)]) -> Dots {
        let mut d = Dots { count: pairs.len() as i32, ..Default::default() };
        for (i, &(a, b)) in pairs.iter().enumerate() {
            d.a[i] = a;
            d.b[i] = b;
        }
        d
    }
}

// SAFETY: each struct is #[repr(C)] with only plain numbers, laid out as its C
// twin (same field order and types; i64/u64/f64 before i32 so no hidden padding
// differs), so the kernel reads the bytes the host wrote.
unsafe impl DeviceRepr for Forms {}
// SAFETY: as above.
unsafe impl DeviceRepr for Outs {}
// SAFETY: as above.
unsafe impl DeviceRepr for Groups {}
// SAFETY: as above.
unsafe impl DeviceRepr for RenormArgs {}
// SAFETY: as above.
unsafe impl DeviceRepr for FactorArgs {}
// SAFETY: as above.
unsafe impl DeviceRepr for GroupArgs {}
// SAFETY: as above.
unsafe impl DeviceRepr for Dots {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_c_structs() {
        assert_eq!(std::mem::size_of::<Forms>(), 64 + 128 + 16 + 16 + 8);
        assert_eq!(std::mem::size_of::<Groups>(), 40);
        assert_eq!(std::mem::size_of::<RenormArgs>(), 48);
        assert_eq!(std::mem::size_of::<FactorArgs>(), 48);
        assert_eq!(std::mem::size_of::<GroupArgs>(), 80);
        assert_eq!(std::mem::size_of::<Dots>(), 36);
    }
}
