//! The NCCL communicator: clear errors without CUDA or NCCL, torchrun's
//! environment parsing, and the TCP exchange of the NCCL id over loopback
//! (these run anywhere). The collectives themselves need a GPU and NCCL: those
//! tests print why they skip.

use cfg_runtime::cuda::bootstrap::{fetch_id, BootstrapEnv, BootstrapError, IdServer, ID_BYTES};
use cfg_runtime::cuda::{
    device_count, driver_available, nccl_available, run_nccl_threads, CudaError, NcclCommunicator, NcclId, NcclOptions,
};
use cfg_runtime::{Communicator, RuntimeError};
use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// Long enough for a loaded CI machine, short enough that a bug fails instead of hanging.
const TIMEOUT: Duration = Duration::from_secs(20);

fn env(vars: &[(&str, &str)]) -> Result<BootstrapEnv, BootstrapError> {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    BootstrapEnv::from_lookup(|name| map.get(name).cloned())
}

const FULL: [(&str, &str); 5] =
    [("RANK", "2"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "node0"), ("MASTER_PORT", "29500")];

fn without(name: &str) -> Vec<(&'static str, &'static str)> {
    FULL.iter().copied().filter(|(k, _)| *k != name).collect()
}

fn with(name: &'static str, value: &'static str) -> Vec<(&'static str, &'static str)> {
    let mut vars = without(name);
    vars.push((name, value));
    vars
}

fn test_id() -> [u8; ID_BYTES] {
    std::array::from_fn(|i| (i * 7 + 3) as u8)
}

/// The error every NCCL entry point must give on this machine, or `None`
/// when CUDA and NCCL are both present.
fn missing_library() -> Option<&'static str> {
    if !driver_available() {
        Some("no CUDA driver found")
    } else if !nccl_available() {
        Some("no NCCL library found")
    } else {
        None
    }
}

