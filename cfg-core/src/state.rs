//! State of stateful operators across the steps of one sampling run.
//!
//! APG's momentum, CFG-Zero*'s step counter and adaptive guidance's latch live
//! here, keyed by the operator's position in the policy. The state is reset by
//! an explicit [`GuidanceState::start`] at the beginning of sampling, never by
//! looking at the step index.

use std::collections::BTreeMap;

/// One operator's state.
#[derive(Debug, Clone, PartialEq)]
pub enum OpState {
    /// Steps evaluated since the start (CFG-Zero*).
    Counter(usize),
    /// APG's running average (f32, the shape of the prediction).
    Momentum(Vec<f32>),
    /// Adaptive guidance has switched guidance off.
    Latched,
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

    /// Replaces the momentum buffer of `slot`.
    pub fn set_momentum(&mut self, slot: &str, running: Vec<f32>) {
        self.slots.insert(slot.to_string(), OpState::Momentum(running));
    }

    /// The latched and counter slots, for fingerprints and reports.
    pub fn summary(&self) -> Vec<(String, String)> {
        self.slots
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    OpState::Counter(n) => format!("count {n}"),
                    OpState::Momentum(m) => format!("momentum[{}]", m.len()),
                    OpState::Latched => "latched".to_string(),
                };
                (k.clone(), s)
            })
            .collect()
    }
}
