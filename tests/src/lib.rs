//! Test harness shared by the integration tests: QEMU launch and teardown,
//! serial console driving, free ports, volume images.
