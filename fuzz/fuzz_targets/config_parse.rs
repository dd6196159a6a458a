//! `config::parse` on arbitrary text: an error is one line naming the file,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = authgate::config::parse(std::path::Path::new("/fuzz/config.toml"), text) {
        let msg = e.to_string();
        assert!(msg.starts_with("/fuzz/config.toml"), "{msg}");
        assert!(!msg.contains('\n'), "a multi-line config error: {msg:?}");
    }
});
