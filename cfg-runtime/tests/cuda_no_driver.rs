//! Without libcuda every CUDA entry point returns a clear error; nothing panics.
//! On a machine with a driver this checks that a backend opens instead.

use cfg_runtime::cuda::{device_count, driver_available, CudaBackend, CudaError};

#[test]
fn entry_points_error_without_a_driver() {
    if driver_available() {
        eprintln!("SKIPPED: libcuda is present; checking that a device opens instead");
        match CudaBackend::new(0) {
            Ok(_) | Err(CudaError::NoDevice) => {}
            Err(e) => panic!("opening device 0 failed: {e}"),
        }
        return;
    }
    assert!(matches!(device_count(), Err(CudaError::NoDriver)));
    let err = CudaBackend::new(0).expect_err("no driver");
    assert!(matches!(err, CudaError::NoDriver));
    assert!(err.to_string().contains("no CUDA driver found"), "{err}");
}
