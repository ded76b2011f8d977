//! The CPU evaluator's entry points: owned tensors, kept outputs and views
//! agree; operator state is counted and checked on every path.
//!
//! (Integration tests: through the public API, so that the library's own unit
//! test build does not compile every kernel a second time.)

use cfg_core::cpu::{combine_into, evaluate, evaluate_into, evaluate_view};
use cfg_core::expr::Space;
use cfg_core::program::{Form, Op, Program, Value};
use cfg_core::state::GuidanceState;
use cfg_core::{CoreError, DType, Shape, Tensor};
use std::sync::Arc;

/// `out = 2·a − b`, one linear form over branches `a`, `b`.
fn linear() -> Program {
    Program {
        output: "sample".into(),
        space: Space::Eps,
        layout: None,
        branches: vec!["a".into(), "b".into()],
        forms: vec![Form { terms: vec![(0, 2.0), (1, -1.0)] }],
        ops: Vec::new(),
        latches: Vec::new(),
        counters: Vec::new(),
        result: Value::Form(0),
        renoise: None,
    }
}

#[test]
fn views_evaluate_in_place_like_owned_tensors() {
    let shape = Shape::new([2, 3]);
    let a = Tensor::from_f32(DType::BF16, shape.clone(), &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let b = Tensor::from_f32(DType::BF16, shape.clone(), &[0.5; 6]);
    let owned = evaluate(&linear(), &[&a, &b], DType::BF16, &shape, &mut GuidanceState::new()).unwrap();
    let mut out = Tensor::zeros(DType::BF16, shape.clone());
    let (va, vb) = (a.view(), b.view());
    evaluate_view(&linear(), &[va, vb], &shape, &mut GuidanceState::new(), &mut out.view_mut()).unwrap();
    assert_eq!(out, owned);
}

/// CFG-Zero*'s step counter advances once per evaluation on every path:
/// a new output (linear, while zeroed, then the fused operator), a kept one
/// and a view.
#[test]
fn every_path_counts_the_steps() {
    let shape = Shape::new([1, 2, 4]);
    let a = Tensor::from_f32(DType::F32, shape.clone(), &[1.0, -2.0, 3.0, 0.5, 2.0, 1.0, -1.0, 4.0]);
    let b = Tensor::from_f32(DType::F32, shape.clone(), &[0.5; 8]);
    let zero_star = Op::ZeroStar { cond: Value::Form(0), uncond: Value::Form(1), scale: 4.0, original: false };
    let forms = vec![Form { terms: vec![(0, 1.0)] }, Form { terms: vec![(1, 1.0)] }];
    for (ops, result) in [(Vec::new(), Value::Form(0)), (vec![zero_star], Value::Op(0))] {
        let program = Program { forms: forms.clone(), ops, result, counters: vec!["z".into()], ..linear() };
        let mut state = GuidanceState::new();
        evaluate(&program, &[&a, &b], DType::F32, &shape, &mut state).unwrap();
        let mut out = Tensor::zeros(DType::F32, shape.clone());
        evaluate_into(&program, &[&a, &b], DType::F32, &shape, &mut state, &mut out).unwrap();
        evaluate_view(&program, &[a.view(), b.view()], &shape, &mut state, &mut out.view_mut()).unwrap();
        assert_eq!(state.count("z"), 3, "{:?}", program.ops);
    }
}

#[test]
fn views_refuse_an_output_of_another_shape() {
    let shape = Shape::new([2, 3]);
    let a = Tensor::from_f32(DType::F32, shape.clone(), &[1.0; 6]);
    let mut out = Tensor::zeros(DType::F32, Shape::new([3, 2]));
    let err = evaluate_view(&linear(), &[a.view(), a.view()], &shape, &mut GuidanceState::new(), &mut out.view_mut());
    assert!(matches!(err, Err(CoreError::BadShape { .. })), "{err:?}");
}

#[test]
fn combine_is_fma_in_term_order() {
    let a = [1.0f32, 2.0, 3.0];
    let b = [0.1f32, 0.2, 0.3];
    let mut out = [0.0f32; 3];
    combine_into(&[(&a[..], 1.5), (&b[..], -2.5)], &mut out);
    for i in 0..3 {
        assert_eq!(out[i], (-2.5f32).mul_add(b[i], 1.5 * a[i]));
    }
}

#[test]
fn momentum_kept_on_a_device_is_refused_not_restarted() {
    let slot = "apg".to_string();
    let program = Program {
        output: "x".into(),
        space: Space::Eps,
        layout: None,
        branches: vec!["c".into(), "u".into()],
        forms: vec![Form { terms: vec![(0, 1.0)] }, Form { terms: vec![(1, 1.0)] }],
        ops: vec![Op::Apg {
            cond: Value::Form(0),
            uncond: Value::Form(1),
            scale: 5.0,
            momentum: -0.5,
            norm_threshold: 0.0,
            eta: 0.0,
            original: false,
            slot: slot.clone(),
        }],
        latches: vec![],
        counters: vec![],
        result: Value::Op(0),
        renoise: None,
    };
    let shape = Shape::new([1, 4]);
    let t = Tensor::from_f32(DType::F32, shape.clone(), &[1.0, 2.0, 3.0, 4.0]);
    let mut state = GuidanceState::new();
    evaluate(&program, &[&t, &t], DType::F32, &shape, &mut state).expect("a host state evaluates");
    assert!(state.momentum(&slot).is_some());
    state.set_device_momentum(&slot, 4, Arc::new(0u8));
    let e = evaluate(&program, &[&t, &t], DType::F32, &shape, &mut state).unwrap_err();
    assert!(matches!(&e, CoreError::DeviceState(s) if *s == slot), "{e}");
    state.start();
    evaluate(&program, &[&t, &t], DType::F32, &shape, &mut state).expect("a new run starts afresh");

    // A momentum of another size is an error naming the operator, not a silent restart.
    let wide = Shape::new([2, 4]);
    let t8 = Tensor::from_f32(DType::F32, wide.clone(), &[1.0; 8]);
    let e = evaluate(&program, &[&t8, &t8], DType::F32, &wide, &mut state).unwrap_err();
    assert_eq!(e, CoreError::StateMismatch { slot: slot.clone(), held: 4, got: 8 });
    assert!(e.to_string().contains("`Apg`") && e.to_string().contains("explicit start"), "{e}");
    state.start();
    evaluate(&program, &[&t8, &t8], DType::F32, &wide, &mut state).expect("after a start, any shape");
}
