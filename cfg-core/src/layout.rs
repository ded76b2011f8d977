//! Declared latent layouts: which axis of an output's prediction is the
//! batch, the channels, the image rows and columns, the frames, or a
//! flattened token grid, so that spatial operators (FDG's pyramid) know
//! their axes.
//!
//! A layout is written per output (`layout: (axes: [B, C, H, W])`) and
//! checked against the prediction's shape at every step.

use crate::shape::Shape;
use serde::{Deserialize, Serialize};
use std::fmt;

/// One named axis of a layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Axis {
    /// The batch (first axis).
    B,
    /// Channels (features).
    C,
    /// Image rows.
    H,
    /// Image columns.
    W,
    /// Video frames.
    F,
    /// Tokens: a flattened grid (frames ×) rows × columns, row-major, as the
    /// layout's `grid` declares.
    T,
}

/// The grid a token axis flattens, row-major: (frames ×) height × width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    /// Frames (video), outermost; absent for images.
    #[serde(default)]
    pub frames: Option<usize>,
    /// Rows.
    pub height: usize,
    /// Columns (innermost).
    pub width: usize,
}

/// The declared layout of an output's prediction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    /// The axes in order, batch first: `[B, C, H, W]`, `[B, T, C]`, `[B, C, F, H, W]`.
    pub axes: Vec<Axis>,
    /// The grid of a `T` axis (required with `T`, refused without it).
    #[serde(default)]
    pub grid: Option<Grid>,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let axes: Vec<String> = self.axes.iter().map(|a| format!("{a:?}")).collect();
        write!(f, "[{}]", axes.join(", "))?;
        if let Some(g) = self.grid {
            match g.frames {
                Some(fr) => write!(f, " with grid {fr}×{}×{}", g.height, g.width)?,
                None => write!(f, " with grid {}×{}", g.height, g.width)?,
            }
        }
        Ok(())
    }
}

/// The spatial structure of a prediction under its layout: every sample is
/// `planes` images of `height × width`; element (b, p, y, x) lives at flat
/// index `b·batch_stride + plane_offset(p) + y·row_stride + x·col_stride`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spatial {
    /// Samples.
    pub batch: usize,
    /// Flat distance between samples.
    pub batch_stride: usize,
    /// Images per sample (every axis but B, H and W, multiplied).
    pub planes: usize,
    /// Up to three other axes (channels, frames), outermost first, as (size, stride); unused slots (1, 0).
    pub others: [(usize, usize); 3],
    /// Rows.
    pub height: usize,
    /// Flat distance between rows.
    pub row_stride: usize,
    /// Columns.
    pub width: usize,
    /// Flat distance between columns.
    pub col_stride: usize,
}

impl Spatial {
    /// The flat offset of plane `p` within a sample (mixed radix over `others`).
    #[inline]
    pub fn plane_offset(&self, p: usize) -> usize {
        let mut rest = p;
        let mut off = 0;
        for &(size, stride) in self.others.iter().rev() {
            off += (rest % size) * stride;
            rest /= size;
        }
        off
    }

    /// The flat index of element (b, p, y, x).
    #[inline]
    pub fn index(&self, b: usize, p: usize, y: usize, x: usize) -> usize {
        b * self.batch_stride + self.plane_offset(p) + y * self.row_stride + x * self.col_stride
    }
}

impl Layout {
    /// Why the layout itself is malformed (checked when the policy loads).
    pub fn problem(&self) -> Option<String> {
        if self.axes.first() != Some(&Axis::B) {
            return Some("the first axis must be `B` (the batch)".into());
        }
        for (i, a) in self.axes.iter().enumerate() {
            if self.axes[..i].contains(a) {
                return Some(format!("axis `{a:?}` appears twice"));
            }
        }
        let has = |a: Axis| self.axes.contains(&a);
        match (has(Axis::T), self.grid) {
            (true, None) => return Some("a `T` (token) axis needs `grid: (height: H, width: W)`".into()),
            (false, Some(_)) => return Some("`grid` describes a `T` axis, and the axes have none".into()),
            (true, Some(g)) => {
                if [Axis::H, Axis::W, Axis::F].iter().any(|&a| has(a)) {
                    return Some(
                        "with a `T` axis the grid holds the rows, columns and frames: drop `H`, `W`, `F`".into(),
                    );
                }
                if g.height == 0 || g.width == 0 || g.frames == Some(0) {
                    return Some("every grid size must be ≥ 1".into());
                }
            }
            (false, None) => {}
        }
        if has(Axis::H) != has(Axis::W) {
            return Some("`H` and `W` go together (an image has rows and columns)".into());
        }
        None
    }

    /// The named axes with their sizes for `shape`, a `T` axis expanded into
    /// its grid (`F`, `H`, `W`); an error saying why the shape does not fit.
    pub fn resolve(&self, shape: &Shape) -> Result<Vec<(Axis, usize)>, String> {
        if let Some(p) = self.problem() {
            return Err(p);
        }
        let dims = shape.dims();
        if dims.len() != self.axes.len() {
            return Err(format!("layout {self} has {} axes, the prediction has {}", self.axes.len(), dims.len()));
        }
        let mut out = Vec::with_capacity(dims.len() + 2);
        for (&axis, &size) in self.axes.iter().zip(dims) {
            match (axis, self.grid) {
                (Axis::T, Some(g)) => {
                    let want = g.frames.unwrap_or(1) * g.height * g.width;
                    if size != want {
                        return Err(format!("layout {self} needs T = {want} tokens, the prediction has {size}"));
                    }
                    out.extend(g.frames.map(|f| (Axis::F, f)));
                    out.extend([(Axis::H, g.height), (Axis::W, g.width)]);
                }
                _ => out.push((axis, size)),
            }
        }
        Ok(out)
    }

