//! Runtime CPU-feature dispatch: a [`Task`] runs compiled for AVX2+FMA when the
//! CPU has them (then `mul_add` is one instruction, not a libm call), else
//! portably. Both compute the same bits: fma is exact either way.

use std::sync::atomic::{AtomicBool, Ordering};

/// A unit of work whose `run` is inlined into the dispatched region.
pub trait Task {
    /// What it returns.
    type Out;
    /// The work; implementations are `#[inline(always)]`.
    fn run(self) -> Self::Out;
}

static PORTABLE: AtomicBool = AtomicBool::new(false);

/// Makes every later [`run`] take the portable path (for tests that compare
/// the two paths, and benchmarks).
pub fn force_portable(on: bool) {
    PORTABLE.store(on, Ordering::Relaxed);
}

/// Runs `task` with the best instruction set this CPU has.
#[inline]
pub fn run<T: Task>(task: T) -> T::Out {
    #[cfg(target_arch = "x86_64")]
    if !PORTABLE.load(Ordering::Relaxed)
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("avx2")
    {
        // SAFETY: the features `run_avx2` is compiled for are present.
        return unsafe { run_avx2(task) };
    }
    task.run()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2<T: Task>(task: T) -> T::Out {
    task.run()
}