#[test]
fn entry_points_error_clearly_without_cuda_or_nccl() {
    let Some(expected) = missing_library() else {
        eprintln!("SKIPPED: libcuda and libnccl are both present (the GPU tests below cover this machine)");
        return;
    };
    let check = |what: &str, e: CudaError| {
        assert!(matches!(e, CudaError::NoDriver | CudaError::NoNccl), "{what}: {e:?}");
        assert!(e.to_string().contains(expected), "{what}: {e}");
    };
    check("NcclId::new", NcclId::new().expect_err("no library"));
    let id = NcclId::from_bytes(test_id());
    check(
        "NcclCommunicator::new",
        NcclCommunicator::new(0, 0, 1, &id, NcclOptions::default()).expect_err("no library"),
    );
    let run = run_nccl_threads(&[0, 1], NcclOptions::default(), |c| Ok(c.rank()));
    check("run_nccl_threads", run.expect_err("no library"));
    let single = env(&[("RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "1")]);
    let single = single.expect("valid variables");
    check("from_bootstrap", NcclCommunicator::from_bootstrap(&single, NcclOptions::default()).expect_err("no library"));
}

#[test]
fn env_reads_torchrun_variables() {
    let e = env(&FULL).unwrap();
    assert_eq!(e, BootstrapEnv { rank: 2, world_size: 4, local_rank: 1, master_addr: "node0".into(), port: 29500 });
    assert_eq!(env(&without("LOCAL_RANK")).unwrap().local_rank, 2, "LOCAL_RANK defaults to RANK");
    let mut vars = FULL.to_vec();
    vars.push(("CFG_NCCL_PORT", "29600"));
    assert_eq!(env(&vars).unwrap().port, 29600, "CFG_NCCL_PORT overrides MASTER_PORT");
    let mut vars = without("MASTER_PORT");
    vars.push(("CFG_NCCL_PORT", "29600"));
    assert_eq!(env(&vars).unwrap().port, 29600, "MASTER_PORT is not needed with CFG_NCCL_PORT");
    let mut vars = FULL.to_vec();
    vars.push(("TORCHELASTIC_USE_AGENT_STORE", "True"));
    assert_eq!(env(&vars).unwrap().port, 29501, "torchrun's agent store holds MASTER_PORT: the id goes one above");
    vars.push(("CFG_NCCL_PORT", "29600"));
    assert_eq!(env(&vars).unwrap().port, 29600, "CFG_NCCL_PORT still wins under torchrun");
    let mut vars = with("MASTER_PORT", "65535");
    vars.push(("TORCHELASTIC_USE_AGENT_STORE", "True"));
    let e = env(&vars).unwrap_err().to_string();
    assert!(e.contains("MASTER_PORT") && e.contains("65535"), "{e}");
}

#[test]
fn env_errors_name_the_variable() {
    for name in ["RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"] {
        match env(&without(name)) {
            Err(e @ BootstrapError::MissingVar { .. }) => assert!(e.to_string().contains(name), "{e}"),
            other => panic!("without {name}: {other:?}"),
        }
    }
    let invalid = [
        ("RANK", "two"),
        ("RANK", "-1"),
        ("RANK", "4"),
        ("WORLD_SIZE", "0"),
        ("WORLD_SIZE", "many"),
        ("LOCAL_RANK", "x"),
        ("MASTER_ADDR", "  "),
        ("MASTER_PORT", "0"),
        ("MASTER_PORT", "70000"),
        ("MASTER_PORT", "http"),
    ];
    for (name, value) in invalid {
        match env(&with(name, value)) {
            Err(e @ BootstrapError::InvalidVar { .. }) => {
                let text = e.to_string();
                assert!(text.contains(name) && text.contains(value), "{name}={value}: {text}");
            }
            other => panic!("{name}={value}: {other:?}"),
        }
    }
}

#[test]
fn loopback_exchange_gives_every_rank_the_id() {
    let world = 4;
    let server = IdServer::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let id = test_id();
    std::thread::scope(|scope| {
        // Clients start first: they must retry until the server serves.
        let clients: Vec<_> =
            (1..world).map(|rank| scope.spawn(move || fetch_id("127.0.0.1", port, rank, world, TIMEOUT))).collect();
        server.serve(world, &id, TIMEOUT).unwrap();
        for c in clients {
            assert_eq!(c.join().unwrap().unwrap(), id);
        }
    });
}

#[test]
fn a_client_waits_for_a_late_server() {
    // Reserve a free port, then listen on it only after the client started.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let id = test_id();
    std::thread::scope(|scope| {
        let client = scope.spawn(move || fetch_id("127.0.0.1", port, 1, 2, TIMEOUT));
        std::thread::sleep(Duration::from_millis(200));
        let server = IdServer::bind(&format!("127.0.0.1:{port}")).unwrap();
        server.serve(2, &id, TIMEOUT).unwrap();
        assert_eq!(client.join().unwrap().unwrap(), id);
    });
}

#[test]
fn a_stray_connection_is_ignored() {
    let server = IdServer::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let id = test_id();
    // Queued before the client, so the server meets it first.
    let mut stray = TcpStream::connect(addr).unwrap();
    stray.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    std::thread::scope(|scope| {
        let client = scope.spawn(move || fetch_id("127.0.0.1", addr.port(), 1, 2, TIMEOUT));
        server.serve(2, &id, TIMEOUT).unwrap();
        assert_eq!(client.join().unwrap().unwrap(), id);
    });
}

#[test]
fn a_client_of_another_run_is_rejected() {
    let server = IdServer::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    std::thread::scope(|scope| {
        let client = scope.spawn(move || fetch_id("127.0.0.1", port, 1, 3, TIMEOUT));
        let served = server.serve(2, &test_id(), TIMEOUT);
        assert!(matches!(served, Err(BootstrapError::Rejected { rank: 1, .. })), "{served:?}");
        let fetched = client.join().unwrap();
        match fetched {
            Err(e @ BootstrapError::Rejected { .. }) => assert!(e.to_string().contains("WORLD_SIZE=3"), "{e}"),
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn a_client_times_out_without_a_server() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    match fetch_id("127.0.0.1", port, 1, 2, Duration::from_millis(300)) {
        Err(e @ BootstrapError::Timeout { .. }) => assert!(e.to_string().contains("rank 1"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_server_times_out_naming_missing_ranks() {
    let server = IdServer::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    std::thread::scope(|scope| {
        let client = scope.spawn(move || fetch_id("127.0.0.1", port, 1, 3, TIMEOUT));
        match server.serve(3, &test_id(), Duration::from_millis(500)) {
            Err(e @ BootstrapError::Timeout { .. }) => assert!(e.to_string().contains("[2]"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(client.join().unwrap().unwrap(), test_id());
    });
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    match IdServer::bind(&addr.to_string()) {
        Err(e @ BootstrapError::Listen { .. }) => assert!(e.to_string().contains("CFG_NCCL_PORT"), "{e}"),
        other => panic!("{other:?}"),
    }
}

/// The device count when CUDA, NCCL and a device are present.
fn gpus() -> Option<usize> {
    if let Some(missing) = missing_library() {
        eprintln!("SKIPPED: {missing}");
        return None;
    }
    match device_count() {
        Ok(n) if n > 0 => Some(n),
        other => {
            eprintln!("SKIPPED: no CUDA device ({other:?})");
            None
        }
    }
}

fn options() -> NcclOptions {
    NcclOptions { timeout: Duration::from_secs(60), init_timeout: Duration::from_secs(60), fixed_order_reduce: false }
}

#[test]
fn world_size_one_on_a_gpu() {
    if gpus().is_none() {
        return;
    }
    for fixed_order_reduce in [false, true] {
        let opts = NcclOptions { fixed_order_reduce, ..options() };
        let mut c = NcclCommunicator::new(0, 0, 1, &NcclId::new().unwrap(), opts).unwrap();
        let mut buf = vec![1.5f32, -2.25, 3e-8, f32::MAX];
        c.all_reduce_sum(0, &mut buf).unwrap();
        assert_eq!(buf, vec![1.5f32, -2.25, 3e-8, f32::MAX]);
        let bytes: Vec<u8> = (0..1000).map(|i| (i % 251) as u8).collect();
        assert_eq!(c.all_gather(1, &bytes, &[1000]).unwrap(), vec![bytes.clone()]);
        assert_eq!(c.all_gather(2, &[], &[0]).unwrap(), vec![Vec::<u8>::new()]);
        c.abort(3, "test abort");
        match c.all_reduce_sum(4, &mut buf) {
            Err(RuntimeError::PeerFailed { rank: 0, step: 3, .. }) => {}
            other => panic!("after abort: {other:?}"),
        }
    }
}

#[test]
fn two_gpus_in_one_process() {
    match gpus() {
        Some(n) if n >= 2 => {}
        Some(n) => {
            eprintln!("SKIPPED: needs 2 CUDA devices, found {n}");
            return;
        }
        None => return,
    }
    // Unequal gather sizes (grouped broadcasts), equal ones (all-gather), sums.
    let out = run_nccl_threads(&[0, 1], options(), |c| {
        let r = c.rank();
        let gathered = c.all_gather(0, &vec![r as u8 + 1; 3 + 5 * r], &[3, 8])?;
        let equal = c.all_gather(1, &[r as u8; 4], &[4, 4])?;
        let mut sum = vec![r as f32 + 0.5; 1000];
        c.all_reduce_sum(2, &mut sum)?;
        Ok((gathered, equal, sum))
    })
    .unwrap();
    for r in out {
        let (gathered, equal, sum) = r.unwrap();
        assert_eq!(gathered, vec![vec![1; 3], vec![2; 8]]);
        assert_eq!(equal, vec![vec![0; 4], vec![1; 4]]);
        assert!(sum.iter().all(|&x| x == 2.0));
    }
    // A failing rank stops the other one instead of leaving it waiting.
    let out: Vec<Result<(), RuntimeError>> = run_nccl_threads(&[0, 1], options(), |c| {
        for step in 0..5 {
            if c.rank() == 1 && step == 2 {
                return Err(RuntimeError::Config("rank 1 gives up".into()));
            }
            c.all_gather(step, &[1], &[1, 1])?;
        }
        Ok(())
    })
    .unwrap();
    match &out[0] {
        Err(RuntimeError::PeerFailed { rank: 1, .. }) => {}
        other => panic!("rank 0: {other:?}"),
    }
}

/// The world sizes this machine can run thread-per-GPU (1..=4, as devices allow).
fn world_sizes() -> Vec<usize> {
    gpus().map_or_else(Vec::new, |n| (1..=n.min(4)).collect())
}

fn ordinals(world: usize) -> Vec<usize> {
    (0..world).collect()
}

#[test]
fn collectives_give_every_rank_the_same_bytes_for_1_to_4_gpus() {
    for world in world_sizes() {
        let out = run_nccl_threads(&ordinals(world), options(), |c| {
            let r = c.rank();
            // Unequal sizes (grouped broadcasts), with an empty part when world > 1.
            let sizes: Vec<usize> = (0..world).map(|q| if q == 1 { 0 } else { 3 + 5 * q }).collect();
            let unequal = c.all_gather(0, &vec![r as u8 + 1; sizes[r]], &sizes)?;
            let equal = c.all_gather(1, &[r as u8; 4], &vec![4; world])?;
            // Values whose f32 sum depends on the order: fixed rank order is checked below.
            let mut sum: Vec<f32> = (0..257).map(|i| (r as f32 + 1.0) * 1e-3 + i as f32 * 1e7).collect();
            c.all_reduce_sum(2, &mut sum)?;
            Ok((unequal, equal, sum))
        })
        .unwrap_or_else(|e| panic!("world {world}: {e}"));
        let expected_sum: Vec<f32> = (0..257)
            .map(|i| (0..world).map(|q| (q as f32 + 1.0) * 1e-3 + i as f32 * 1e7).reduce(|a, b| a + b).unwrap())
            .collect();
        for (rank, r) in out.into_iter().enumerate() {
            let (unequal, equal, sum) = r.unwrap_or_else(|e| panic!("world {world} rank {rank}: {e}"));
            let want: Vec<Vec<u8>> =
                (0..world).map(|q| if q == 1 { Vec::new() } else { vec![q as u8 + 1; 3 + 5 * q] }).collect();
            assert_eq!(unequal, want, "world {world} rank {rank}");
            assert_eq!(equal, (0..world).map(|q| vec![q as u8; 4]).collect::<Vec<_>>(), "world {world} rank {rank}");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&sum), bits(&expected_sum), "world {world} rank {rank}: sums in rank order");
        }
    }
}

#[test]
fn a_failing_rank_is_named_by_every_rank_for_2_to_4_gpus() {
    for world in world_sizes().into_iter().filter(|&w| w >= 2) {
        let culprit = world - 1;
        let out: Vec<Result<(), RuntimeError>> = run_nccl_threads(&ordinals(world), options(), |c| {
            for step in 0..6 {
                if c.rank() == culprit && step == 3 {
                    let message = "the model gave up".to_string();
                    return Err(RuntimeError::Model { rank: culprit, step, branches: "cond".into(), message });
                }
                let mut buf = [c.rank() as f32; 8];
                c.all_reduce_sum(step, &mut buf)?;
            }
            Ok(())
        })
        .unwrap();
        for (rank, r) in out.iter().enumerate() {
            match r {
                Err(RuntimeError::PeerFailed { rank: failed, step: 3, .. }) if *failed == culprit => {}
                Err(RuntimeError::Model { .. }) if rank == culprit => {}
                other => panic!("world {world} rank {rank}: {other:?}"),
            }
        }
    }
}

#[test]
fn a_rank_that_never_arrives_is_named_by_the_timeout() {
    let Some(world) = world_sizes().into_iter().filter(|&w| w >= 2).max() else { return };
    let late = 1;
    let short = NcclOptions { timeout: Duration::from_secs(2), ..options() };
    let out: Vec<Result<(), RuntimeError>> = run_nccl_threads(&ordinals(world), short.clone(), |c| {
        for step in 0..3 {
            if c.rank() == late && step == 1 {
                // Stuck before its collective (a long model call), well past the timeout.
                std::thread::sleep(short.timeout * 3);
                return Ok(());
            }
            c.all_gather(step, &[1, 2], &vec![2; world])?;
        }
        Ok(())
    })
    .unwrap();
    let timed_out = out
        .iter()
        .enumerate()
        .filter(|(r, _)| *r != late)
        .any(|(_, r)| matches!(r, Err(RuntimeError::Timeout { missing, step: 1, .. }) if missing == &vec![late]));
    assert!(timed_out, "a timeout names rank {late}: {out:?}");
    for (rank, r) in out.iter().enumerate().filter(|(r, _)| *r != late) {
        match r {
            Err(RuntimeError::Timeout { missing, .. }) => assert_eq!(missing, &vec![late], "rank {rank}"),
            Err(RuntimeError::PeerFailed { rank: failed, .. }) => assert_eq!(*failed, late, "rank {rank}"),
            other => panic!("rank {rank}: {other:?}"),
        }
    }
}

/// Runs `test` of this file in a child process with `CFG_EMU_NCCL_FAULT`
/// set (the stand-in reads it on every collective, so it must not leak into
/// the other tests of this process). Returns false where the stand-in is not loaded.
fn in_child_with_fault(test: &str, fault: &str) -> bool {
    if std::env::var_os("CFG_EMU_NCCL_FAULT").is_some() {
        return false; // this is the child
    }
    if world_sizes().len() < 2 {
        return true;
    }
    if !device_name().contains("cuda-emu") {
        eprintln!("SKIPPED: fault injection needs the CUDA stand-in (scripts/cuda-emu.sh)");
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--include-ignored"])
        .env("CFG_EMU_NCCL_FAULT", fault)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{test} with CFG_EMU_NCCL_FAULT={fault}:\n{text}");
    assert!(text.contains("1 passed"), "{test} did not run in the child:\n{text}");
    true
}

fn device_name() -> String {
    cfg_runtime::cuda::Device::new(0).map(|d| d.describe()).unwrap_or_default()
}

#[test]
fn an_injected_nccl_error_is_reported_by_every_rank() {
    if in_child_with_fault("an_injected_nccl_error_is_reported_by_every_rank", "error:1:2") {
        return;
    }
    let world = world_sizes().into_iter().max().unwrap();
    let out: Vec<Result<(), RuntimeError>> = run_nccl_threads(&ordinals(world), options(), |c| {
        for step in 0..5 {
            c.all_gather(step, &[7; 16], &vec![16; world])?;
        }
        Ok(())
    })
    .unwrap();
    for (rank, r) in out.iter().enumerate() {
        match r {
            Err(RuntimeError::Collective { rank: 1, step: 2, detail }) if rank == 1 => {
                assert!(detail.contains("injected error"), "{detail}")
            }
            Err(RuntimeError::PeerFailed { rank: 1, step: 2, .. }) => {}
            other => panic!("rank {rank}: {other:?}"),
        }
    }
}

#[test]
fn a_hung_collective_times_out_on_every_rank() {
    if in_child_with_fault("a_hung_collective_times_out_on_every_rank", "hang:0:1") {
        return;
    }
    let world = world_sizes().into_iter().max().unwrap();
    let short = NcclOptions { timeout: Duration::from_secs(2), ..options() };
    let out: Vec<Result<(), RuntimeError>> = run_nccl_threads(&ordinals(world), short, |c| {
        for step in 0..3 {
            let mut buf = [1.0f32; 4];
            c.all_reduce_sum(step, &mut buf)?;
        }
        Ok(())
    })
    .unwrap();
    for (rank, r) in out.iter().enumerate() {
        match r {
            Err(RuntimeError::Timeout { step: 1, .. }) | Err(RuntimeError::PeerFailed { step: 1, .. }) => {}
            other => panic!("rank {rank}: {other:?}"),
        }
    }
}
