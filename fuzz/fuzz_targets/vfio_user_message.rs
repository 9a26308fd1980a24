#![no_main]
// See src/fuzzing.rs for what this target feeds and checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm::fuzzing::vfio_user_message(data));
