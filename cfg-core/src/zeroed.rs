//! Large zeroed buffers backed by transparent huge pages where the system
//! offers them on request (Linux's `madvise` mode).
//!
//! A new output of tens of MB is fresh memory from the allocator (glibc maps
//! anything above its mmap threshold anew on each call), and its first write
//! faults it in page by page: at 33M elements that was most of a call. The
//! buffer is allocated zeroed, so nothing has touched its pages yet, then
//! marked `MADV_HUGEPAGE`, so the kernel backs it with 2 MB pages (512 times
//! fewer faults). The advice changes how pages are backed, never their contents.

/// Huge page size on x86-64 and aarch64 (4 KB base pages).
const HUGE_PAGE: usize = 2 << 20;

/// `n` zeros, huge-page backed where the buffer spans at least two huge pages.
pub fn zeroed_vec<T: bytemuck::Zeroable>(n: usize) -> Vec<T> {
    let v: Vec<T> = bytemuck::zeroed_vec(n);
    advise_huge_pages(v.as_ptr() as usize, std::mem::size_of_val(v.as_slice()));
    v
}

/// Asks for huge pages over the whole huge pages inside `[start, start + bytes)`.
#[cfg(target_os = "linux")]
fn advise_huge_pages(start: usize, bytes: usize) {
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
fn advise_huge_pages(_: usize, _: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_zero_at_every_size() {
        for n in [0, 1, 1000, HUGE_PAGE, 3 * HUGE_PAGE + 17] {
            let v: Vec<f32> = zeroed_vec(n);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|x| x.to_bits() == 0), "{n}");
            let h: Vec<half::bf16> = zeroed_vec(n);
            assert!(h.iter().all(|x| x.to_bits() == 0), "{n}");
        }
    }
}
