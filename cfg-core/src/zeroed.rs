//! Large zeroed buffers backed by transparent huge pages where the system
//! offers them on request (Linux's `madvise` mode).
//!
//! A new output of tens of MB is fresh memory from the allocator (glibc maps
//! anything above its mmap threshold anew on each call), and its first write
//! faults it in page by page: at 33M elements that was most of a call. The
//! buffer is marked `MADV_HUGEPAGE` before anything touches its pages, so the
//! kernel backs it with 2 MB pages (512 times fewer faults). The advice
//! changes how pages are backed, never their contents.

use crate::recycle;

/// Huge page size on x86-64 and aarch64 (4 KB base pages).
const HUGE_PAGE: usize = 2 << 20;
/// From this size a buffer is zeroed by all threads, not by `calloc`.
const PARALLEL_FILL: usize = 4 << 20;
/// From this size glibc always maps a buffer anew (its largest mmap
/// threshold): `calloc` then gets zero pages from the kernel and writes nothing.
const FRESH: usize = recycle::KEEP_FROM_BYTES;
/// Bytes zeroed per parallel task.
const FILL_CHUNK: usize = 256 << 10;

/// `n` zeros, huge-page backed where the buffer spans at least two huge pages.
///
/// Between [`PARALLEL_FILL`] and [`FRESH`] bytes the allocator reuses freed
/// memory, which `calloc` would clear on one thread: the threads of the pool
/// clear it instead, each its own part (as the evaluation then writes it).
/// From [`FRESH`] bytes a kept buffer (see [`crate::recycle`]) is cleared the
/// same way, and only without one does `calloc` map zero pages.
pub fn zeroed_vec<T: bytemuck::Zeroable + Send + 'static>(n: usize) -> Vec<T> {
    let bytes = n * std::mem::size_of::<T>();
    let mut v: Vec<T> = match recycle::take(n) {
        Some(kept) => kept,
        None if (PARALLEL_FILL..FRESH).contains(&bytes) => {
            let v = Vec::with_capacity(n);
            advise_huge_pages(v.as_ptr() as usize, bytes);
            v
        }
        None => {
            let v: Vec<T> = bytemuck::zeroed_vec(n);
            advise_huge_pages(v.as_ptr() as usize, bytes);
            return v;
        }
    };
    let per_task = FILL_CHUNK / std::mem::size_of::<T>().max(1);
    crate::par::for_each_chunk_mut(&mut v.spare_capacity_mut()[..n], per_task, |_, c| {
        for x in c {
            x.write(T::zeroed());
        }
    });
    // SAFETY: the first `n` elements were all written above.
    unsafe { v.set_len(n) };
    v
}

/// Asks for huge pages over the whole huge pages inside `[start, start + bytes)`.
#[cfg(target_os = "linux")]
pub(crate) fn advise_huge_pages(start: usize, bytes: usize) {
    if bytes < 2 * HUGE_PAGE {
        return;
    }
    let first = start.next_multiple_of(HUGE_PAGE);
    let end = (start + bytes) / HUGE_PAGE * HUGE_PAGE;
    if end > first {
        // SAFETY: `[first, end)` lies inside the live allocation that starts at
        // `start`; MADV_HUGEPAGE is advice about backing, it reads and writes
        // no memory, and its failure (THP off) leaves the buffer as it was.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn advise_huge_pages(_: usize, _: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_zero_at_every_size() {
        for n in [0, 1, 1000, HUGE_PAGE, 3 * HUGE_PAGE + 17, PARALLEL_FILL / 4 + 3, FRESH / 4 - 1] {
            let v: Vec<f32> = zeroed_vec(n);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|x| x.to_bits() == 0), "{n}");
            let h: Vec<half::bf16> = zeroed_vec(n);
            assert!(h.iter().all(|x| x.to_bits() == 0), "{n}");
        }
    }
}
