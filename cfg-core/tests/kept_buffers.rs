//! A dropped large tensor's buffer is reused by the next new output or zeroed
//! tensor of its size, which must still be written (or cleared) in full.
//!
//! One test: the kept buffers are process-wide, so no other test in this
//! binary may drop or take them meanwhile.

use cfg_core::cpu::evaluate;
use cfg_core::expr::Space;
use cfg_core::program::{Form, Program, Value};
use cfg_core::recycle::{kept_buffers, release_buffers, KEEP_FROM_BYTES};
use cfg_core::state::GuidanceState;
use cfg_core::{DType, Shape, Tensor};

fn cfg(scale: f32) -> Program {
    Program {
        output: "sample".into(),
        space: Space::V,
        layout: None,
        branches: vec!["cond".into(), "uncond".into()],
        forms: vec![Form { terms: vec![(0, scale), (1, 1.0 - scale)] }],
        ops: vec![],
        latches: vec![],
        counters: vec![],
        result: Value::Form(0),
        renoise: None,
    }
}

fn guided(program: &Program, cond: &Tensor, uncond: &Tensor, dtype: DType) -> Tensor {
    evaluate(program, &[cond, uncond], dtype, &cond.shape, &mut GuidanceState::new()).expect("inputs match")
}

#[test]
fn a_reused_buffer_is_written_in_full() {
    release_buffers();
    for dtype in [DType::F32, DType::BF16] {
        let n = KEEP_FROM_BYTES / dtype.size() + 96;
        let shape = Shape::new([2, n / 2]);
        let values = |k: usize| -> Vec<f32> { (0..n).map(|i| ((i * k) % 1013) as f32 * 0.25 - 100.0).collect() };
        let cond = Tensor::from_f32(dtype, shape.clone(), &values(3));
        let uncond = Tensor::from_f32(dtype, shape.clone(), &values(7));

        // Reference outputs, computed into fresh memory and kept apart.
        let (a, b) = (cfg(7.5), cfg(-2.0));
        let want_a = guided(&a, &cond, &uncond, dtype).bits();
        release_buffers();
        let want_b = guided(&b, &cond, &uncond, dtype).bits();
        release_buffers();

        let first = guided(&a, &cond, &uncond, dtype);
        assert_eq!(first.bits(), want_a);
        let at = first.as_bytes().as_ptr();
        drop(first);
        assert_eq!(kept_buffers(), 1, "{dtype}: a dropped output of {n} elements is kept");

        let second = guided(&b, &cond, &uncond, dtype);
        assert_eq!(second.as_bytes().as_ptr(), at, "{dtype}: the kept buffer is reused");
        assert_eq!(second.bits(), want_b, "{dtype}: every element is written again");
        drop(second);

        let zeros = Tensor::zeros(dtype, shape.clone());
        assert_eq!(zeros.as_bytes().as_ptr(), at, "{dtype}: a zeroed tensor reuses it too");
        assert!(zeros.bits().iter().all(|&x| x == 0), "{dtype}: and it is cleared");
        drop(zeros);
        release_buffers();
        assert_eq!(kept_buffers(), 0);
    }
}
