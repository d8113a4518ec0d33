//! The known values of `common` checked by the native build of the protocol crate; the wasm
//! build checks the same constants in `tests/node.rs`.
#![cfg(not(target_arch = "wasm32"))]

mod common;

#[test]
fn frames_have_the_known_bytes() {
    common::check_frames();
}

#[test]
fn tasks_give_the_known_results() {
    common::check_tasks();
}

#[test]
fn task_modules_are_fed_and_judged_alike() {
    common::check_module_conversions();
}
