//! Per-branch output slicing (a branch's `slice:`, vllm-omni's
//! `output_slice`): a model output with extra tokens along one axis is cut to
//! the output's shape right after the model call, before any collective or
//! combine, so everything after it sees the output's own shape.
//!
//! A slice of a row-major tensor is `outer` runs of `want` contiguous
//! elements, run `o` starting at element `o·got + start` of the source
//! ([`Rows`]); the CPU copies the runs, a CUDA rank copies them device to
//! device (no host round trip).

use cfg_core::branch::OutputSlice;
use cfg_core::Shape;

/// Where the kept elements of a sliced prediction are, in elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rows {
    /// Runs (the product of the dims before the axis).
    pub outer: usize,
    /// Elements per run in the source (its extent along the axis × the inner dims).
    pub got: usize,
    /// Elements kept per run (the output's extent × the inner dims).
    pub want: usize,
    /// First kept element of each run.
    pub start: usize,
}

/// The runs that cut a prediction of shape `got` to the output's shape
/// `want` with `slice`; `Err` says what was expected, for the caller's
/// error (which names rank, step, branch and output).
pub fn rows(slice: &OutputSlice, got: &Shape, want: &Shape) -> Result<Rows, String> {
    let (g, w, a) = (got.dims(), want.dims(), slice.axis);
    let expected = || {
        let dims: Vec<String> = w
            .iter()
            .enumerate()
            .map(|(i, d)| if i == a { format!("≥{}", d + slice.offset) } else { d.to_string() })
            .collect();
        format!("[{}]: the output's shape {want} with {}", dims.join(", "), slice.describe(w[a]))
    };
    if a == 0 || a >= w.len() {
        return Err(format!("a slice along axis {a}, but the output {want} has axes 1..{}", w.len()));
    }
    let same_elsewhere = g.len() == w.len() && g.iter().zip(w).enumerate().all(|(i, (x, y))| i == a || x == y);
    let start = slice.start(g.get(a).copied().unwrap_or(0), w[a]);
    match (same_elsewhere, start) {
        (true, Some(start)) => {
            let inner: usize = w[a + 1..].iter().product();
            Ok(Rows { outer: w[..a].iter().product(), got: g[a] * inner, want: w[a] * inner, start: start * inner })
        }
        _ => Err(expected()),
    }
}

/// The kept bytes of `src` (elements of `size` bytes) under `rows`.
pub fn cut_bytes(src: &[u8], size: usize, rows: &Rows) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.outer * rows.want * size);
    for o in 0..rows.outer {
        let at = (o * rows.got + rows.start) * size;
        out.extend_from_slice(&src[at..at + rows.want * size]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(axis: usize, offset: usize, from_end: bool) -> OutputSlice {
        OutputSlice { axis, offset, from_end }
    }

    #[test]
    fn the_runs_keep_the_named_part() {
        // [2, 5, 3] → [2, 2, 3]: tokens 3..5 (the last two), then tokens 1..3.
        let (got, want) = (Shape::new([2, 5, 3]), Shape::new([2, 2, 3]));
        let r = rows(&slice(1, 0, true), &got, &want).unwrap();
        assert_eq!(r, Rows { outer: 2, got: 15, want: 6, start: 9 });
        let src: Vec<u8> = (0..30).collect();
        assert_eq!(cut_bytes(&src, 1, &r), [9, 10, 11, 12, 13, 14, 24, 25, 26, 27, 28, 29]);
        let r = rows(&slice(1, 1, false), &got, &want).unwrap();
        assert_eq!(cut_bytes(&src, 1, &r), [3, 4, 5, 6, 7, 8, 18, 19, 20, 21, 22, 23]);
        // The last axis, skipping one from the end.
        let r = rows(&slice(2, 1, true), &Shape::new([1, 2, 4]), &Shape::new([1, 2, 2])).unwrap();
        assert_eq!(cut_bytes(&(0..8).collect::<Vec<u8>>(), 1, &r), [1, 2, 5, 6]);
    }

    #[test]
    fn shapes_that_do_not_fit_say_what_was_expected() {
        let want = Shape::new([2, 4, 3]);
        for (s, got) in [
            (slice(1, 0, true), Shape::new([2, 3, 3])),     // too short
            (slice(1, 2, false), Shape::new([2, 5, 3])),    // too short after the offset
            (slice(1, 0, false), Shape::new([2, 6, 4])),    // another dim differs
            (slice(1, 0, false), Shape::new([2, 6])),       // another rank
            (slice(0, 0, false), Shape::new([3, 4, 3])),    // the batch
            (slice(3, 0, false), Shape::new([2, 4, 3, 1])), // beyond the output's axes
        ] {
            let e = rows(&s, &got, &want).unwrap_err();
            assert!(e.contains("axis"), "{s:?} {got}: {e}");
        }
        let e = rows(&slice(1, 2, false), &Shape::new([2, 5, 3]), &want).unwrap_err();
        assert!(e.contains("[2, ≥6, 3]"), "{e}");
    }
}
