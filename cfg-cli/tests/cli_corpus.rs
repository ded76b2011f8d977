//! The CLI bad-input corpus (`tests/corpus/cli/cases.txt`): every invocation
//! exits with its expected code and says what its line expects; none panics
//! (101) or aborts (134), and no child grows beyond 1 GiB of memory.

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::path::{Path, PathBuf};
use std::process::Command;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus")
}

/// One tensor of a dump: name, shape, values.
type Entry<'a> = (&'a str, Vec<usize>, Vec<f32>);

/// Writes `<step>/<name>` f32 tensors, one per entry of each step.
fn dump(path: &Path, steps: &[Vec<Entry<'_>>]) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = steps
        .iter()
        .enumerate()
        .flat_map(|(s, ts)| {
            ts.iter().map(move |(n, shape, v)| {
                let name = if n.contains('/') || *n == "latents" { n.to_string() } else { format!("{s}/{n}") };
                (name, shape.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect())
            })
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, shape, b)| (n.clone(), TensorView::new(Dtype::F32, shape.clone(), b).expect("view")))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).expect("serialize")).expect("write dump");
}

/// The scratch folder: names that shadow library policies, and small dumps.
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    std::fs::create_dir(d.join("cfg")).expect("folder named like a policy");
    std::fs::write(d.join("apg"), "not a policy").expect("file named like a policy");
    let v = |a: f32| (0..8).map(|i| a + i as f32 * 0.25).collect::<Vec<f32>>();
    let shape = vec![2, 4];
    let pair = |c: Vec<f32>, u: Vec<f32>| vec![("cond", shape.clone(), c), ("uncond", shape.clone(), u)];
    dump(&d.join("ok.safetensors"), &[pair(v(1.0), v(0.5)), pair(v(0.9), v(0.4))]);
    let mut nan = v(1.0);
    nan[1] = f32::NAN;
    dump(&d.join("nan.safetensors"), &[pair(nan, v(0.5)), pair(v(0.9), v(0.4))]);
    dump(&d.join("big.safetensors"), &[pair(vec![1e10; 8], vec![-1e10; 8])]);
    let wide = |a: f32| (0..16).map(|i| a + i as f32 * 0.1).collect::<Vec<f32>>();
    dump(
        &d.join("shape.safetensors"),
        &[pair(v(1.0), v(0.5)), vec![("cond", vec![4, 4], wide(1.0)), ("uncond", vec![4, 4], wide(0.5))]],
    );
    let mut extra = vec![pair(v(1.0), v(0.5)), pair(v(0.9), v(0.4))];
    extra[0].push(("latents", shape.clone(), v(0.0)));
    dump(&d.join("extra.safetensors"), &extra);
    let named =
        |c: &'static str, u: &'static str, a: f32| vec![(c, shape.clone(), v(a)), (u, shape.clone(), v(a / 2.0))];
    dump(
        &d.join("diffusers.safetensors"),
        &[named("pred_cond", "pred_uncond", 1.0), named("pred_cond", "pred_uncond", 0.9)],
    );
    dump(
        &d.join("mapped.safetensors"),
        &[named("noise_text", "noise_uncond", 1.0), named("noise_text", "noise_uncond", 0.9)],
    );
    dir
}

/// Largest resident set of any waited-for child, in bytes.
fn children_max_rss() -> u64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0, "getrusage");
    usage.ru_maxrss as u64 * 1024
}

#[test]
fn every_bad_invocation_fails_as_its_line_says() {
    let text = std::fs::read_to_string(corpus().join("cli/cases.txt")).expect("cases.txt");
    let dir = scratch();
    let corpus_dir = corpus().canonicalize().expect("corpus");
    let mut failures = Vec::new();
    let mut count = 0;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(3, " | ");
        let (Some(code), Some(fragment), Some(args)) = (parts.next(), parts.next(), parts.next()) else {
            panic!("cases.txt:{}: expected `EXIT | FRAGMENT | ARGUMENTS`", n + 1);
        };
        let code: i32 = code.trim().parse().unwrap_or_else(|_| panic!("cases.txt:{}: bad exit code", n + 1));
        let args: Vec<String> =
            args.split_whitespace().map(|a| a.replace("{corpus}", corpus_dir.to_str().expect("utf-8 path"))).collect();
        let run =
            Command::new(env!("CARGO_BIN_EXE_cfg")).args(&args).current_dir(dir.path()).output().expect("run cfg");
        count += 1;
        let got = run.status.code();
        let all = format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
        let (negated, want) = match fragment.strip_prefix('!') {
            Some(f) => (true, f),
            None => (false, fragment),
        };
        let found = all.contains(want);
        if got != Some(code) || found == negated || matches!(got, Some(101 | 134) | None) {
            failures.push(format!(
                "cases.txt:{}: `cfg {}`: expected exit {code} and {}`{want}`, got exit {got:?}:\n{all}",
                n + 1,
                args.join(" "),
                if negated { "no " } else { "" }
            ));
        }
    }
    assert!(count >= 40, "only {count} invocations");
    assert!(failures.is_empty(), "{} of {count} invocations disagree:\n{}", failures.len(), failures.join("\n"));
    let rss = children_max_rss();
    assert!(rss < 1 << 30, "a child used {} MiB", rss >> 20);
}
