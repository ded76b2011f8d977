//! The lowering cache never hands out a stale program: for every library
//! policy, over whole runs (scales moving, windows opening and closing,
//! zero-init counters advancing, adaptive guidance latching midway), the
//! cached program of each step equals a fresh lowering of that step. A
//! lowering that read something without recording it fails here.

use cfg_core::lower::{lower, Overrides};
use cfg_core::lower_cache::LoweringCache;
use cfg_core::schedule::StepContext;
use cfg_core::state::GuidanceState;

#[test]
fn every_library_policy_caches_exactly() {
    for name in cfg_policies::library::names() {
        let source = cfg_policies::library::source(name).expect("listed");
        let policy = cfg_policies::parse(source, name).expect("library policies parse").policy;
        for steps in [1, 7, 30] {
            let mut state = GuidanceState::new();
            state.start();
            let mut cache = LoweringCache::new();
            let overrides = Overrides::none();
            for step in 0..steps {
                let sigma = 1.0 - step as f64 / steps as f64;
                let ctx = StepContext {
                    step,
                    num_steps: steps,
                    sigma: Some(sigma),
                    chunks: cfg_core::schedule::ChunkTimes::NONE,
                };
                let fresh = lower(&policy, &ctx, &state, &overrides).expect("library policies lower");
                let (cached, _) = cache.lower(&policy, &ctx, &state, &overrides).expect("lowers");
                assert_eq!(*cached, fresh, "{name}: step {step} of {steps}");
                for program in &fresh.outputs {
                    for slot in &program.counters {
                        state.advance(slot);
                    }
                    // Adaptive guidance latches halfway through the run.
                    if step == steps / 2 {
                        for latch in &program.latches {
                            state.latch(&latch.slot);
                        }
                    }
                }
            }
        }
    }
}
