//! A null model for measuring the runtime alone: it hands back one prepared
//! prediction per branch, copied where the rank's tensors live (device to
//! device on a CUDA rank), and the allocations made inside it are counted
//! apart from the runtime's. Shared by `tests/steady_state.rs` and
//! `benches/orchestration.rs`; each defines a global allocator that calls
//! [`count_allocation`].

use cfg_core::{DType, Shape, Tensor};
use cfg_runtime::cuda::Buffer;
use cfg_runtime::model::DeviceCall;
use cfg_runtime::tensor::CudaTensor;
use cfg_runtime::{Call, DeviceTensor, Model, ModelError, OutputInfo, Place};
use std::cell::Cell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Heap allocations outside the model, all threads.
pub static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Heap allocations inside the model's calls, all threads.
pub static MODEL_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Whether this thread is inside a model call.
    static IN_MODEL: Cell<bool> = const { Cell::new(false) };
}

/// Counts one allocation (or reallocation) of the calling thread.
pub fn count_allocation() {
    if IN_MODEL.with(Cell::get) { &MODEL_ALLOCATIONS } else { &ALLOCATIONS }.fetch_add(1, Ordering::Relaxed);
}

/// Marks the calling thread as inside a model call while alive.
struct InModel;

impl InModel {
    fn enter() -> InModel {
        IN_MODEL.with(|c| c.set(true));
        InModel
    }
}

impl Drop for InModel {
    fn drop(&mut self) {
        IN_MODEL.with(|c| c.set(false));
    }
}

/// Returns one prepared bf16 prediction per branch.
pub struct Null {
    pred: Tensor,
    /// The prediction on each CUDA device, by ordinal (uploaded once).
    on_device: Mutex<HashMap<usize, Buffer>>,
}

impl Null {
    /// A model whose output `sample` has `shape`; also returns f32 latents of that shape.
    pub fn new(shape: Shape) -> (Null, Tensor) {
        let values: Vec<f32> = (0..shape.numel()).map(|i| ((i % 97) as f32 - 48.0) / 17.0).collect();
        let pred = Tensor::from_f32(DType::BF16, shape.clone(), &values);
        (Null { pred, on_device: Mutex::default() }, Tensor::from_f32(DType::F32, shape, &values))
    }
}

impl Model for Null {
    fn outputs(&self) -> Vec<OutputInfo> {
        vec![OutputInfo { name: "sample".into(), shape: self.pred.shape.clone(), dtype: DType::BF16 }]
    }

    fn predict(&self, call: &Call<'_>) -> Result<Vec<Vec<Tensor>>, ModelError> {
        let _in = InModel::enter();
        Ok(call.branches.iter().map(|_| vec![self.pred.clone()]).collect())
    }

    fn predict_on(&self, place: &Place, call: &DeviceCall<'_>) -> Result<Vec<Vec<DeviceTensor>>, ModelError> {
        let Place::Cuda(dev) = place else { return cfg_runtime::model::predict_on_host(self, place, call) };
        let _in = InModel::enter();
        let error = |e: cfg_runtime::cuda::CudaError| ModelError(e.to_string());
        let mut cache = self.on_device.lock().expect("not poisoned");
        let pred = match cache.entry(dev.context().ordinal()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(dev.upload(&self.pred).map_err(error)?),
        };
        call.branches
            .iter()
            .map(|_| {
                let buf = dev.copy_range(pred, 0, pred.len).map_err(error)?;
                Ok(vec![DeviceTensor::Cuda(CudaTensor { buf, shape: self.pred.shape.clone() })])
            })
            .collect()
    }
}

/// Four branches, linear (the LTX-2 shape of guidance).
pub const FOUR_BRANCHES: &str = r#"Policy(
    name: "four",
    branches: {
        "cond": (prompt: Positive),
        "uncond": (prompt: Negative),
        "perturbed": (prompt: Positive, modify: SkipSelfAttention([29])),
        "isolated": (prompt: Positive, modify: IsolateModality),
    },
    scales: { "s": Const(3.0), "stg": Const(1.0), "m": Const(3.0) },
    outputs: {
        "sample": (
            space: V,
            guidance: Sum([
                Ref("cond"),
                Scaled(scale: "s", offset: -1.0, term: Diff(Ref("cond"), Ref("uncond"))),
                Scaled(scale: "stg", term: Diff(Ref("cond"), Ref("perturbed"))),
                Scaled(scale: "m", offset: -1.0, term: Diff(Ref("cond"), Ref("isolated"))),
            ]),
        ),
    },
)"#;