    /// The frames of `shape`: (count, flat distance between frames); an
    /// error when it does not fit or the layout has no frames.
    pub fn frames(&self, shape: &Shape) -> Result<(usize, usize), String> {
        let axes = self.resolve(shape)?;
        let at = axes
            .iter()
            .position(|(a, _)| *a == Axis::F)
            .ok_or_else(|| format!("layout {self} has no frames (`F`, or a `T` grid with `frames`)"))?;
        Ok((axes[at].1, axes[at + 1..].iter().map(|(_, n)| n).product()))
    }

    /// The spatial structure of `shape` (an error when it does not fit or
    /// the layout has no rows and columns).
    pub fn spatial(&self, shape: &Shape) -> Result<Spatial, String> {
        let axes = self.resolve(shape)?;
        let mut strides = vec![0usize; axes.len()];
        let mut s = 1;
        for i in (0..axes.len()).rev() {
            strides[i] = s;
            s *= axes[i].1;
        }
        let find = |a: Axis| axes.iter().position(|(x, _)| *x == a);
        let (Some(h), Some(w)) = (find(Axis::H), find(Axis::W)) else {
            return Err(format!("layout {self} has no image rows and columns (`H`, `W` or a `T` grid)"));
        };
        let others: Vec<(usize, usize)> = axes
            .iter()
            .zip(&strides)
            .filter(|((a, _), _)| !matches!(a, Axis::B | Axis::H | Axis::W))
            .map(|((_, n), s)| (*n, *s))
            .collect();
        let mut slots = [(1, 0); 3];
        // At most C and F remain (each axis appears once).
        slots[3 - others.len()..].copy_from_slice(&others);
        Ok(Spatial {
            batch: axes[0].1,
            batch_stride: strides[0],
            planes: others.iter().map(|(n, _)| n).product(),
            others: slots,
            height: axes[h].1,
            row_stride: strides[h],
            width: axes[w].1,
            col_stride: strides[w],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(axes: &[Axis], grid: Option<Grid>) -> Layout {
        Layout { axes: axes.to_vec(), grid }
    }

    #[test]
    fn bchw_is_planar() {
        use Axis::*;
        let s = layout(&[B, C, H, W], None).spatial(&Shape::new([2, 3, 4, 5])).unwrap();
        assert_eq!((s.batch, s.planes, s.height, s.width), (2, 3, 4, 5));
        assert_eq!(s.index(1, 2, 3, 4), 60 + 2 * 20 + 3 * 5 + 4);
    }

    #[test]
    fn a_token_grid_is_rows_and_columns_of_tokens() {
        use Axis::*;
        let l = layout(&[B, T, C], Some(Grid { frames: None, height: 2, width: 3 }));
        let s = l.spatial(&Shape::new([2, 6, 4])).unwrap();
        assert_eq!((s.planes, s.height, s.width, s.col_stride, s.row_stride), (4, 2, 3, 4, 12));
        // Token (y=1, x=2), channel 3 of sample 1.
        assert_eq!(s.index(1, 3, 1, 2), 24 + (3 + 2) * 4 + 3);
        let e = l.spatial(&Shape::new([2, 5, 4])).unwrap_err();
        assert!(e.contains("T = 6 tokens") && e.contains("has 5"), "{e}");
    }

    #[test]
    fn video_planes_cover_channels_and_frames() {
        use Axis::*;
        let s = layout(&[B, C, F, H, W], None).spatial(&Shape::new([1, 2, 3, 4, 4])).unwrap();
        assert_eq!(s.planes, 6);
        let mut seen: Vec<usize> = (0..6).map(|p| s.plane_offset(p)).collect();
        seen.sort();
        assert_eq!(seen, vec![0, 16, 32, 48, 64, 80]);
        let l = layout(&[B, T, C], Some(Grid { frames: Some(2), height: 2, width: 2 }));
        let s = l.spatial(&Shape::new([1, 8, 3])).unwrap();
        assert_eq!((s.planes, s.others[1], s.others[2]), (6, (2, 12), (3, 1)));
    }

    #[test]
    fn malformed_layouts_and_shapes_are_explained() {
        use Axis::*;
        assert!(layout(&[C, B], None).problem().unwrap().contains("first axis"));
        assert!(layout(&[B, C, C], None).problem().unwrap().contains("twice"));
        assert!(layout(&[B, T, C], None).problem().unwrap().contains("grid"));
        assert!(layout(&[B, C, H], None).problem().unwrap().contains("go together"));
        let e = layout(&[B, C, H, W], None).resolve(&Shape::new([2, 16, 8])).unwrap_err();
        assert!(e.contains("4 axes") && e.contains("has 3"), "{e}");
        let e = layout(&[B, T, C], Some(Grid { frames: None, height: 0, width: 2 })).problem().unwrap();
        assert!(e.contains("≥ 1"), "{e}");
        let e = layout(&[B, C], None).spatial(&Shape::new([2, 3])).unwrap_err();
        assert!(e.contains("no image rows"), "{e}");
    }
}
