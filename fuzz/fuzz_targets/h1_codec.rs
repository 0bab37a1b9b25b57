#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico_fuzz::h1_codec::check(data));
