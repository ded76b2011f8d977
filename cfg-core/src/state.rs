//! State of stateful operators across the steps of one sampling run.
//!
//! APG's momentum, CFG-Zero*'s step counter and adaptive guidance's latch live
//! here, keyed by the operator's position in the policy. The state is reset by
//! an explicit [`GuidanceState::start`] at the beginning of sampling, never by
//! looking at the step index.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Memory a backend keeps on its device (APG's momentum on a GPU), opaque
/// here: the backend that stored it downcasts it. Never written in place, so
/// clones of a state stay independent.
pub type DeviceBuffer = Arc<dyn Any + Send + Sync>;

/// One operator's state.
#[derive(Debug, Clone)]
pub enum OpState {
    /// Steps evaluated since the start (CFG-Zero*).
    Counter(usize),
    /// APG's running average (f32, the shape of the prediction).
    Momentum(Vec<f32>),
    /// APG's running average of `len` f32 values, kept in device memory.
    DeviceMomentum {
        /// Element count.
        len: usize,
        /// The backend's buffer.
        buffer: DeviceBuffer,
    },
    /// Adaptive guidance has switched guidance off.
    Latched,
}

impl PartialEq for OpState {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (OpState::Counter(a), OpState::Counter(b)) => a == b,
            (OpState::Momentum(a), OpState::Momentum(b)) => a == b,
            (OpState::DeviceMomentum { len: a, buffer: x }, OpState::DeviceMomentum { len: b, buffer: y }) => {
                a == b && Arc::ptr_eq(x, y)
            }
            (OpState::Latched, OpState::Latched) => true,
            _ => false,
        }
    }
}

/// The state of all stateful operators of a policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuidanceState {
    slots: BTreeMap<String, OpState>,
}

impl GuidanceState {
    /// A fresh state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a new sampling run: forgets every operator's state.
    pub fn start(&mut self) {
        self.slots.clear();
    }

    /// Steps counted for `slot`.
    pub fn count(&self, slot: &str) -> usize {
        match self.slots.get(slot) {
            Some(OpState::Counter(n)) => *n,
            _ => 0,
        }
    }

    /// Advances the counter of `slot`.
    pub fn advance(&mut self, slot: &str) {
        let n = self.count(slot) + 1;
        self.slots.insert(slot.to_string(), OpState::Counter(n));
    }

    /// Whether `slot` has latched.
    pub fn latched(&self, slot: &str) -> bool {
        matches!(self.slots.get(slot), Some(OpState::Latched))
    }

    /// Latches `slot` for the rest of the run.
    pub fn latch(&mut self, slot: &str) {
        self.slots.insert(slot.to_string(), OpState::Latched);
    }

    /// The momentum buffer of `slot`, if any step has filled it.
    pub fn momentum(&self, slot: &str) -> Option<&[f32]> {
        match self.slots.get(slot) {
            Some(OpState::Momentum(v)) => Some(v),
            _ => None,
        }
    }

    /// The momentum buffer of `slot` to update in place, if any step has filled it.
    pub fn momentum_mut(&mut self, slot: &str) -> Option<&mut [f32]> {
        match self.slots.get_mut(slot) {
            Some(OpState::Momentum(v)) => Some(v),
            _ => None,
        }
    }

    /// Replaces the momentum buffer of `slot`.
    pub fn set_momentum(&mut self, slot: &str, running: Vec<f32>) {
        self.slots.insert(slot.to_string(), OpState::Momentum(running));
    }

    /// The device-resident momentum of `slot` and its element count, if a
    /// device backend stored one.
    pub fn device_momentum(&self, slot: &str) -> Option<(usize, &DeviceBuffer)> {
        match self.slots.get(slot) {
            Some(OpState::DeviceMomentum { len, buffer }) => Some((*len, buffer)),
            _ => None,
        }
    }

    /// Replaces the momentum of `slot` with `len` values in device memory.
    pub fn set_device_momentum(&mut self, slot: &str, len: usize, buffer: DeviceBuffer) {
        self.slots.insert(slot.to_string(), OpState::DeviceMomentum { len, buffer });
    }

    /// The latched and counter slots, for fingerprints and reports.
    pub fn summary(&self) -> Vec<(String, String)> {
        self.slots
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    OpState::Counter(n) => format!("count {n}"),
                    OpState::Momentum(m) => format!("momentum[{}]", m.len()),
                    OpState::DeviceMomentum { len, .. } => format!("momentum[{len}]"),
                    OpState::Latched => "latched".to_string(),
                };
                (k.clone(), s)
            })
            .collect()
    }
}
