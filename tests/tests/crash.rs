//! Failure paths: a forced panic (kernel cmdline or shell) and a CPU
//! exception exit non-zero with the message on serial; a triple fault
//! (QEMU exit 0) is classified as a reset and never taken for success.

use scoutvm_tests::{ExitKind, Machine, Vm, VmConfig, TIMEOUT};

#[test]
fn panic_from_cmdline_exits_nonzero_with_message() {
    let mut vm = Vm::spawn(&VmConfig::new(Machine::Microvm).append("debug.panic=boot")).unwrap();
    vm.wait_for("PANIC: ", TIMEOUT).unwrap();
    vm.wait_for("debug.panic=boot requested", TIMEOUT).unwrap();
    assert_eq!(vm.wait_exit(TIMEOUT).unwrap(), ExitKind::Panic);
}

#[test]
fn panic_from_shell_exits_nonzero_with_message_q35() {
    let mut vm = Vm::spawn(&VmConfig::new(Machine::Q35)).unwrap();
    vm.wait_prompt(TIMEOUT).unwrap();
    vm.send_line("debug panic").unwrap();
    vm.wait_for("PANIC: ", TIMEOUT).unwrap();
    vm.wait_for("debug panic requested from the shell", TIMEOUT)
        .unwrap();
    assert_eq!(vm.wait_exit(TIMEOUT).unwrap(), ExitKind::Panic);
}

#[test]
fn exception_is_reported_and_exits_nonzero() {
    let mut vm = Vm::spawn(&VmConfig::new(Machine::Microvm)).unwrap();
    vm.wait_prompt(TIMEOUT).unwrap();
    vm.send_line("debug exception").unwrap();
    let report = vm.wait_for("rip=", TIMEOUT).unwrap();
    assert!(
        report.contains("EXCEPTION: vector 6 (invalid opcode)"),
        "{report}"
    );
    vm.wait_for("error=", TIMEOUT).unwrap();
    assert_eq!(vm.wait_exit(TIMEOUT).unwrap(), ExitKind::Exception);
}

#[test]
fn triple_fault_is_not_success() {
    for machine in [Machine::Microvm, Machine::Q35] {
        let mut vm = Vm::spawn(&VmConfig::new(machine)).unwrap();
        vm.wait_prompt(TIMEOUT).unwrap();
        vm.send_line("debug triplefault").unwrap();
        let kind = vm.wait_exit(TIMEOUT).unwrap();
        assert_eq!(kind, ExitKind::Reset, "{machine:?}");
        assert!(!kind.is_success());
        // The harness's success check refuses it too.
        let mut vm2 = Vm::spawn(&VmConfig::new(machine)).unwrap();
        vm2.wait_prompt(TIMEOUT).unwrap();
        vm2.send_line("debug triplefault").unwrap();
        let err = vm2.expect_exit(ExitKind::Poweroff).unwrap_err();
        assert!(err.what.contains("Reset"), "{}", err.what);
    }
}
