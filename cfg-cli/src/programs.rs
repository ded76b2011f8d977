//! Hand-built canonical programs for `cfg selftest` and `cfg bench`.

use cfg_core::program::{Form, Op, Program, Value};

/// A program over `branches` anonymous branches (`b0`, `b1`, ...) whose result
/// is the last op, or the first form when there is no op.
pub fn hand_built(branches: usize, forms: Vec<Form>, ops: Vec<Op>) -> Program {
    let result = if ops.is_empty() { Value::Form(0) } else { Value::Op(ops.len() - 1) };
    Program {
        output: "x".into(),
        space: cfg_core::expr::Space::Eps,
        layout: None,
        branches: (0..branches).map(|b| format!("b{b}")).collect(),
        forms,
        ops,
        latches: vec![],
        counters: vec![],
        result,
        renoise: None,
    }
}
