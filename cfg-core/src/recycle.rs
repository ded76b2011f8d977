//! Large tensor buffers kept for reuse instead of going back to the system.
//!
//! glibc maps every allocation of 32 MB or more anew and unmaps it when it is
//! freed. A caller that gets a new output each step and drops the last one
//! would then have the kernel fault in and zero every page of it again: at 33M
//! f32 elements that costs more than the evaluation itself. So a dropped
//! [`Tensor`](crate::Tensor) that large leaves its buffer here, and the next
//! new output (or zeroed buffer) of the same element type and count takes it.
//!
//! At most [`KEPT_BUFFERS`] buffers are kept (the oldest is freed first), and
//! [`release_buffers`] frees them all. Smaller buffers always go back to the
//! allocator, which reuses them itself.

use std::any::Any;
use std::sync::{Mutex, MutexGuard};

/// From this many bytes a dropped buffer is kept (glibc's largest mmap
/// threshold: anything larger is always mapped anew).
pub const KEEP_FROM_BYTES: usize = 32 << 20;
/// The most buffers kept at once.
pub const KEPT_BUFFERS: usize = 4;

/// Kept buffers, oldest first, each a `Vec<T>` of its own element type.
static KEPT: Mutex<Vec<Box<dyn Any + Send>>> = Mutex::new(Vec::new());

fn kept() -> MutexGuard<'static, Vec<Box<dyn Any + Send>>> {
    // A panic elsewhere while the lock was held leaves a list of whole
    // buffers; it is still sound to use.
    KEPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Keeps `v`'s buffer for reuse when it is large enough (leaving `v` empty);
/// a smaller one is left where it is, to be freed as usual.
pub(crate) fn keep<T: Send + 'static>(v: &mut Vec<T>) {
    if v.capacity() * std::mem::size_of::<T>() < KEEP_FROM_BYTES {
        return;
    }
    let mut buffer = std::mem::take(v);
    buffer.clear();
    let oldest = {
        let mut kept = kept();
        kept.push(Box::new(buffer));
        (kept.len() > KEPT_BUFFERS).then(|| kept.remove(0))
    };
    // Freed outside the lock (unmapping takes a while).
    drop(oldest);
}

/// A kept buffer with room for exactly `n` elements of `T` (length 0), if any.
pub(crate) fn take<T: Send + 'static>(n: usize) -> Option<Vec<T>> {
    if n * std::mem::size_of::<T>() < KEEP_FROM_BYTES {
        return None;
    }
    let mut kept = kept();
    let at = kept.iter().rposition(|b| b.downcast_ref::<Vec<T>>().is_some_and(|v| v.capacity() == n))?;
    kept.remove(at).downcast::<Vec<T>>().ok().map(|v| *v)
}

/// Frees every kept buffer (for a caller done with large tensors that wants
/// the memory back now rather than at exit).
pub fn release_buffers() {
    let all = std::mem::take(&mut *kept());
    drop(all);
}

/// How many buffers are kept now.
pub fn kept_buffers() -> usize {
    kept().len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    // One test touches the process-wide list, so no other test races it.
    #[test]
    fn large_buffers_are_kept_matched_by_type_and_count_and_released() {
        release_buffers();
        let n = KEEP_FROM_BYTES / 4;

        let mut small = vec![1.0f32; 1000];
        keep(&mut small);
        assert_eq!(small.len(), 1000, "a small buffer is left to the allocator");
        assert_eq!(kept_buffers(), 0);

        let mut big = vec![1.0f32; n];
        let at = big.as_ptr();
        keep(&mut big);
        assert!(big.is_empty() && big.capacity() == 0);
        assert_eq!(kept_buffers(), 1);
        assert!(take::<bf16>(n).is_none(), "another element type");
        assert!(take::<f32>(n + 1).is_none(), "another count");
        let again = take::<f32>(n).expect("same type and count");
        assert_eq!((again.as_ptr(), again.len(), again.capacity()), (at, 0, n));
        assert_eq!(kept_buffers(), 0);

        for _ in 0..KEPT_BUFFERS + 2 {
            keep(&mut vec![0u16; KEEP_FROM_BYTES / 2]);
        }
        assert_eq!(kept_buffers(), KEPT_BUFFERS, "the oldest are freed");
        release_buffers();
        assert_eq!(kept_buffers(), 0);
    }
}
