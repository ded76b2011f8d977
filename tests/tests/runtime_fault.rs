//! A rank that fails makes every rank return an error naming it, promptly.

mod runtime_support;

use cfg_gmm::GmmModel;
use cfg_runtime::scheduler::Sampler;
use cfg_runtime::{run_local, sample, Call, CpuBackend, Model, ModelError, OutputInfo, SampleOptions};
use runtime_support::*;
use std::time::{Duration, Instant};

/// The analytic model, except that it fails on one rank at one step.
struct Failing<'a> {
    inner: &'a GmmModel,
    rank: usize,
    fail_rank: usize,
    fail_step: usize,
    panic: bool,
}

impl Model for Failing<'_> {
    fn outputs(&self) -> Vec<OutputInfo> {
        self.inner.outputs()
    }
    fn predict(&self, call: &Call<'_>) -> Result<Vec<Vec<cfg_core::Tensor>>, ModelError> {
        if self.rank == self.fail_rank && call.info.step == self.fail_step {
            if self.panic {
                panic!("injected panic");
            }
            return Err(ModelError("injected failure".into()));
        }
        self.inner.predict(call)
    }
}

fn run_failing(panic: bool) {
    let policy = policy("ltx2");
    let model = small_tokens(&policy);
    let opts = SampleOptions { steps: 12, sampler: Sampler::default(), ..SampleOptions::default() };
    let started = Instant::now();
    // The communicator's timeout bounds the wait even if an abort were lost.
    let results = run_local(4, Duration::from_secs(5), |comm| {
        let m =
            Failing { inner: &model, rank: cfg_runtime::Communicator::rank(&comm), fail_rank: 2, fail_step: 5, panic };
        sample(&m, &policy, &opts, comm, CpuBackend, &mut |_| {})
    });
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    for (r, res) in results.into_iter().enumerate() {
        let e = res.expect_err("every rank fails");
        assert_eq!(e.origin_rank(), Some(2), "rank {r}: {e}");
        assert_eq!(e.step(), Some(5), "rank {r}: {e}");
        let text = e.to_string();
        assert!(text.contains("rank 2") && text.contains("step 5"), "rank {r}: {text}");
    }
}

#[test]
fn a_model_error_on_rank_2_at_step_5_fails_every_rank() {
    run_failing(false);
}

#[test]
fn a_model_panic_on_rank_2_at_step_5_fails_every_rank() {
    run_failing(true);
}
