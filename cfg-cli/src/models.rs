//! The models `cfg plan` and `cfg sample` can use, built for a policy's outputs.

use cfg_core::expr::Policy;
use cfg_core::DType;
use cfg_gmm::GmmModel;
use cfg_runtime::model::OutputInfo;
use cfg_runtime::Model;

/// Which analytic model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelKind {
    /// The 2-D class-conditional mixture (`[batch, 2]` f32 per output); plots.
    Gmm2d,
    /// iid tokens, `[batch, 1024, 64]` bf16 per output: realistic tensor sizes;
    /// for a policy whose outputs declare a `[B, C, H, W]` layout, images of
    /// as many elements, `[batch, 16, 64, 64]`; for `[B, C, F, H, W]`, videos
    /// `[batch, 16, 12, 32, 32]` (two MAGI-1 chunks of 6 frames).
    Tokens,
}

/// Default batch of each model.
pub fn default_batch(kind: ModelKind) -> usize {
    match kind {
        ModelKind::Gmm2d => 4096,
        ModelKind::Tokens => 4,
    }
}

/// The model for `policy`'s outputs.
pub fn build(kind: ModelKind, policy: &Policy, batch: Option<usize>) -> GmmModel {
    let names: Vec<&str> = policy.outputs.names().collect();
    let batch = batch.unwrap_or_else(|| default_batch(kind)).max(1);
    match kind {
        ModelKind::Gmm2d => GmmModel::planar(&names, batch),
        ModelKind::Tokens if layout_axes(policy) == 4 => GmmModel::image(&names, batch, 16, 64, 64, DType::BF16),
        ModelKind::Tokens if layout_axes(policy) == 5 => GmmModel::video(&names, batch, 16, 12, 32, 32, DType::BF16),
        ModelKind::Tokens => GmmModel::tokens(&names, batch, 1024, 64, DType::BF16),
    }
}

/// The most axes a layout of `policy`'s outputs declares (0 without one):
/// 4 for `[B, C, H, W]` images, 5 for `[B, C, F, H, W]` videos.
pub fn layout_axes(policy: &Policy) -> usize {
    policy.outputs.iter().filter_map(|(_, o)| o.layout.as_ref()).map(|l| l.axes.len()).max().unwrap_or(0)
}

/// The outputs of `model`, in the policy's order.
pub fn outputs_in_policy_order(model: &GmmModel, policy: &Policy) -> Vec<OutputInfo> {
    let all = model.outputs();
    policy.outputs.names().filter_map(|n| all.iter().find(|o| o.name == n).cloned()).collect()
}

/// Human-readable bytes.
pub fn bytes(n: usize) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n} B")
    }
}
