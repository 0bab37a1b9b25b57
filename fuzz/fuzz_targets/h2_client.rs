#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico_fuzz::h2_client::check(data));
