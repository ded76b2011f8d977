//! Every built-in policy parses, validates without warnings and lowers at every step.

use cfg_core::lower::{lower, Overrides};
use cfg_core::schedule::StepContext;
use cfg_core::state::GuidanceState;
use cfg_policies::library;

#[test]
fn every_builtin_policy_loads_and_lowers() {
    assert!(!library::names().is_empty());
    for name in library::names() {
        let loaded = cfg_policies::resolve(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(loaded.policy.name, name, "file stem and `name` must agree");
        assert!(loaded.warnings.is_empty(), "{name}: {:?}", loaded.warnings);
        let n = loaded.policy.steps.unwrap_or(30);
        for step in 0..n {
            let ctx = StepContext {
                step,
                num_steps: n,
                sigma: Some(1.0 - step as f64 / n as f64),
                chunks: cfg_core::schedule::ChunkTimes::NONE,
            };
            let program = lower(&loaded.policy, &ctx, &GuidanceState::new(), &Overrides::none())
                .unwrap_or_else(|e| panic!("{name} step {step}: {e}"));
            assert_eq!(program.outputs.len(), loaded.policy.outputs.len());
        }
    }
}

#[test]
fn default_policy_is_in_the_library() {
    assert!(library::source(library::DEFAULT).is_some());
}
